"""Server and client over real ZeroMQ sockets on loopback."""
import asyncio
import gc
import json
import time

from conftest import LOOPBACK, run_async, wait_until
import numpy as np
import pytest
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.device import MOCK_CALIBRATION
from streamkinect2.mock import MockKinect
from streamkinect2.server import Server
from tornado.ioloop import IOLoop
import zmq
from zmq.asyncio import Context as AsyncContext

EDGE_VALUES = [0, 1, 4095, 4096, 8000, 65535]


def edge_frame(sequence):
    """Return a frame of the edge values (its sequence number in the first pixels)."""
    frame = np.resize(np.array(EDGE_VALUES, np.uint16), (424, 512))
    frame = np.roll(frame, sequence, axis=1)
    frame[0, 0:4] = [(sequence >> s) & 0xFFFF for s in (0, 16, 32, 48)]
    return frame


class Recorder(object):
    """Connects to every client signal and records what arrives."""

    def __init__(self, client, enable=True):
        self.client = client
        self.events = []
        self.frames = []
        self.enable = enable
        Client.on_connect.connect(self.on_connect, client)
        Client.on_disconnect.connect(self.on_disconnect, client)
        Client.on_add_kinect.connect(self.on_add, client)
        Client.on_remove_kinect.connect(self.on_remove, client)
        Client.on_depth_frame.connect(self.on_frame, client)

    def on_connect(self, client):
        self.events.append(('connect', time.monotonic()))

    def on_disconnect(self, client):
        self.events.append(('disconnect', time.monotonic()))

    def on_add(self, client, kinect_id):
        self.events.append(('add', kinect_id))
        if self.enable:
            client.enable_depth_frames(kinect_id)

    def on_remove(self, client, kinect_id):
        self.events.append(('remove', kinect_id))

    def on_frame(self, client, depth_frame, kinect_id):
        self.frames.append((kinect_id, depth_frame))

    def names(self):
        return [e[0] for e in self.events]


def control_endpoint(server):
    return server.endpoints[EndpointType.control]


def test_edge_values_round_trip_byte_exact():
    async def main():
        kinect = MockKinect(fps=30, frame_source=edge_frame)
        with kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            with Client(control_endpoint(server)) as client:
                recorder = Recorder(client)
                await wait_until(lambda: len(recorder.frames) >= 10, 15, 'ten frames')
                assert client.server_name == server.name
                assert client.kinect_ids == [kinect.unique_kinect_id]
                assert client.endpoints[EndpointType.control] == control_endpoint(server)
                stats = client.stats[kinect.unique_kinect_id]
                assert stats.received == len(recorder.frames) and stats.invalid == 0
                assert stats.rate() > 0 and stats.latency_percentile(0.5) > 0
            # Stats go with the devices: nothing of this server survives disconnect().
            assert client.stats == {}
        for kinect_id, frame in recorder.frames:
            assert kinect_id == kinect.unique_kinect_id
            assert frame.shape == (512, 424)
            assert frame.array.dtype == np.uint16
            assert np.array_equal(frame.array, edge_frame(frame.sequence))
            assert set(np.unique(frame.array[1:])) == set(EDGE_VALUES)
            assert 0 < time.time() - frame.timestamp < 10
    run_async(main())


def test_two_devices_added_and_removed_while_running():
    async def main():
        first, second = MockKinect(), MockKinect()
        with first, second, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(first)
            with pytest.raises(ValueError):
                server.add_kinect(first)
            client = Client(control_endpoint(server))
            client.heartbeat_period = 50
            recorder = Recorder(client)
            client.connect()
            client.heartbeat_period = 60000  # ignored once connected, as documented
            await wait_until(lambda: ('add', first.unique_kinect_id) in recorder.events,
                             10, 'first device')
            server.add_kinect(second)
            assert server.kinects == [first, second]
            await wait_until(lambda: ('add', second.unique_kinect_id) in recorder.events,
                             10, 'second device')
            await wait_until(lambda: {k for k, _ in recorder.frames} == {
                first.unique_kinect_id, second.unique_kinect_id}, 10, 'frames from both')
            server.remove_kinect(first)
            await wait_until(lambda: ('remove', first.unique_kinect_id) in recorder.events,
                             10, 'removal')
            assert client.kinect_ids == [second.unique_kinect_id]
            with pytest.raises(ValueError):
                client.enable_depth_frames(first.unique_kinect_id)
            with pytest.raises(ValueError):
                server.remove_kinect(first)
            client.disconnect()
    run_async(main())


def test_enable_depth_frames_rejects_unknown_ids_and_ping_pongs():
    async def main():
        with Server(address=LOOPBACK, announce=False) as server:
            with Client(control_endpoint(server)) as client:
                recorder = Recorder(client)
                await wait_until(lambda: 'connect' in recorder.names(), 10, 'connect')
                with pytest.raises(ValueError):
                    client.enable_depth_frames('no-such-device')
                pongs = []
                client.ping(lambda: pongs.append(1))
                client.ping()
                client.ping(lambda: pongs.append(2))
                await wait_until(lambda: pongs == [1, 2], 5, 'pongs')
            assert not client.is_connected
            with pytest.raises(RuntimeError):
                client.ping()
    run_async(main())


def test_repeated_start_stop_connect_disconnect_only_warn(caplog):
    async def main():
        server = Server(address=LOOPBACK, announce=False)
        server.stop()
        server.start()
        server.start()
        assert server.is_running
        client = Client(control_endpoint(server), connect_immediately=True)
        client.connect()
        client.disconnect()
        client.disconnect()
        server.stop()
        assert not server.is_running and server.endpoints == {}
    run_async(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    for text in ('not running', 'already running', 'already connected', 'not connected'):
        assert any(text in w for w in warnings), text


def test_a_device_that_cannot_be_served_says_why_and_leaves_no_socket():
    """A depth socket whose monitor cannot be served (its IOLoop is closed) is closed whole.

    Closing it used to call close() on the monitor's missing stream: an AttributeError
    hid the cause and the monitor socket stayed open after the server stopped.
    """
    ctx = zmq.Context()
    loop = IOLoop(make_current=False)
    server = Server(address=LOOPBACK, announce=False, zmq_ctx=ctx, io_loop=loop)
    try:
        server.start()
        loop.close()
        with pytest.raises(RuntimeError, match='closed'):
            server.add_kinect(MockKinect())
        assert server.kinects == []
        server.stop()
        gc.collect()
        assert [s.socket_type for s in ctx._sockets if not s.closed] == []
    finally:
        ctx.destroy(linger=0)


def test_server_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Server(address='not-an-ip', announce=False)
    with pytest.raises(ValueError):
        Server(address=LOOPBACK, name='', announce=False)


@pytest.mark.parametrize('frames, reason', [
    ([b'\x07'], 'unknown message type'),
    ([b'\x03', b'{}', b'{}'], 'frames'),
    ([b'\x03\x03'], 'type byte'),
    ([b'\x03', b'{bad json'], 'JSON'),
    ([b'\x03', b'[' * 3000 + b']' * 3000], 'nested'),
    ([b'\x03', json.dumps({'x': 'y' * 70000}).encode()], 'too large'),
    ([b'\x02'], 'unexpected message type "pong"'),
    ([b'\x04', b'{"version": 1}'], 'unexpected message type "me"'),
    ([b'\x00', b'{"reason": "x"}'], 'unexpected message type "error"'),
])
def test_malformed_control_messages_get_an_error_and_the_server_serves_on(frames, reason):
    async def main():
        ctx = AsyncContext()
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            req = ctx.socket(zmq.REQ)
            req.linger = 0
            req.connect(control_endpoint(server))
            try:
                await req.send_multipart(frames)
                reply = await asyncio.wait_for(req.recv_multipart(), 5)
                assert reply[0] == b'\x00'
                assert reason in json.loads(reply[1])['reason']
                # The same socket, then a 2014-style client, are still served.
                await req.send_multipart([b'\x01'])
                assert await asyncio.wait_for(req.recv_multipart(), 5) == [b'\x02']
                await req.send_multipart([b'\x03'])
                reply = await asyncio.wait_for(req.recv_multipart(), 5)
                assert reply[0] == b'\x04'
                me = json.loads(reply[1].decode('utf8'))
                assert me['version'] == 1 and me['name'] == server.name
                assert me['endpoints'] == {'control': control_endpoint(server)}
                kinect_id = kinect.unique_kinect_id
                assert me['devices'] == [{'id': kinect_id, 'endpoints': {
                    stream: server.device_endpoint(kinect_id, stream)
                    for stream in ('depth', 'ir', 'color')},
                    'streams': ['depth', 'ir', 'color'], 'depth_camera': kinect.depth_camera,
                    'color_camera': kinect.color_camera, 'ir_to_color': kinect.ir_to_color,
                    'depth_shift_mm': MOCK_CALIBRATION['depth_shift_mm']}]
                # Depth first: a 2014-style client takes the first endpoint it knows.
                assert list(me['devices'][0]['endpoints'])[0] == 'depth'
                assert set(kinect.depth_camera) >= {'fx', 'fy', 'cx', 'cy', 'k1', 'k2', 'k3',
                                                    'p1', 'p2', 'width', 'height'}
            finally:
                req.close(linger=0)
                ctx.term()
    run_async(main())


def test_client_notices_a_dead_server_within_response_timeout():
    async def main():
        with MockKinect() as kinect:
            server = Server(address=LOOPBACK, announce=False)
            server.add_kinect(kinect)
            server.start()
            client = Client(control_endpoint(server))
            client.heartbeat_period = 100
            client.response_timeout = 1000
            recorder = Recorder(client)
            client.connect()
            await wait_until(lambda: len(recorder.frames) >= 3, 10, 'frames')
            server.stop()   # the server goes away without a word
            died = time.monotonic()
            await wait_until(lambda: 'disconnect' in recorder.names(), 5, 'disconnect')
            noticed = dict(recorder.events)['disconnect'] - died
            assert noticed < 1.0 + 0.1 + 0.5, noticed
            assert not client.is_connected and client.kinect_ids == []
            assert ('remove', kinect.unique_kinect_id) in recorder.events
            # It comes back on the same port: connect() again resumes the stream.
            server = Server(address=LOOPBACK, announce=False,
                            control_port=int(client.endpoints[EndpointType.control]
                                             .rsplit(':', 1)[1]))
            server.add_kinect(kinect)
            server.start()
            count = len(recorder.frames)
            client.connect()
            await wait_until(lambda: len(recorder.frames) > count + 2, 10, 'frames again')
            assert recorder.names().count('connect') == 2
            client.disconnect()
            server.stop()
    run_async(main())


def test_client_survives_garbage_from_a_fake_server():
    """A REP that answers junk and a PUB that sends junk: errors, no crash."""
    async def main():
        ctx = AsyncContext()
        rep, pub = ctx.socket(zmq.REP), ctx.socket(zmq.PUB)
        for sock in (rep, pub):
            sock.linger = 0
        rep_port = rep.bind_to_random_port('tcp://' + LOOPBACK)
        pub_port = pub.bind_to_random_port('tcp://' + LOOPBACK)
        me = {'version': 1, 'name': 'fake', 'endpoints': {
            'control': 'tcp://127.0.0.1:{0}'.format(rep_port)}, 'devices': [
            {'id': 'dev', 'endpoints': {'depth': 'tcp://127.0.0.1:{0}'.format(pub_port)}}]}
        replies = [[b'\x09'], [b'\x04', b'{not json'], [b'\x04', b'[]'],
                   [b'\x04', json.dumps(dict(me, version=2)).encode()],
                   [b'\x00', b'{"reason": "go away"}'],
                   [b'\x04', json.dumps(me).encode()]]
        client = Client('tcp://127.0.0.1:{0}'.format(rep_port))
        client.heartbeat_period = 10
        recorder = Recorder(client)
        try:
            async def serve():
                for reply in replies:
                    await rep.recv_multipart()
                    await rep.send_multipart(reply)
                while True:
                    await rep.recv_multipart()
                    await rep.send_multipart([b'\x04', json.dumps(me).encode()])
            server_task = asyncio.ensure_future(serve())
            # Each invalid reply to who makes it give up; it then tries again.
            client.connect()
            for _ in range(len(replies)):
                await wait_until(lambda: not client.is_connected or client.kinect_ids, 10,
                                 'a verdict')
                if client.kinect_ids:
                    break
                client.connect()
            assert client.kinect_ids == ['dev']
            await wait_until(lambda: client._depth_streams, 5, 'subscription')
            good = client.decode_depth_message
            from streamkinect2.compress import encode_frame_message
            from streamkinect2.mock import DepthFrame
            head, body = (bytes(p) for p in encode_frame_message(
                DepthFrame(edge_frame(7), sequence=7)).parts)
            garbage = [[b'x'], [head], [head, body[:-1]], [bytes(len(head)), b''],
                       [head, bytes(100)], [head[:-1], head[-1:] + body],
                       [head, body, b'extra']]
            deadline = time.monotonic() + 10
            while not recorder.frames and time.monotonic() < deadline:
                for message in garbage:
                    await pub.send_multipart(message)
                await pub.send_multipart([head, body])
                await asyncio.sleep(0.05)
            assert recorder.frames, 'no valid frame got through'
            assert np.array_equal(recorder.frames[0][1].array, edge_frame(7))
            assert client.stats['dev'].invalid >= len(garbage)
            assert good is not None and client.is_connected
            server_task.cancel()
        finally:
            if client.is_connected:
                client.disconnect()
            rep.close(linger=0)
            pub.close(linger=0)
            ctx.term()
    run_async(main())
