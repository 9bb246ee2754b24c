<?php
// php-amqplib (Debian php-amqplib) scenarios against Leveret; protocol: see interop/run.py.
// php-amqplib logs in with AMQPLAIN by default.  It has no automatic recovery (reconnect n/a).
require_once 'PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Exception\AMQPProtocolChannelException;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

$HOST = getenv('AMQP_HOST') ?: '127.0.0.1';
$PORT = (int) (getenv('AMQP_PORT') ?: 5672);
$USER = getenv('AMQP_USER') ?: 'guest';
$PASS = getenv('AMQP_PASSWORD') ?: 'guest';
$VHOST = getenv('AMQP_VHOST') ?: '/';
$PREFIX = getenv('INTEROP_PREFIX') ?: 'interop-php-' . getmypid();
$ONLY = getenv('INTEROP_ONLY') ? explode(',', getenv('INTEROP_ONLY')) : null;

function name($s) { global $PREFIX; return "$PREFIX.$s"; }

function connect($login = 'AMQPLAIN')
{
    global $HOST, $PORT, $USER, $PASS, $VHOST;
    return new AMQPStreamConnection($HOST, $PORT, $USER, $PASS, $VHOST, false, $login);
}

function expect($what, $got, $want)
{
    if ($got !== $want) {
        throw new Exception("$what: got " . var_export($got, true) . ', want ' . var_export($want, true));
    }
}

function temp_queue($ch)
{
    [$q] = $ch->queue_declare('', false, false, true, false);
    return $q;
}

function msg_count($ch, $q)
{
    [, $n] = $ch->queue_declare($q, true);
    return $n;
}

function drain($ch, $q)
{
    $out = [];
    while (($m = $ch->basic_get($q, true)) !== null) {
        $out[] = $m->getBody();
    }
    return $out;
}

// pump the connection until $pred() is true
function wait_until($ch, $pred, $what, $timeout = 5.0)
{
    $deadline = microtime(true) + $timeout;
    while (!$pred()) {
        if (microtime(true) > $deadline) {
            throw new Exception("timed out waiting for $what");
        }
        try {
            $ch->wait(null, false, 0.05);
        } catch (PhpAmqpLib\Exception\AMQPTimeoutException $e) {
        }
    }
}

$scenarios = [];

$scenarios['connect'] = function () {
    foreach (['AMQPLAIN', 'PLAIN'] as $login) {
        $conn = connect($login);
        $ch = $conn->channel();
        if (!$ch->is_open() || !$conn->isConnected()) {
            throw new Exception("not connected with $login");
        }
        $props = $conn->getServerProperties();
        if (!isset($props['capabilities'])) {
            throw new Exception('no capabilities in server properties');
        }
        $conn->close();
    }
};

$scenarios['topology'] = function () {
    $conn = connect();
    try {
        $ch = $conn->channel();
        $x = name('topo.x');
        $q = name('topo.q');
        $ch->exchange_declare($x, 'direct', false, true, false);
        [$qn, $n, $c] = $ch->queue_declare($q, false, true, false, false, false,
            new AMQPTable(['x-max-length' => 50, 'x-queue-type' => 'classic']));
        expect('declare-ok', [$qn, $n, $c], [$q, 0, 0]);
        $ch->queue_bind($q, $x, 'k');
        $ch->basic_publish(new AMQPMessage('routed', [
            'content_type' => 'text/plain', 'delivery_mode' => 2,
            'application_headers' => new AMQPTable(['n' => 1, 's' => 'str', 'b' => true]),
        ]), $x, 'k');
        $ch->basic_publish(new AMQPMessage('dropped'), $x, 'other');
        usleep(50000);
        $m = $ch->basic_get($q, true);
        expect('routed body', $m->getBody(), 'routed');
        expect('headers', $m->get('application_headers')->getNativeData(), ['n' => 1, 's' => 'str', 'b' => true]);
        expect('left', msg_count($ch, $q), 0);
        try {
            $ch->exchange_declare($x, 'topic', false, true, false);
            throw new Exception('redeclare with another type accepted');
        } catch (AMQPProtocolChannelException $e) {
            expect('reply code', $e->getCode(), 406);
        }
        $ch = $conn->channel();
        $ch->queue_unbind($q, $x, 'k');
        $ch->queue_delete($q);
        $ch->exchange_delete($x);
    } finally {
        $conn->close();
    }
};

$scenarios['confirm'] = function () {
    $conn = connect();
    try {
        $ch = $conn->channel();
        $q = temp_queue($ch);
        $acks = 0;
        $nacks = 0;
        $returns = [];
        $ch->set_ack_handler(function ($m) use (&$acks) { $acks++; });
        $ch->set_nack_handler(function ($m) use (&$nacks) { $nacks++; });
        $ch->set_return_listener(function ($code, $text, $ex, $rk, $m) use (&$returns) {
            $returns[] = [$code, $text, $m->getBody()];
        });
        $ch->confirm_select();
        for ($i = 0; $i < 200; $i++) {
            $ch->basic_publish(new AMQPMessage("m$i", ['delivery_mode' => 2]), '', $q);
        }
        $ch->wait_for_pending_acks_returns(5);
        expect('acks', [$acks, $nacks], [200, 0]);
        $ch->basic_publish(new AMQPMessage('back'), '', name('nowhere'), true);
        $ch->wait_for_pending_acks_returns(5);
        expect('returns', $returns, [[312, 'NO_ROUTE', 'back']]);
        expect('queued', msg_count($ch, $q), 200);
    } finally {
        $conn->close();
    }
};

$scenarios['consume_prefetch'] = function () {
    $conn = connect();
    try {
        $ch = $conn->channel();
        $q = temp_queue($ch);
        for ($i = 0; $i < 9; $i++) {
            $ch->basic_publish(new AMQPMessage((string) $i), '', $q);
        }
        $ch->basic_qos(0, 3, false);
        $held = [];
        $ch->basic_consume($q, '', false, false, false, false, function ($m) use (&$held) {
            $held[] = $m;
        });
        $seen = [];
        while (count($seen) < 9) {
            wait_until($ch, function () use (&$held) { return count($held) >= 3; }, '3 deliveries');
            try {
                $ch->wait(null, false, 0.1);
            } catch (PhpAmqpLib\Exception\AMQPTimeoutException $e) {
            }
            expect('deliveries in flight with prefetch 3', count($held), 3);
            foreach ($held as $m) {
                $seen[] = $m->getBody();
            }
            end($held)->ack(true);
            $held = [];
        }
        expect('order', $seen, array_map('strval', range(0, 8)));
    } finally {
        $conn->close();
    }
};

$scenarios['reject_requeue'] = function () {
    $conn = connect();
    try {
        $ch = $conn->channel();
        $q = temp_queue($ch);
        $ch->basic_publish(new AMQPMessage('a'), '', $q);
        $ch->basic_publish(new AMQPMessage('b'), '', $q);
        usleep(20000);
        $m = $ch->basic_get($q);
        $m->reject(true);
        $m = $ch->basic_get($q);
        expect('requeued', [$m->getBody(), $m->isRedelivered()], ['a', true]);
        $m->nack(false);
        $m = $ch->basic_get($q);
        expect('next', $m->getBody(), 'b');
        $m->reject(false);
        expect('left', msg_count($ch, $q), 0);
    } finally {
        $conn->close();
    }
};

$scenarios['fanout'] = function () {
    $conn = connect();
    try {
        $ch = $conn->channel();
        $x = name('fan');
        $ch->exchange_declare($x, 'fanout', false, false, true);
        $qs = [temp_queue($ch), temp_queue($ch)];
        foreach ($qs as $q) {
            $ch->queue_bind($q, $x);
        }
        $ch->basic_publish(new AMQPMessage('hi all'), $x, 'rk');
        usleep(50000);
        foreach ($qs as $q) {
            expect($q, drain($ch, $q), ['hi all']);
        }
    } finally {
        $conn->close();
    }
};

$scenarios['topic'] = function () {
    $conn = connect();
    try {
        $ch = $conn->channel();
        $x = name('topic');
        $ch->exchange_declare($x, 'topic', false, false, true);
        $q = temp_queue($ch);
        $ch->queue_bind($q, $x, 'user.*.created');
        $ch->queue_bind($q, $x, 'audit.#');
        foreach (['user.42.created', 'user.42.deleted', 'audit', 'audit.a.b', 'user.created'] as $rk) {
            $ch->basic_publish(new AMQPMessage($rk), $x, $rk);
        }
        usleep(50000);
        expect('matches', drain($ch, $q), ['user.42.created', 'audit', 'audit.a.b']);
    } finally {
        $conn->close();
    }
};

$scenarios['tx'] = function () {
    $conn = connect();
    try {
        $ch = $conn->channel();
        $q = temp_queue($ch);
        $ch->tx_select();
        $ch->basic_publish(new AMQPMessage('no'), '', $q);
        $ch->tx_rollback();
        $ch->basic_publish(new AMQPMessage('yes'), '', $q);
        expect('before commit', msg_count($ch, $q), 0);
        $ch->tx_commit();
        $m = $ch->basic_get($q);
        expect('committed', $m->getBody(), 'yes');
        $m->ack();
        $ch->tx_commit();
        expect('after acked commit', msg_count($ch, $q), 0);
    } finally {
        $conn->close();
    }
};

$scenarios['close'] = function () {
    $conn = connect();
    $ch = $conn->channel();
    try {
        $ch->queue_declare(name('missing'), true);
        throw new Exception('passive declare of a missing queue succeeded');
    } catch (AMQPProtocolChannelException $e) {
        expect('reply code', $e->getCode(), 404);
    }
    $ch2 = $conn->channel();
    temp_queue($ch2);
    $ch2->close();
    $conn->close();
    if ($conn->isConnected()) {
        throw new Exception('still connected after close');
    }
};

foreach ($scenarios as $n => $fn) {
    if ($ONLY !== null && !in_array($n, $ONLY, true)) {
        continue;
    }
    try {
        $fn();
        echo "PASS $n\n";
    } catch (Throwable $e) {
        fwrite(STDERR, "$n: $e\n");
        $reason = preg_replace('/\s+/', ' ', get_class($e) . ': ' . $e->getMessage());
        echo "FAIL $n: " . substr($reason, 0, 300) . "\n";
    }
}
