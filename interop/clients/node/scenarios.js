// Node.js amqplib scenarios for Leveret (protocol: see interop/run.py).
// amqplib has no transactions (tx is n/a).  Recovery after a broker restart is tested with
// amqp-connection-manager (reconnect) and with amqplib's own opt-in recovery
// (reconnect_builtin).
const assert = require('node:assert/strict');
const net = require('node:net');
const amqp = require('amqplib');
const acm = require('amqp-connection-manager');

const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/';
const PREFIX = process.env.INTEROP_PREFIX || `interop-node-${process.pid}`;
const ONLY = process.env.INTEROP_ONLY ? new Set(process.env.INTEROP_ONLY.split(',')) : null;
const name = (s) => `${PREFIX}.${s}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Skip extends Error {}

async function waitFor(pred, what, timeout = 5000) {
  const deadline = Date.now() + timeout;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function control(command) {
  const addr = process.env.LEVERET_CONTROL;
  if (!addr) return Promise.reject(new Skip('no LEVERET_CONTROL: the broker cannot be restarted'));
  const i = addr.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(addr.slice(i + 1)), addr.slice(0, i));
    let buf = '';
    sock.on('data', (d) => {
      buf += d;
      if (!buf.includes('\n')) return;
      sock.end();
      const reply = buf.trim();
      if (reply === 'ok') resolve();
      else if (reply === 'unsupported') reject(new Skip('the broker under test cannot be restarted by the runner'));
      else reject(new Error(`control ${command}: ${reply}`));
    });
    sock.on('error', reject);
    sock.write(`${command}\n`);
  });
}

async function drain(ch, q) {
  const out = [];
  for (;;) {
    const m = await ch.get(q, { noAck: true });
    if (m === false) return out;
    out.push(m.content.toString());
  }
}

// a connection per scenario; errors on a closing channel are expected in some scenarios
async function withConn(fn) {
  const conn = await amqp.connect(URL);
  conn.on('error', () => {});
  try {
    return await fn(conn);
  } finally {
    try {
      await conn.close();
    } catch (_) {
      // already closed
    }
  }
}

async function channel(conn, confirm = false) {
  const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
  ch.on('error', () => {});
  return ch;
}

const scenarios = [];
const scenario = (n, fn, timeout = 20000) => scenarios.push([n, fn, timeout]);

scenario('connect', () =>
  withConn(async (conn) => {
    const caps = conn.connection.serverProperties.capabilities;
    assert.ok(caps.publisher_confirms && caps['basic.nack'], `capabilities ${JSON.stringify(caps)}`);
    const ch = await channel(conn);
    await ch.close();
  }),
);

scenario('topology', () =>
  withConn(async (conn) => {
    let ch = await channel(conn);
    const x = name('topo.x');
    const x2 = name('topo.x2');
    const q = name('topo.q');
    await ch.assertExchange(x, 'direct', { durable: true });
    await ch.assertExchange(x2, 'fanout', { durable: false, autoDelete: true });
    await ch.bindExchange(x2, x, 'e2e');
    const ok = await ch.assertQueue(q, { durable: true, arguments: { 'x-max-length': 10 } });
    assert.deepEqual([ok.queue, ok.messageCount, ok.consumerCount], [q, 0, 0]);
    await ch.bindQueue(q, x, 'k');
    await ch.bindQueue(q, x2, '');
    ch.publish(x, 'k', Buffer.from('direct'));
    ch.publish(x, 'e2e', Buffer.from('e2e'));
    ch.publish(x, 'zzz', Buffer.from('dropped'));
    await sleep(50);
    assert.deepEqual((await drain(ch, q)).sort(), ['direct', 'e2e']);
    await ch.checkQueue(q);
    await ch.checkExchange(x);
    await assert.rejects(ch.checkQueue(name('topo.missing')), (e) => e.code === 404);
    ch = await channel(conn);
    await ch.unbindQueue(q, x, 'k');
    await ch.unbindExchange(x2, x, 'e2e');
    const del = await ch.deleteQueue(q);
    assert.equal(del.messageCount, 0);
    await ch.deleteExchange(x);
  }),
);

scenario('confirm', () =>
  withConn(async (conn) => {
    const ch = await channel(conn, true);
    const { queue } = await ch.assertQueue('', { exclusive: true });
    const acked = [];
    for (let i = 0; i < 300; i++) {
      ch.sendToQueue(queue, Buffer.from(`m${i}`), { persistent: true }, (err) => acked.push(err));
    }
    await ch.waitForConfirms();
    assert.equal(acked.length, 300);
    assert.ok(acked.every((e) => e === null || e === undefined), 'a publish was nacked');
    const returned = [];
    ch.on('return', (m) => returned.push(m));
    ch.publish('amq.direct', name('nowhere'), Buffer.from('r'), { mandatory: true, messageId: 'm1' });
    await ch.waitForConfirms();
    await waitFor(() => returned.length === 1, 'basic.return');
    assert.equal(returned[0].fields.replyCode, 312);
    assert.equal(returned[0].properties.messageId, 'm1');
    assert.equal((await ch.checkQueue(queue)).messageCount, 300);
  }),
);

scenario('consume_prefetch', () =>
  withConn(async (conn) => {
    const ch = await channel(conn);
    const { queue } = await ch.assertQueue('', { exclusive: true });
    for (let i = 0; i < 10; i++) ch.sendToQueue(queue, Buffer.from(String(i)));
    await ch.prefetch(4);
    const held = [];
    await ch.consume(queue, (m) => held.push(m), { noAck: false });
    const seen = [];
    while (seen.length < 10) {
      const want = Math.min(4, 10 - seen.length);
      await waitFor(() => held.length >= want, `${want} deliveries`);
      await sleep(100);
      assert.equal(held.length, want, 'deliveries in flight with prefetch 4');
      for (const m of held) seen.push(m.content.toString());
      ch.ack(held[held.length - 1], true);
      held.length = 0;
    }
    assert.deepEqual(seen, [...Array(10).keys()].map(String));
  }),
);

scenario('reject_requeue', () =>
  withConn(async (conn) => {
    const ch = await channel(conn);
    const { queue } = await ch.assertQueue('', { exclusive: true });
    ch.sendToQueue(queue, Buffer.from('a'));
    ch.sendToQueue(queue, Buffer.from('b'));
    await sleep(20);
    let m = await ch.get(queue);
    ch.reject(m, true);
    m = await ch.get(queue);
    assert.deepEqual([m.content.toString(), m.fields.redelivered], ['a', true]);
    ch.nack(m, false, false);
    m = await ch.get(queue);
    assert.equal(m.content.toString(), 'b');
    await ch.recover(); // basic.recover requeues the unacked 'b'
    m = await ch.get(queue);
    assert.deepEqual([m.content.toString(), m.fields.redelivered], ['b', true]);
    ch.ack(m);
    assert.deepEqual(await drain(ch, queue), []);
  }),
);

scenario('fanout', () =>
  withConn(async (conn) => {
    const ch = await channel(conn);
    const x = name('fan');
    await ch.assertExchange(x, 'fanout', { autoDelete: true });
    const qs = [];
    for (let i = 0; i < 3; i++) {
      const { queue } = await ch.assertQueue('', { exclusive: true });
      await ch.bindQueue(queue, x, '');
      qs.push(queue);
    }
    ch.publish(x, 'any', Buffer.from('all'));
    await sleep(50);
    for (const q of qs) assert.deepEqual(await drain(ch, q), ['all']);
  }),
);

scenario('topic', () =>
  withConn(async (conn) => {
    const ch = await channel(conn);
    const x = name('topic');
    await ch.assertExchange(x, 'topic', { autoDelete: true });
    const { queue: kern } = await ch.assertQueue('', { exclusive: true });
    const { queue: crit } = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(kern, x, 'kern.*');
    await ch.bindQueue(crit, x, '*.critical');
    await ch.bindQueue(crit, x, '#.urgent.#');
    for (const rk of ['kern.critical', 'kern.info', 'app.critical', 'a.urgent', 'kern.x.y']) {
      ch.publish(x, rk, Buffer.from(rk));
    }
    await sleep(50);
    assert.deepEqual(await drain(ch, kern), ['kern.critical', 'kern.info']);
    assert.deepEqual(await drain(ch, crit), ['kern.critical', 'app.critical', 'a.urgent']);
  }),
);

scenario('close', async () => {
  const conn = await amqp.connect(URL);
  const errors = [];
  const ch = await conn.createChannel();
  ch.on('error', (e) => errors.push(e));
  await assert.rejects(ch.assertExchange('amq.nope', 'direct'), (e) => e.code === 403);
  assert.equal(errors.length, 1, 'channel error event');
  const ch2 = await conn.createChannel();
  await ch2.assertQueue('', { exclusive: true });
  await ch2.close();
  let closed = false;
  conn.on('close', () => {
    closed = true;
  });
  await conn.close();
  assert.ok(closed, 'connection close event');
});

scenario(
  'reconnect',
  async () => {
    await control('ping'); // SKIP before declaring anything when the broker cannot restart
    const q = name('acm.q');
    const mgr = acm.connect([URL], { reconnectTimeInSeconds: 0.3, heartbeatIntervalInSeconds: 5 });
    let connects = 0;
    mgr.on('connect', () => connects++);
    const got = [];
    const wrapper = mgr.createChannel({
      json: true,
      setup: async (ch) => {
        await ch.assertQueue(q, { durable: false, autoDelete: false });
        await ch.prefetch(5);
        await ch.consume(q, (m) => {
          if (m === null) return; // cancelled by the broker (queue deleted)
          got.push(JSON.parse(m.content.toString()));
          ch.ack(m);
        });
      },
    });
    try {
      await wrapper.waitForConnect();
      await wrapper.sendToQueue(q, { n: 1 });
      await waitFor(() => got.length === 1, 'message before restart');
      await control('restart 1');
      await waitFor(() => connects >= 2, 'reconnect', 20000);
      // published while possibly still reconnecting: the wrapper buffers it
      await wrapper.sendToQueue(q, { n: 2 });
      await waitFor(() => got.some((m) => m.n === 2), 'message after restart', 10000);
      await wrapper.addSetup((ch) => ch.deleteQueue(q));
    } finally {
      await wrapper.close();
      await mgr.close();
    }
  },
  40000,
);

scenario(
  'reconnect_builtin',
  async () => {
    await control('ping');
    const q = name('builtin.q');
    const got = [];
    let connects = 0;
    let ch = null;
    const conn = await amqp.connect(URL, {
      recovery: {
        initialDelay: 200,
        maxDelay: 1000,
        async setup(model) {
          const c = await model.createChannel();
          c.on('error', () => {});
          await c.assertQueue(q, { autoDelete: false });
          await c.consume(q, (m) => {
            if (m === null) return; // cancelled by the broker (queue deleted)
            got.push(m.content.toString());
            c.ack(m);
          });
          ch = c; // only now is the new channel ready to use
          connects++;
        },
      },
    });
    conn.on('error', () => {});
    try {
      ch.sendToQueue(q, Buffer.from('before'));
      await waitFor(() => got.includes('before'), 'message before restart');
      await control('restart 1');
      await waitFor(() => connects >= 2, 'recovery', 20000);
      ch.sendToQueue(q, Buffer.from('after'));
      await waitFor(() => got.includes('after'), 'message after restart', 10000);
      await ch.deleteQueue(q);
    } finally {
      await conn.close();
    }
  },
  40000,
);

async function main() {
  for (const [n, fn, timeout] of scenarios) {
    if (ONLY && !ONLY.has(n)) continue;
    let timer;
    try {
      await Promise.race([
        fn(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`timed out after ${timeout / 1000} s`)), timeout);
        }),
      ]);
      console.log(`PASS ${n}`);
    } catch (e) {
      if (e instanceof Skip) {
        console.log(`SKIP ${n}: ${e.message}`);
      } else {
        console.error(e);
        console.log(`FAIL ${n}: ${String(e.message || e).replace(/\s+/g, ' ').slice(0, 300)}`);
      }
    } finally {
      clearTimeout(timer);
    }
  }
  process.exit(0);
}

main();
