"""``python -m leveret``: run the broker (the same as the ``leveret`` command)."""

import sys

from leveret.broker.cli import main

sys.exit(main())
