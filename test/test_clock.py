"""The server's clock offset, estimated from timed pings.

The estimator, the protocol, real sockets against a server whose clock is off by a known
amount, hostile pongs, and the ROS client node's ``capture_corrected`` stamps.

The truth is known because server and client share this machine's clock: a server made
with ``clock_offset_ns`` stamps every frame and pong that much ahead of it.
"""
import json
import logging
import os
import random
import threading
import time

from conftest import LOOPBACK, run_async, wait_until
import pytest
from streamkinect2.client import Client, CLOCK_BURST
from streamkinect2.clock import ClockOffsetEstimator, MAX_DRIFT, STEP_SAMPLES, WINDOW
from streamkinect2.common import EndpointType, ProtocolError
from streamkinect2.compress import encode_frame_message
from streamkinect2.connection import ServerConnection
from streamkinect2.device import DepthFrame
from streamkinect2.mock import MockKinect
from streamkinect2.protocol import (decode_control, decode_pong_times, encode_control,
                                    FrameMessage, MessageType, pong_payload,
                                    shift_frame_timestamp)
from streamkinect2.server import Server
import zmq

#: The test server's clock: 3.7 s ahead of this machine's.
OFFSET = 3700000000
MS = 1000000


def exchange(theta, t1, out_ns, back_ns, hold_ns=30000):
    """Return (t1, t2, t3, t4) of a ping sent at *t1* to a server *theta* ns ahead."""
    t2 = t1 + out_ns + theta
    t3 = t2 + hold_ns
    t4 = t3 - theta + back_ns
    return t1, t2, t3, t4


# --- the estimator -------------------------------------------------------------------

def test_symmetric_trips_give_the_offset_and_the_shortest_round_trip():
    estimator = ClockOffsetEstimator()
    assert estimator.estimate is None and estimator.to_local_ns(123) is None
    rng = random.Random(1)
    theta, t1 = -123456789, 10 ** 18
    delays = [rng.randint(100000, 5000000) for _ in range(WINDOW)]
    for index, leg in enumerate(delays):
        estimator.add(*exchange(theta, t1 + index * 10 ** 9, leg, leg), now=index * 0.01)
    estimate = estimator.estimate
    assert estimate.offset_ns == theta
    assert estimate.round_trip_ns == 2 * min(delays)
    assert estimate.uncertainty_ns >= min(delays)
    assert estimate.samples == WINDOW
    assert estimator.to_local_ns(t1 + theta) == t1


def test_asymmetric_trips_err_by_half_the_asymmetry_of_the_best_within_its_bound():
    rng = random.Random(2)
    theta = 3 * 10 ** 9
    for trial in range(200):
        estimator = ClockOffsetEstimator()
        samples = []
        for index in range(WINDOW):
            out, back = rng.randint(50000, 20 * MS), rng.randint(50000, 20 * MS)
            samples.append((out, back))
            estimator.add(*exchange(theta, 10 ** 18 + index * 10 ** 9, out, back),
                          now=100.0)  # all at once: no ageing, the least delay wins
        out, back = min(samples, key=lambda s: s[0] + s[1])
        estimate = estimator.estimate
        assert estimate.round_trip_ns == out + back
        assert abs(estimate.offset_ns - (theta + (out - back) // 2)) <= 1
        assert abs(estimate.offset_ns - theta) <= estimate.uncertainty_ns


def test_a_stale_low_delay_sample_gives_way_to_a_fresh_one_as_it_ages():
    estimator = ClockOffsetEstimator()
    theta = 1000
    estimator.add(*exchange(theta, 10 ** 18, 50000, 50000), now=0.0)       # 100 us trip
    estimator.add(*exchange(theta + 150000, 10 ** 18 + 10 ** 9, 200000, 200000),
                  now=1.0)  # 400 us trip; its bound (200 us) and the first's overlap
    # At 1 s the first's bound is 50 + 50 us: it wins.
    assert estimator.estimate.round_trip_ns == 100000
    # At 10 s it has grown by 500 us (MAX_DRIFT): the later sample is the better one.
    estimator.add(*exchange(theta + 150000, 10 ** 18 + 10 ** 10, 200000, 200000), now=10.0)
    assert MAX_DRIFT * 10 * 1e9 > 150000
    assert estimator.estimate.round_trip_ns == 400000
    assert estimator.estimate.offset_ns == theta + 150000
    assert estimator.uncertainty_ns(now=10.0) == 200000
    assert estimator.uncertainty_ns(now=12.0) == 200000 + int(MAX_DRIFT * 2e9)


def test_an_outlier_is_held_back_and_dropped():
    estimator = ClockOffsetEstimator()
    theta, t1 = 5 * MS, 10 ** 18
    for index in range(4):
        estimator.add(*exchange(theta, t1 + index * 10 ** 9, 100000, 100000), now=index)
    # A lie (or a glitch): 50 ms off, with the shortest trip of all.
    estimator.add(*exchange(theta + 50 * MS, t1 + 4 * 10 ** 9, 10000, 10000), now=4.0)
    assert estimator.estimate.offset_ns == theta
    assert estimator.estimate.round_trip_ns == 200000
    estimator.add(*exchange(theta, t1 + 5 * 10 ** 9, 100000, 100000), now=5.0)
    assert estimator.outliers == 1 and estimator.steps == 0
    assert estimator.estimate.offset_ns == theta


def test_a_clock_step_is_followed_after_a_few_samples_that_agree():
    estimator = ClockOffsetEstimator()
    theta, t1 = 0, 10 ** 18
    for index in range(WINDOW):
        estimator.add(*exchange(theta, t1 + index * 10 ** 9, 100000, 100000), now=index)
    stepped = theta + 10 ** 9  # the server's clock jumps a second ahead
    for index in range(WINDOW, WINDOW + STEP_SAMPLES):
        assert estimator.estimate.offset_ns == theta
        estimator.add(*exchange(stepped, t1 + index * 10 ** 9, 150000, 150000), now=index)
    assert estimator.estimate.offset_ns == stepped
    assert estimator.steps == 1 and estimator.estimate.samples == STEP_SAMPLES


BAD_SAMPLES = {
    'floats': (1.0, 2.0, 3.0, 4.0),
    'bools': (True, True, True, True),
    'strings': ('1', '2', '3', '4'),
    'None': (None, 2, 3, 4),
    'beyond 64 bits': (1, 2 ** 63, 2 ** 63 + 1, 5),
    'answered before received': (10, 100, 50, 200),
    'back before it left': (200, 100, 150, 10),
    'held longer than the round trip': (100, 10, 1000, 200),
    'a minute round trip': (0, 0, 0, 61 * 10 ** 9),
}


@pytest.mark.parametrize('kind', sorted(BAD_SAMPLES))
def test_samples_that_cannot_be_true_are_rejected_and_counted(kind):
    estimator = ClockOffsetEstimator()
    assert estimator.add(*BAD_SAMPLES[kind]) is None
    assert estimator.rejected == 1 and estimator.accepted == 0
    assert estimator.estimate is None and estimator.last_rejection
    assert estimator.as_dict()['offset_ns'] is None


def test_memory_is_bounded_whatever_comes():
    estimator = ClockOffsetEstimator()
    rng = random.Random(3)
    t1 = 10 ** 18
    for index in range(20000):
        theta = rng.choice([0, 0, 0, rng.randint(-10 ** 12, 10 ** 12)])
        estimator.add(*exchange(theta, t1 + index * 10 ** 6, rng.randint(1, 10 ** 7),
                                rng.randint(1, 10 ** 7)), now=index * 0.001)
        assert len(estimator._samples) <= WINDOW
        assert len(estimator._held) < STEP_SAMPLES
    assert estimator.accepted == 20000
    assert estimator.estimate is not None


def test_reset_forgets_the_estimate():
    estimator = ClockOffsetEstimator()
    estimator.add(*exchange(7, 10 ** 18, 1000, 1000))
    assert estimator.to_local_ns(1007) == 1000
    estimator.reset()
    assert estimator.estimate is None and estimator.to_local_ns(1007) is None


# --- protocol ------------------------------------------------------------------------

def test_pong_payloads():
    assert pong_payload(None, 1, 2) is None  # a 2014 ping: a plain pong
    assert pong_payload({}, 1, 2) == {'recv_ns': 1, 'send_ns': 2}
    assert pong_payload({'client_ns': -5, 'later': 'ignored'}, 1, 2) == {
        'client_ns': -5, 'recv_ns': 1, 'send_ns': 2}
    for bad in ([1], 'x', 3, {'client_ns': '5'}, {'client_ns': 1.5},
                {'client_ns': True}, {'client_ns': 2 ** 64}):
        with pytest.raises(ProtocolError):
            pong_payload(bad, 1, 2)
    assert decode_pong_times({'client_ns': 1, 'recv_ns': 2, 'send_ns': 3, 'x': []}) == (
        1, 2, 3)
    for bad in (None, [], {'client_ns': 1, 'recv_ns': 2}, {'client_ns': 1, 'recv_ns': 2,
                                                           'send_ns': 3.0}):
        with pytest.raises(ProtocolError):
            decode_pong_times(bad)


def test_shifting_a_frame_timestamp_leaves_the_rest_alone():
    frame = DepthFrame(MockKinect.render_frame(3), sequence=3, timestamp_ns=10 ** 18)
    message = encode_frame_message(frame)
    parts = message.parts
    header, payload = shift_frame_timestamp(parts, -OFFSET)
    shifted = FrameMessage(bytes(header) + bytes(payload))
    assert shifted.header == message.header._replace(timestamp_ns=10 ** 18 - OFFSET)
    assert payload is parts[1]  # not copied


# --- real sockets: a server whose clock is off -----------------------------------------

class Truth(object):
    """The capture stamps a mock device really gave its frames, by sequence."""

    def __init__(self, kinect):
        """Listen to *kinect*'s depth frames (on its thread)."""
        self.stamps = {}
        MockKinect.on_depth_frame.connect(self.on_depth, kinect, weak=False)

    def on_depth(self, kinect, depth_frame):
        self.stamps[depth_frame.sequence] = depth_frame.timestamp_ns


def test_corrected_stamps_land_within_1ms_of_the_truth_on_loopback():
    checked = {'depth': [], 'ir': [], 'color': []}
    shifts = set()

    async def main():
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False,
                                            clock_offset_ns=OFFSET) as server:
            server.add_kinect(kinect)
            truth = Truth(kinect)
            client = Client(server.endpoints[EndpointType.control])

            def added(client, kinect_id):
                client.enable_depth_frames(kinect_id)
                client.enable_ir_frames(kinect_id)
                client.enable_color_frames(kinect_id)

            def frame(stream, client, kinect_id, **kwargs):
                received = kwargs[stream + '_frame']
                if stream == 'color' and not received.paired:
                    return
                true = truth.stamps.get(received.sequence)
                local = client.to_local_ns(received.timestamp_ns)
                if true is not None and local is not None:
                    # As sent: exactly the offset ahead; corrected: the truth, nearly.
                    shifts.add(received.timestamp_ns - true)
                    checked[stream].append(local - true)
            Client.on_add_kinect.connect(added, client, weak=False)
            for stream in checked:
                getattr(Client, 'on_{0}_frame'.format(stream)).connect(
                    lambda c, stream=stream, **kwargs: frame(stream, c, **kwargs), client,
                    weak=False)
            client.connect()
            try:
                await wait_until(lambda: all(len(v) >= 60 for v in checked.values()), 30,
                                 'frames of every stream with an estimate')
                clock = client.clock.as_dict()
                assert clock['supported'] is True and clock['rejected'] == 0
                assert clock['accepted'] >= CLOCK_BURST and clock['samples'] >= CLOCK_BURST
                assert abs(clock['offset_ns'] - OFFSET) <= clock['uncertainty_ns'] < MS
                # Latency is on this host's clock: not 3.7 s less than it should be.
                stats = client.stats[kinect.unique_kinect_id]
                assert 0 < stats.latency_percentile(0.5) < 1.0
            finally:
                client.disconnect()
    run_async(main())
    assert shifts == {OFFSET}
    for stream, errors in checked.items():
        assert max(abs(e) for e in errors) < MS, (stream, min(errors), max(errors))


def test_a_server_connection_tells_the_offset_of_the_server_it_is_connected_to():
    async def main():
        with Server(address=LOOPBACK, announce=False, clock_offset_ns=-OFFSET) as server:
            connection = ServerConnection(server.endpoints[EndpointType.control])
            assert connection.clock is None and connection.to_local_ns(1) is None
            with connection:
                await wait_until(lambda: connection.clock is not None
                                 and connection.clock.estimate is not None, 10,
                                 'an estimate')
                estimate = connection.clock.estimate
                assert abs(estimate.offset_ns + OFFSET) <= estimate.uncertainty_ns < MS
                assert connection.to_local_ns(0) == -estimate.offset_ns
            assert connection.clock is None
    run_async(main())


def test_a_2014_ping_gets_a_plain_pong_and_a_timed_one_the_server_clock():
    async def main():
        with Server(address=LOOPBACK, announce=False, clock_offset_ns=OFFSET) as server:
            ctx = zmq.Context.instance()
            sock = ctx.socket(zmq.REQ)
            sock.linger = 0
            sock.rcvtimeo = 5000
            sock.connect(server.endpoints[EndpointType.control])
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)

            async def ask(frames):
                sock.send_multipart(frames)
                await wait_until(lambda: poller.poll(0), 5, 'a reply')
                return sock.recv_multipart()
            try:
                assert await ask([b'\x01']) == [b'\x02']  # byte for byte, as in 2014
                before = time.time_ns()
                reply = await ask(encode_control(MessageType.ping, {'client_ns': 42}))
                after = time.time_ns()
                msg_type, payload = decode_control(reply)
                times = decode_pong_times(payload)
                assert msg_type is MessageType.pong and times.client_ns == 42
                assert before + OFFSET <= times.recv_ns <= times.send_ns <= after + OFFSET
                for bad in ([b'\x01', b'[1]'], [b'\x01', b'{"client_ns": "now"}']):
                    msg_type, payload = decode_control(await ask(bad))
                    assert msg_type is MessageType.error and 'ping' in payload['reason']
                assert await ask([b'\x01']) == [b'\x02']  # and it goes on serving
            finally:
                sock.close(linger=0)
            # The 2014 API's ping() still gets its pong.
            client = Client(server.endpoints[EndpointType.control])
            pongs = []
            client.connect()
            try:
                client.ping(lambda: pongs.append(1))
                await wait_until(lambda: pongs, 5, 'the pong')
            finally:
                client.disconnect()
    run_async(main())


# --- hostile pongs --------------------------------------------------------------------

class PingFake(object):
    """A server on loopback (ROUTER) whose ``pong`` replies the test decides.

    It answers ``who`` with a ``me`` of no devices and each ``ping`` as
    ``answer(fake, ping_payload)`` says: a list of replies (frames), any number of them.
    Replies put in ``late`` go out just before the next answer, to whatever request comes
    next. ``pings`` and ``whos`` count the requests.
    """

    def __init__(self, answer):
        """Bind and start the thread."""
        self.answer = answer
        self.late = []
        self.pings = 0
        self.whos = 0
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.linger = 0
        self.endpoint = 'tcp://{0}:{1}'.format(
            LOOPBACK, self._router.bind_to_random_port('tcp://' + LOOPBACK))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='PingFake', daemon=True)
        self._thread.start()

    def me(self):
        """Return a valid ``me`` reply."""
        return encode_control(MessageType.me, {'version': 1, 'name': 'ping fake',
                                               'endpoints': {'control': self.endpoint},
                                               'devices': []})

    def _run(self):
        while not self._stop.is_set():
            if not self._router.poll(50):
                continue
            identity, empty, *frames = self._router.recv_multipart()
            late, self.late = self.late, []
            for reply in late:
                self._router.send_multipart([identity, empty] + list(reply))
            if frames[0] == b'\x01':
                self.pings += 1
                payload = json.loads(frames[1]) if len(frames) > 1 else None
                replies = self.answer(self, payload)
            else:
                self.whos += 1
                replies = [self.me()]
            for reply in replies:
                self._router.send_multipart([identity, empty] + list(reply))

    def close(self):
        """Stop the thread, close the socket."""
        self._stop.set()
        self._thread.join(5.0)
        self._router.close(linger=0)
        self._ctx.term()

    def __enter__(self):
        """Return the running fake."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Close it."""
        self.close()


def timed_pong(ping, recv_delta=0, send_delta=0, **overrides):
    """Return a true timed pong to *ping* (this machine's clock), adjusted."""
    now = time.time_ns()
    payload = {'client_ns': ping['client_ns'], 'recv_ns': now + recv_delta,
               'send_ns': now + send_delta}
    payload.update(overrides)
    return encode_control(MessageType.pong, payload)


HOSTILE_PONGS = {
    'not an object': lambda f, p: [[b'\x02', b'[1, 2, 3]']],
    'invalid JSON': lambda f, p: [[b'\x02', b'{"client_ns": ']],
    'nested too deep': lambda f, p: [[b'\x02', b'[' * 40 + b']' * 40]],
    'string times': lambda f, p: [timed_pong(p, recv_ns='1', send_ns='2')],
    'float times': lambda f, p: [timed_pong(p, recv_ns=1e18, send_ns=1e18)],
    'bool times': lambda f, p: [timed_pong(p, recv_ns=True, send_ns=True)],
    'beyond 64 bits': lambda f, p: [timed_pong(p, recv_ns=2 ** 70, send_ns=2 ** 70)],
    'answered before received': lambda f, p: [timed_pong(p, 5 * MS, 0)],
    'held longer than its round trip': lambda f, p: [timed_pong(p, -10 ** 10, 10 ** 10)],
    'an unknown client_ns': lambda f, p: [timed_pong(p, client_ns=p['client_ns'] + 1)],
    'no client_ns': lambda f, p: [encode_control(MessageType.pong, {'recv_ns': 1,
                                                                    'send_ns': 2})],
    'me instead': lambda f, p: [f.me()],
    'a who instead': lambda f, p: [[b'\x03']],
}


def pinging_client(fake):
    """Return a Client of *fake* sending ``who`` and ``ping`` every 50 ms, and its disconnects."""
    client = Client(fake.endpoint)
    client.heartbeat_period = 50
    client.clock_period = 50
    disconnects = []
    Client.on_disconnect.connect(lambda c: disconnects.append(1), client, weak=False)
    return client, disconnects


@pytest.mark.parametrize('kind', sorted(HOSTILE_PONGS))
def test_hostile_pongs_are_counted_and_ignored(kind, caplog):
    async def main():
        with PingFake(HOSTILE_PONGS[kind]) as fake:
            client, disconnects = pinging_client(fake)
            client.connect()
            try:
                await wait_until(lambda: fake.pings >= CLOCK_BURST + 5, 10, 'pings')
                whos = fake.whos
                await wait_until(lambda: fake.whos >= whos + 3, 5, 'heartbeats go on')
                assert client.is_identified and not disconnects
                clock = client.clock.as_dict()
                assert clock['offset_ns'] is None and clock['supported'] is not False
                assert clock['rejected'] >= CLOCK_BURST + 4 and clock['last_rejection']
                assert client.to_local_ns(10 ** 18) is None
            finally:
                client.disconnect()
    with caplog.at_level(logging.DEBUG, logger='streamkinect2'):
        run_async(main())
    assert 'Traceback' not in caplog.text
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and 'Ignoring a timed pong' in warnings[0].getMessage(), \
        [r.getMessage() for r in warnings]


def twice_at_once(fake, ping):
    return [timed_pong(ping), timed_pong(ping)]


def twice_later(fake, ping):
    fake.late.append(timed_pong(ping))
    return [timed_pong(ping)]


@pytest.mark.parametrize('answer', [twice_at_once, twice_later])
def test_a_server_answering_each_ping_twice_costs_nothing(answer):
    async def main():
        with PingFake(answer) as fake:
            client, disconnects = pinging_client(fake)
            client.connect()
            try:
                await wait_until(lambda: fake.pings >= 2 * CLOCK_BURST, 10, 'pings')
                whos = fake.whos
                await wait_until(lambda: fake.whos >= whos + 5, 5, 'heartbeats go on')
                assert client.is_identified and not disconnects
                clock = client.clock.as_dict()
                # An extra reply that is there before the next request leaves is dropped
                # by ZeroMQ; one that comes after is taken as the reply to it: noticed,
                # counted, and the request asked again. The true replies make an estimate.
                if answer is twice_later:
                    assert clock['rejected'] >= CLOCK_BURST
                assert clock['offset_ns'] is not None
                assert abs(clock['offset_ns']) <= clock['uncertainty_ns']
            finally:
                client.disconnect()
    run_async(main())


def test_a_server_without_clock_gets_one_timed_ping_and_stays():
    async def main():
        with PingFake(lambda f, p: [[b'\x02']]) as fake:  # a plain pong, as in 2014
            client, _ = pinging_client(fake)
            client.connect()
            try:
                await wait_until(lambda: fake.whos >= 20, 10, 'heartbeats')
                assert fake.pings == 1
                assert client.is_identified and client.clock.supported is False
                assert client.to_local_ns(5) is None
            finally:
                client.disconnect()
    run_async(main())


class SteppedTime(object):
    """The time module, but for a wall clock that can be stepped by ``step`` ns."""

    def __init__(self):
        """Start unstepped."""
        self.step = 0

    def __getattr__(self, name):
        return getattr(time, name)

    def time_ns(self):
        return time.time_ns() + self.step


def test_a_step_of_the_client_clock_starts_the_estimate_anew(monkeypatch):
    import streamkinect2.client
    clock = SteppedTime()
    monkeypatch.setattr(streamkinect2.client, 'time', clock)

    async def main():
        with PingFake(lambda f, p: [timed_pong(p)]) as fake:
            client = Client(fake.endpoint)
            client.clock_period = 20
            client.connect()
            try:
                await wait_until(lambda: client.clock.estimate is not None, 5, 'an estimate')
                assert abs(client.clock.estimate.offset_ns) < MS
                clock.step = 5 * 10 ** 9  # this host's wall clock jumps 5 s ahead
                accepted = client.clock.accepted
                await wait_until(lambda: client.clock.accepted > accepted + 1, 5, 'samples')
                # Started anew, from the samples after the step: no outliers, no wait for
                # three that agree.
                assert abs(client.clock.estimate.offset_ns + clock.step) < MS
                assert client.clock.steps == 0 and client.clock.outliers == 0
            finally:
                client.disconnect()
    run_async(main())


@pytest.mark.parametrize('kind', ['never', 'oversized'])
def test_a_server_that_never_answers_a_ping_is_left_as_any_silent_server(kind):
    oversized = [[b'\x02', b'{"x": "' + b'y' * (2 << 20) + b'"}']]

    async def main():
        with PingFake(lambda f, p: [] if kind == 'never' else oversized) as fake:
            client = Client(fake.endpoint)
            client.response_timeout = 300
            disconnects = []
            Client.on_disconnect.connect(lambda c: disconnects.append(1), client, weak=False)
            client.connect()
            try:
                await wait_until(lambda: disconnects, 10, 'the client to give up')
                assert fake.pings == 1 and not client.is_connected
            finally:
                if client.is_connected:
                    client.disconnect()
    run_async(main())


# --- ROS: stamp_source capture_corrected ----------------------------------------------

def test_ros_client_node_capture_corrected_stamps_and_diagnostics():
    ros_helpers = pytest.importorskip('ros_helpers')
    pytest.importorskip('rclpy')
    diagnostic_msgs = pytest.importorskip('diagnostic_msgs.msg')
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from streamkinect2_ros.ioloop import IOLoopThread

    device = ros_helpers.unique('clock_')
    namespace = '/' + ros_helpers.unique('t')
    loop = IOLoopThread('test-clock-server')
    loop.start()
    kinect = MockKinect(unique_kinect_id=device, streams=['depth'])
    truth = Truth(kinect)
    server = None
    try:
        server = loop.call(lambda: Server(address=LOOPBACK, announce=False,
                                          clock_offset_ns=OFFSET, streams=['depth']))
        loop.call(server.add_kinect, kinect)
        loop.call(server.start)
        kinect.start()
        params = {'server_endpoint': server.endpoints[EndpointType.control],
                  'stamp_source': 'capture_corrected', 'diagnostics_period': 0.5,
                  'log_period': 1.0}
        with ros_helpers.TestSubscriber() as sub, ros_helpers.NodeProcess(
                'client_node', params, os.path.join(ros_helpers.CONFIG, 'client.yaml'),
                namespace) as node:
            stamps = []
            sub.node.create_subscription(
                Image, '{0}/{1}/depth/image_raw'.format(namespace, device),
                lambda msg: stamps.append(msg.header.stamp.sec * 10 ** 9
                                          + msg.header.stamp.nanosec),
                qos_profile_sensor_data)
            clock = {}

            def on_diagnostics(msg):
                for status in msg.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if 'clock_offset_ms' in values and values['clock_offset_ms'] != 'unknown':
                        clock.update(values)
            sub.node.create_subscription(diagnostic_msgs.DiagnosticArray, '/diagnostics',
                                         on_diagnostics, 10)
            sub.spin_until(lambda: len(stamps) >= 60 and clock, 60.0,
                           '60 Images and the clock in /diagnostics')
            node.wait_for_output('clock: +3700.', 10.0)
            true = sorted(truth.stamps.values())
            errors = [min(true, key=lambda t: abs(t - stamp)) - stamp for stamp in stamps]
            # Every Image after the first estimate (the first few may be receive times).
            assert max(abs(e) for e in errors[-50:]) < MS, errors
            assert abs(float(clock['clock_offset_ms']) - OFFSET / MS) < 1.0, clock
            assert float(clock['clock_uncertainty_ms']) < 1.0, clock
            assert clock['clock'] == 'estimated' and int(clock['clock_samples']) >= 1
            assert 'Traceback' not in node.output()
    finally:
        kinect.stop()
        if server is not None:
            loop.call(server.stop)
        loop.stop()


def test_ros_capture_corrected_from_a_server_without_clock_warns_and_stamps_receipt():
    ros_helpers = pytest.importorskip('ros_helpers')
    pytest.importorskip('rclpy')
    diagnostic_msgs = pytest.importorskip('diagnostic_msgs.msg')
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from test_client_hostile import FakeServer

    namespace = '/' + ros_helpers.unique('t')
    with FakeServer() as fake, ros_helpers.TestSubscriber() as sub:  # plain pongs, as 2014
        fake.device_ids = [ros_helpers.unique('old_')]
        fake.streaming.set()
        params = {'server_endpoint': fake.endpoint, 'stamp_source': 'capture_corrected',
                  'diagnostics_period': 0.5, 'log_period': 1.0}
        with ros_helpers.NodeProcess('client_node', params, os.path.join(
                ros_helpers.CONFIG, 'client.yaml'), namespace) as node:
            images = []
            sub.node.create_subscription(
                Image, '{0}/{1}/depth/image_raw'.format(namespace, fake.device_ids[0]),
                images.append, qos_profile_sensor_data)
            connection = {}

            def on_diagnostics(msg):
                for status in msg.status:
                    values = {kv.key: kv.value for kv in status.values}
                    if 'clock' in values:
                        connection['level'] = status.level
                        connection['message'] = status.message
                        connection.update(values)
            sub.node.create_subscription(diagnostic_msgs.DiagnosticArray, '/diagnostics',
                                         on_diagnostics, 10)
            sub.spin_until(lambda: len(images) >= 10 and connection, 30.0,
                           'Images and the connection status')
            assert connection['level'] == diagnostic_msgs.DiagnosticStatus.WARN, connection
            assert connection['clock'] == 'not reported by the server', connection
            assert connection['clock_offset_ms'] == 'unknown', connection
            node.wait_for_output('stamping with the receive time', 10.0)
            node.wait_for_output('clock: no estimate (it does not report its clock)', 10.0)
            output = node.output()
            assert output.count('stamping with the receive time') == 1, output
            assert 'Traceback' not in output, output
