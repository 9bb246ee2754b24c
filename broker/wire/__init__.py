"""The wire layer: AMQP connections and channels on top of the messaging core."""
