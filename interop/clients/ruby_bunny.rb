# Ruby bunny (Debian ruby-bunny) scenarios against Leveret; protocol: see interop/run.py.
# Bunny recovers connections, channels, topology and consumers automatically (reconnect).
require 'bunny'
require 'logger'
require 'socket'
require 'timeout'

HOST = ENV.fetch('AMQP_HOST', '127.0.0.1')
PORT = Integer(ENV.fetch('AMQP_PORT', '5672'))
PREFIX = ENV.fetch('INTEROP_PREFIX', "interop-ruby-#{Process.pid}")
ONLY = ENV['INTEROP_ONLY'] && ENV['INTEROP_ONLY'].split(',')

class Skip < StandardError; end

def name(s) = "#{PREFIX}.#{s}"

def connect(**opts)
  conn = Bunny.new(host: HOST, port: PORT, user: ENV.fetch('AMQP_USER', 'guest'),
                   pass: ENV.fetch('AMQP_PASSWORD', 'guest'), vhost: ENV.fetch('AMQP_VHOST', '/'),
                   automatically_recover: false, logger: Logger.new($stderr, level: Logger::WARN),
                   **opts)
  conn.start
  conn
end

def with_conn(**opts)
  conn = connect(**opts)
  yield conn
ensure
  conn.close if conn&.open?
end

def expect(what, got, want)
  raise "#{what}: got #{got.inspect}, want #{want.inspect}" unless got == want
end

def wait_until(what, timeout = 5)
  deadline = Time.now + timeout
  until yield
    raise "timed out waiting for #{what}" if Time.now > deadline
    sleep 0.01
  end
end

def drain(q)
  out = []
  loop do
    _, _, body = q.pop
    return out if body.nil?
    out << body
  end
end

def control(command)
  addr = ENV['LEVERET_CONTROL']
  raise Skip, 'no LEVERET_CONTROL: the broker cannot be restarted' if addr.nil? || addr.empty?
  host, _, port = addr.rpartition(':')
  TCPSocket.open(host, Integer(port)) do |s|
    s.write("#{command}\n")
    reply = s.gets.to_s.strip
    raise Skip, 'the broker under test cannot be restarted by the runner' if reply == 'unsupported'
    raise "control #{command}: #{reply}" unless reply == 'ok'
  end
end

SCENARIOS = {}
def scenario(n, timeout = 20, &blk) = SCENARIOS[n] = [blk, timeout]

scenario('connect') do
  with_conn do |conn|
    caps = conn.server_capabilities
    raise "capabilities #{caps}" unless caps['publisher_confirms'] && caps['consumer_cancel_notify']
    ch = conn.create_channel
    raise 'channel not open' unless ch.open?
    ch.close
  end
end

scenario('topology') do
  with_conn do |conn|
    ch = conn.create_channel
    x = ch.direct(name('topo.x'), durable: true)
    x2 = ch.topic(name('topo.t'), auto_delete: true)
    x2.bind(x, routing_key: 'to-topic')
    q = ch.queue(name('topo.q'), durable: true, arguments: { 'x-max-length' => 100 })
    q.bind(x, routing_key: 'k')
    q.bind(x2, routing_key: '#')
    x.publish('direct', routing_key: 'k', content_type: 'text/plain', headers: { 'a' => 1 })
    x.publish('via e2e', routing_key: 'to-topic')
    x.publish('none', routing_key: 'zzz')
    sleep 0.05
    expect('messages', q.message_count, 2)
    info, props, body = q.pop
    expect('first', [body, props.headers, info.routing_key], ['direct', { 'a' => 1 }, 'k'])
    expect('second', drain(q), ['via e2e'])
    raise 'exchange missing' unless conn.exchange_exists?(x.name)
    raise 'queue exists?' if conn.queue_exists?(name('topo.none'))
    q.unbind(x, routing_key: 'k')
    q.delete
    x2.delete
    x.delete
  end
end

scenario('confirm') do
  with_conn do |conn|
    ch = conn.create_channel
    ch.confirm_select
    q = ch.queue('', exclusive: true)
    200.times { |i| ch.default_exchange.publish("m#{i}", routing_key: q.name, persistent: true) }
    raise "nacked: #{ch.nacked_set.to_a}" unless ch.wait_for_confirms
    expect('confirmed', q.message_count, 200)
    returned = []
    x = ch.exchange('amq.direct', type: :direct, no_declare: true)
    x.on_return { |info, _props, body| returned << [info.reply_code, info.reply_text, body] }
    x.publish('back', routing_key: name('nowhere'), mandatory: true)
    ch.wait_for_confirms
    wait_until('basic.return') { returned.any? }
    expect('return', returned, [[312, 'NO_ROUTE', 'back']])
  end
end

scenario('consume_prefetch') do
  with_conn do |conn|
    ch = conn.create_channel
    ch.prefetch(3)
    q = ch.queue('', exclusive: true)
    9.times { |i| ch.default_exchange.publish(i.to_s, routing_key: q.name) }
    held = Queue.new
    q.subscribe(manual_ack: true) { |info, _props, body| held << [info.delivery_tag, body] }
    seen = []
    while seen.size < 9
      wait_until('3 deliveries') { held.size >= 3 }
      sleep 0.1
      expect('deliveries in flight with prefetch 3', held.size, 3)
      batch = Array.new(3) { held.pop }
      seen.concat(batch.map(&:last))
      ch.ack(batch.last.first, true)
    end
    expect('order', seen, (0..8).map(&:to_s))
  end
end

scenario('reject_requeue') do
  with_conn do |conn|
    ch = conn.create_channel
    q = ch.queue('', exclusive: true)
    %w[a b].each { |b| ch.default_exchange.publish(b, routing_key: q.name) }
    sleep 0.02
    info, _, body = q.pop(manual_ack: true)
    ch.reject(info.delivery_tag, true)
    info, _, body = q.pop(manual_ack: true)
    expect('requeued', [body, info.redelivered?], ['a', true])
    ch.nack(info.delivery_tag, false, false)
    got = Queue.new
    consumer = q.subscribe(manual_ack: true) { |i, _p, b| got << [i, b] }
    i, b = got.pop
    expect('next', [b, i.redelivered?], ['b', false])
    ch.reject(i.delivery_tag, true)
    i, b = Timeout.timeout(5) { got.pop }
    expect('redelivered to the consumer', [b, i.redelivered?], ['b', true])
    ch.ack(i.delivery_tag)
    consumer.cancel
    expect('left', q.message_count, 0)
  end
end

scenario('fanout') do
  with_conn do |conn|
    ch = conn.create_channel
    x = ch.fanout(name('fan'), auto_delete: true)
    qs = Array.new(3) { ch.queue('', exclusive: true).bind(x) }
    x.publish('everyone')
    sleep 0.05
    qs.each { |q| expect(q.name, drain(q), ['everyone']) }
  end
end

scenario('topic') do
  with_conn do |conn|
    ch = conn.create_channel
    x = ch.topic(name('topic'), auto_delete: true)
    eu = ch.queue('', exclusive: true).bind(x, routing_key: 'eu.#')
    sport = ch.queue('', exclusive: true).bind(x, routing_key: '*.*.sport')
    %w[eu.fr.sport eu.de.news us.ca.sport eu sport].each { |rk| x.publish(rk, routing_key: rk) }
    sleep 0.05
    expect('eu.#', drain(eu), %w[eu.fr.sport eu.de.news eu])
    expect('*.*.sport', drain(sport), %w[eu.fr.sport us.ca.sport])
  end
end

scenario('tx') do
  with_conn do |conn|
    ch = conn.create_channel
    q = ch.queue('', exclusive: true)
    ch.tx_select
    ch.default_exchange.publish('no', routing_key: q.name)
    ch.tx_rollback
    ch.default_exchange.publish('yes', routing_key: q.name)
    expect('before commit', q.message_count, 0)
    ch.tx_commit
    expect('committed', drain(q), ['yes'])
  end
end

scenario('close') do
  conn = connect
  ch = conn.create_channel
  begin
    ch.queue(name('missing'), passive: true)
    raise 'passive declare of a missing queue succeeded'
  rescue Bunny::NotFound => e
    expect('channel closed by the broker', ch.closed?, true)
    raise "reason #{e.message}" unless e.message.include?('NOT_FOUND')
  end
  ch2 = conn.create_channel
  ch2.queue('', exclusive: true)
  ch2.close
  conn.close
  expect('connection closed', conn.closed?, true)
end

scenario('reconnect', 40) do
  control('ping') # SKIP before declaring anything when the broker cannot be restarted
  conn = connect(automatically_recover: true, network_recovery_interval: 0.5,
                 recover_from_connection_close: true)
  recovered = false
  conn.after_recovery_completed { recovered = true }
  begin
    ch = conn.create_channel
    ch.prefetch(5)
    x = ch.direct(name('robust.x'), auto_delete: false)
    q = ch.queue(name('robust.q'), auto_delete: false).bind(x, routing_key: 'r')
    got = Queue.new
    q.subscribe(manual_ack: true) do |info, _props, body|
      got << body
      ch.ack(info.delivery_tag)
    end
    x.publish('before', routing_key: 'r')
    expect('before restart', Timeout.timeout(5) { got.pop }, 'before')
    control('restart 1')
    # bunny notices the close, reconnects and redeclares x, q, the binding and the consumer
    # (publishing before recovery completes races the channel.open: RabbitMQ and Leveret
    # then close the connection with 504 CHANNEL_ERROR)
    wait_until('recovery', 20) { recovered }
    x.publish('after', routing_key: 'r')
    expect('after restart', Timeout.timeout(10) { got.pop }, 'after')
    q.delete
    x.delete
  ensure
    conn.close if conn.open?
  end
end

SCENARIOS.each do |n, (blk, timeout)|
  next if ONLY && !ONLY.include?(n)
  begin
    Timeout.timeout(timeout) { blk.call }
    puts "PASS #{n}"
  rescue Skip => e
    puts "SKIP #{n}: #{e.message}"
  rescue Exception => e # rubocop:disable Lint/RescueException
    warn "#{n}: #{e.class}: #{e.message}\n  #{e.backtrace&.first(5)&.join("\n  ")}"
    puts "FAIL #{n}: #{"#{e.class}: #{e.message}".gsub(/\s+/, ' ')[0, 300]}"
  end
  $stdout.flush
end
