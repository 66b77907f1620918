"""The server's depth, IR and colour streams, over real ZeroMQ sockets on loopback.

Raw sockets play the client: a REQ asks ``who``, a SUB per endpoint takes the frames, so
what is checked is what goes on the wire (docs/protocol.md), whatever the client does.
"""
import asyncio
import json
import os
import threading
import time

from blinker import Signal
from conftest import LOOPBACK, run_async, wait_until
import numpy as np
import pytest
from streamkinect2 import codec
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.compress import DepthFrameCompressor
from streamkinect2.device import ColorFrame, DepthFrame, IrFrame, MOCK_CALIBRATION
from streamkinect2.mock import MockKinect
from streamkinect2.protocol import (decode_frame_message, FLAG_PAIRED, frame_flags,
                                    header_stream, validate_me_payload)
from streamkinect2.server import Server
import zmq
from zmq.asyncio import Context as AsyncContext

TICK = 125000  # ns a device tick, as libfreenect2's
PERIOD_NS = 33333333
COLOR_CAMERA = dict(MOCK_CALIBRATION['color_camera'], shift_d=863.0, shift_m=52.0,
                    mx_x3y0=0.000449, my_x0y0=0.0048)


class ThreeStreams(object):
    """A stand-in Kinect v2 with depth, IR and colour, emitting captures on demand."""

    on_depth_frame = Signal()
    on_ir_frame = Signal()
    on_color_frame = Signal()
    streams = ('color', 'ir', 'depth')  # any order: the server lists depth first
    device_tick_ns = TICK
    is_running = True

    def __init__(self, name, streams=None):
        self.unique_kinect_id = name
        if streams is not None:
            self.streams = streams
        self.depth_camera = dict(MOCK_CALIBRATION['depth_camera'])
        self.color_camera = dict(COLOR_CAMERA)
        self.ir_to_color = dict(MOCK_CALIBRATION['ir_to_color'])

    @staticmethod
    def stamps(sequence):
        return 10 ** 18 + sequence * PERIOD_NS, 7000 + sequence * 266

    def capture(self, sequence, color=None, color_ticks=30, jpeg=None):
        stamp, ticks = self.stamps(sequence)
        self.on_depth_frame.send(self, depth_frame=DepthFrame(
            depth_of(sequence), sequence=sequence, timestamp_ns=stamp, device_timestamp=ticks))
        self.on_ir_frame.send(self, ir_frame=IrFrame(
            ir_of(sequence), sequence=sequence, timestamp_ns=stamp, device_timestamp=ticks))
        if color is not None or jpeg is not None:
            self.on_color_frame.send(self, color_frame=ColorFrame(
                pixels=color, jpeg=jpeg, shape=None if jpeg is None else (1920, 1080),
                sequence=100000 + sequence, timestamp_ns=stamp + color_ticks * TICK,
                device_timestamp=ticks + color_ticks))


def depth_of(sequence):
    return MockKinect.render_frame(sequence)


def ir_of(sequence):
    ir = MockKinect.render_frame(sequence + 17)
    ir[100:110, :] = 65535  # saturated amplitude
    return ir


def scene(width=1920, height=1080):
    """Return a BGRX test image: ramps and tiles."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[:, :, 0] = x * 255 // width
    pixels[:, :, 1] = y * 255 // height
    pixels[:, :, 2] = 90 + 60 * ((x // 80 + y // 80) % 2)
    pixels[:, :, 3] = 255
    return pixels


class Wire(object):
    """Raw sockets towards one server: a REQ for ``who``, SUB sockets per endpoint."""

    def __init__(self, server):
        self.ctx = AsyncContext()
        self.sub_ctx = zmq.Context()
        self.server = server
        self.req = self.ctx.socket(zmq.REQ)
        self.req.linger = 0
        self.req.connect(server.endpoints[EndpointType.control])
        self.subs = {}
        self.received = {}

    async def who(self):
        await self.req.send_multipart([b'\x03'])
        reply = await asyncio.wait_for(self.req.recv_multipart(), 5)
        assert reply[0] == b'\x04'
        return validate_me_payload(json.loads(reply[1].decode('utf8')))

    def subscribe(self, stream, endpoint):
        sub = self.sub_ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b'')
        sub.connect(endpoint)
        self.subs[stream] = sub
        self.received[stream] = []

    async def pump(self, interval=0.0):
        """Move every message waiting into ``received`` (header, payload bytes)."""
        for stream, sub in self.subs.items():
            while True:
                try:
                    parts = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                header, payload = decode_frame_message(parts, 1 << 22)
                self.received[stream].append((header, bytes(payload)))
        await asyncio.sleep(interval)

    async def pump_until(self, predicate, timeout, what):
        """Pump until *predicate* holds; fail after *timeout* s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError('timed out after {0} s waiting for {1}'.format(
                    timeout, what))
            await self.pump(0.01)

    def close(self):
        self.req.close(0)
        for sub in self.subs.values():
            sub.close(0)
        self.ctx.term()
        self.sub_ctx.term()


def _sequences(received):
    return {header.sequence for header, _ in received}


def test_me_lists_an_endpoint_per_stream_depth_first_with_cameras_and_extrinsics():
    async def main():
        device = ThreeStreams('three')
        legacy = ThreeStreams('legacy', streams=())  # no streams: the reference API's depth
        with Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(device)
            server.add_kinect(legacy)
            wire = Wire(server)
            try:
                me = await wire.who()
            finally:
                wire.close()
        record, old = me['devices']
        assert list(record['endpoints']) == ['depth', 'ir', 'color']
        assert record['streams'] == ['depth', 'ir', 'color']
        endpoints = set(record['endpoints'].values())
        assert len(endpoints) == 3 and all(e.startswith('tcp://127.0.0.1:') for e in endpoints)
        assert record['depth_camera'] == device.depth_camera
        assert record['color_camera'] == COLOR_CAMERA  # libfreenect2's mapping terms too
        assert record['ir_to_color'] == {
            'rotation': list(MOCK_CALIBRATION['ir_to_color']['rotation']),
            'translation': list(MOCK_CALIBRATION['ir_to_color']['translation'])}
        assert list(old['endpoints']) == ['depth'] and 'streams' not in old
    run_async(main())


def test_colour_options_are_checked_when_the_server_is_made():
    for options in ({'color_quality': 0}, {'color_quality': 101}, {'color_quality': '90'},
                    {'color_resolution': 'uhd'}, {'color_resolution': 'QHD'}):
        with pytest.raises(ValueError, match='color_'):
            Server(address=LOOPBACK, announce=False, **options)
    server = Server(address=LOOPBACK, announce=False, color_resolution='qhd')
    assert (server.color_quality, server.color_resolution) == (75, 'qhd')
    assert Server(address=LOOPBACK, announce=False).color_quality == 90


def test_one_capture_three_streams_share_sequence_and_stamp_on_the_wire():
    async def main():
        device = ThreeStreams('capture')
        pixels = scene()
        with Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(device)
            wire = Wire(server)
            try:
                me = await wire.who()
                for stream, endpoint in me['devices'][0]['endpoints'].items():
                    wire.subscribe(stream, endpoint)
                sequence = 0

                def common():
                    return set.intersection(*[_sequences(r) for r in wire.received.values()])
                deadline = time.monotonic() + 20
                while len(common()) < 3 and time.monotonic() < deadline:
                    device.capture(sequence, pixels)
                    sequence += 1
                    await wire.pump(0.08)
                await wire.pump()
                assert len(common()) >= 3, {s: len(r) for s, r in wire.received.items()}
                stats = server.device_stats('capture')
            finally:
                wire.close()
        by_stream = {stream: {h.sequence: (h, p) for h, p in received}
                     for stream, received in wire.received.items()}
        for seq in common():
            stamp, ticks = ThreeStreams.stamps(seq)
            depth, depth_payload = by_stream['depth'][seq]
            ir, ir_payload = by_stream['ir'][seq]
            color, jpeg = by_stream['color'][seq]
            assert [header_stream(h) for h in (depth, ir, color)] == ['depth', 'ir', 'color']
            assert depth.timestamp_ns == ir.timestamp_ns == color.timestamp_ns == stamp
            assert depth.device_timestamp == ir.device_timestamp == ticks
            assert color.device_timestamp == ticks + 30  # the colour camera's own time
            assert depth.flags == 0 and ir.flags == 1  # 2014's depth flags: still 0
            assert color.flags == 2 | FLAG_PAIRED
            assert np.array_equal(codec.decode(depth_payload, 512, 424, depth.codec),
                                  depth_of(seq))
            assert np.array_equal(codec.decode(ir_payload, 512, 424, ir.codec), ir_of(seq))
            assert color.codec == codec.CODEC_JPEG
            codec.check_jpeg(jpeg, color.width, color.height)  # before decoding
            decoded = ColorFrame(jpeg=jpeg, shape=(color.width, color.height)).array
            assert decoded.shape == (1080, 1920, 3)
            error = np.abs(decoded.astype(np.int16) - pixels[:, :, :3]).mean()
            assert error < 2.0, error
        assert set(stats['streams']) == {'depth', 'ir', 'color'}
        assert stats['frames_in'] == stats['streams']['depth']['frames_in'] > 0
        assert stats['streams']['color']['frames_paired'] >= 3
        assert stats['streams']['color']['frames_unpaired'] == 0
    run_async(main(), timeout=90)


def test_qhd_colour_is_960_by_540_and_a_sensor_jpeg_arrives_byte_identical():
    async def main():
        device = ThreeStreams('qhd')
        pixels = scene()
        sensor_jpeg = codec.encode_jpeg(pixels, 85)
        with Server(address=LOOPBACK, announce=False, color_resolution='qhd') as server:
            server.add_kinect(device)
            wire = Wire(server)
            try:
                wire.subscribe('color', server.device_endpoint('qhd', 'color'))
                sequence = 0

                def arrived():
                    kinds = {(h.width, h.height) for h, _ in wire.received['color']}
                    return kinds >= {(960, 540), (1920, 1080)}
                deadline = time.monotonic() + 20
                while not arrived() and time.monotonic() < deadline:
                    device.capture(sequence, pixels)
                    device.capture(sequence + 1, jpeg=sensor_jpeg, color_ticks=10 ** 6)
                    sequence += 2
                    await wire.pump(0.08)
                assert arrived(), wire.received['color'][:2]
            finally:
                wire.close()
        for header, payload in wire.received['color']:
            if header.width == 1920:
                assert payload == sensor_jpeg  # forwarded untouched, never re-encoded
                assert header.flags == frame_flags('color')  # 125 s away: unpaired
                assert header.sequence >= 100000
            else:
                assert header.height == 540
                codec.check_jpeg(payload, 960, 540)
                decoded = ColorFrame(jpeg=payload, shape=(960, 540)).array
                error = np.abs(decoded.astype(np.int16)
                               - codec.halve_bgrx(pixels)[:, :, :3]).mean()
                assert error < 3.0, error
    run_async(main(), timeout=90)


def test_a_2014_style_client_takes_depth_from_a_server_with_three_streams():
    async def main():
        kinect = MockKinect(fps=30)
        assert kinect.streams == ('depth', 'ir', 'color')
        frames = []
        with kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            kinect_id = kinect.unique_kinect_id
            # The 2014 client: who, then a SUB on endpoints.depth, nothing else known.
            wire = Wire(server)
            try:
                me = await wire.who()
                wire.subscribe('depth', me['devices'][0]['endpoints']['depth'])
                await wire.pump_until(lambda: len(wire.received['depth']) >= 3, 15,
                                      'depth frames on the raw socket')
            finally:
                wire.close()
            # The library's client, asked for depth only.
            with Client(server.endpoints[EndpointType.control]) as client:
                def on_add(client, kinect_id):
                    client.enable_depth_frames(kinect_id)

                def on_depth(client, depth_frame, kinect_id):
                    frames.append(depth_frame)
                Client.on_add_kinect.connect(on_add, client)
                Client.on_depth_frame.connect(on_depth, client)
                await wait_until(lambda: len(frames) >= 5, 15, 'depth frames at the client')
                assert client.stats[kinect_id].invalid == 0
        for header, payload in wire.received['depth']:
            assert header.flags == 0 and header.codec == codec.CODEC_GRAD_ZSTD
            pixels = codec.decode(payload, header.width, header.height, header.codec)
            assert np.array_equal(pixels, MockKinect.render_frame(header.sequence))
        for frame in frames:
            assert np.array_equal(frame.array, MockKinect.render_frame(frame.sequence))
    run_async(main(), timeout=90)


def test_the_mock_end_to_end_colour_paired_with_its_capture():
    async def main():
        # Colour 4 ms late, jittering by up to 1.5 ms: always nearest its own capture.
        kinect = MockKinect(fps=20, color_offset=lambda sequence: 32 + (sequence % 3) * 6)
        with kinect, Server(address=LOOPBACK, announce=False) as server:
            server.health_period = 0.1
            server.add_kinect(kinect)
            kinect_id = kinect.unique_kinect_id
            wire = Wire(server)
            try:
                me = await wire.who()
                assert me['devices'][0]['streams'] == ['depth', 'ir', 'color']
                for stream, endpoint in me['devices'][0]['endpoints'].items():
                    wire.subscribe(stream, endpoint)

                def enough():
                    return len(set.intersection(*[
                        _sequences(r) for r in wire.received.values()])) >= 5
                await wire.pump_until(enough, 30, 'five captures on all three streams')
                # Under load the colour worker may drop a frame (WARN): nothing worse.
                await wait_until(lambda: all(
                    server.device_health(kinect_id, s)[1] != 'waiting for the first frame'
                    for s in ('depth', 'ir', 'color')), 10, 'all three streaming')
                levels = [server.device_health(kinect_id, s)[0]
                          for s in ('depth', 'ir', 'color')]
                assert set(levels) <= {'OK', 'WARN'}, levels
                assert server.device_health(kinect_id)[0] == ('WARN' if 'WARN' in levels
                                                              else 'OK')
                with pytest.raises(ValueError):
                    server.device_health(kinect_id, 'audio')
            finally:
                wire.close()
        depth = {h.sequence: h for h, _ in wire.received['depth']}
        ir = {h.sequence: (h, p) for h, p in wire.received['ir']}
        checked = 0
        for header, jpeg in wire.received['color']:
            assert header.flags & FLAG_PAIRED, header
            pixels = ColorFrame(jpeg=jpeg, shape=(header.width, header.height)).array
            assert MockKinect.sequence_of_color(pixels) == header.sequence  # its capture
            if header.sequence in depth and header.sequence in ir:
                assert header.timestamp_ns == depth[header.sequence].timestamp_ns
                ir_header, payload = ir[header.sequence]
                assert ir_header.timestamp_ns == header.timestamp_ns
                assert np.array_equal(codec.decode(payload, 512, 424, ir_header.codec),
                                      MockKinect.render_ir(header.sequence))
                checked += 1
        assert checked >= 5
    run_async(main(), timeout=120)


def test_a_silent_colour_stream_shows_in_the_health_and_depth_stays_ok(caplog):
    async def main():
        device = ThreeStreams('quiet')
        with Server(address=LOOPBACK, announce=False) as server:
            server.health_period = 0.05
            server.add_kinect(device)
            wire = Wire(server)
            for stream in ('ir', 'color'):  # wanted: compressed, and so watched
                wire.subscribe(stream, server.device_endpoint('quiet', stream))
            await wait_until(lambda: all(server._devices['quiet'].compressors[s].active
                                         for s in ('ir', 'color')), 5, 'subscriptions')
            pixels = scene(64, 48)
            sequence = 0
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:  # colour stops after the first second
                device.capture(sequence, pixels if time.monotonic() < deadline - 3 else None)
                sequence += 1
                await asyncio.sleep(0.03)
                if server.device_health('quiet', 'color')[0] == 'ERROR':
                    break
            for stream in ('depth', 'ir'):  # (a frame dropped under load: WARN at worst)
                assert server.device_health('quiet', stream)[0] != 'ERROR'
                assert 'no {0} frame'.format(stream) not in server.device_health(
                    'quiet', stream)[1]
            level, message = server.device_health('quiet', 'color')
            assert level == 'ERROR' and 'no color frame for' in message
            level, message = server.device_health('quiet')
            assert level == 'ERROR' and message.startswith('color: no color frame')
            stats = server.device_stats('quiet')['streams']
            assert stats['color']['seconds_since_frame'] > 2
            assert stats['depth']['seconds_since_frame'] < 1
            wire.close()
    run_async(main(), timeout=60)
    assert any('color: no color frame' in r.getMessage() for r in caplog.records
               if r.name == 'streamkinect2.server' and r.levelname == 'ERROR')


def test_the_streams_served_can_be_limited():
    async def main():
        device = ThreeStreams('limited')
        with Server(address=LOOPBACK, announce=False, streams=['ir', 'depth']) as server:
            server.add_kinect(device)
            assert server.device_streams('limited') == ('depth', 'ir')
            assert server.device_endpoint('limited', 'color') is None
            wire = Wire(server)
            try:
                me = await wire.who()
            finally:
                wire.close()
            assert list(me['devices'][0]['endpoints']) == ['depth', 'ir']
            assert me['devices'][0]['streams'] == ['depth', 'ir']
            assert not ThreeStreams.on_color_frame.has_receivers_for(device)
        for streams in ([], ['audio'], 'depth', ['depth', 'rgb']):
            with pytest.raises(ValueError, match='streams'):
                Server(address=LOOPBACK, announce=False, streams=streams)
    run_async(main())


# --- the server node's stream parameters (real rclpy) ------------------------------------

@pytest.mark.parametrize('params,reason', [
    ({'color_quality': -1}, 'color_quality'), ({'color_quality': 101}, 'color_quality'),
    ({'color_resolution': 'uhd'}, "color_resolution: 'uhd' is not one of: hd, qhd"),
    ({'streams': '[depth,audio]'}, "streams: 'audio' is not one of: depth, ir, color")])
def test_bad_stream_parameters_stop_the_server_node_with_a_reason(params, reason):
    ros_helpers = pytest.importorskip('ros_helpers')
    pytest.importorskip('rclpy')
    out = ros_helpers.failed_start_output('server_node', params, 'streams ')
    assert reason in out


def test_the_server_node_serves_the_streams_asked_for_with_diagnostics_per_stream():
    ros_helpers = pytest.importorskip('ros_helpers')
    rclpy = pytest.importorskip('rclpy')
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from streamkinect2_ros.server_node import ServerNode

    device_id = ros_helpers.unique('streamsdev')
    context = rclpy.Context()
    rclpy.init(context=context)
    node = listener = executor = None
    statuses = []
    try:
        node = ServerNode(context=context, parameter_overrides=[
            Parameter('address', value=LOOPBACK), Parameter('announce', value=False),
            Parameter('server_name', value=ros_helpers.unique('streams ')),
            Parameter('mock_ids', value=[device_id]), Parameter('mock_fps', value=10.0),
            Parameter('streams', value=['color', 'depth']),
            Parameter('color_resolution', value='qhd'), Parameter('color_quality', value=60),
            Parameter('diagnostics_period', value=0.2)])
        server = node._server
        assert server.device_streams(device_id) == ('depth', 'color')
        assert (server.color_quality, server.color_resolution) == (60, 'qhd')
        assert node.device_endpoints('ir') == {device_id: None}
        assert node.device_endpoints('color')[device_id].startswith('tcp://127.0.0.1:')
        listener = rclpy.create_node(ros_helpers.unique('streams_listener_'), context=context)
        listener.create_subscription(DiagnosticArray, '/diagnostics', lambda msg: statuses.extend(
            s for s in msg.status if s.hardware_id == device_id), 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(listener)
        colour = zmq.Context.instance().socket(zmq.SUB)  # colour is compressed while wanted
        colour.linger = 0
        colour.setsockopt(zmq.SUBSCRIBE, b'')
        colour.connect(node.device_endpoints('color')[device_id])

        def values():
            return {v.key: v.value for v in statuses[-1].values} if statuses else {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                values().get('color.health') == 'OK: streaming'
                and int(values().get('color.frames_out', 0)) > 0):
            executor.spin_once(timeout_sec=0.05)
        colour.close(0)
        found = values()
        assert found.get('color.health') == 'OK: streaming', found
        assert found.get('depth.health') == 'OK: streaming', found
        assert int(found['color.frames_out']) > 0 and 'color.frames_paired' in found
        assert found['frames_in'] == found['depth.frames_in']
        assert not any(key.startswith('ir.') for key in found)
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.close()
            node.destroy_node()
        if listener is not None:
            listener.destroy_node()
        context.try_shutdown()


class ListsIrWithoutSignal(object):
    """A device that lists IR but has no signal to emit it with: it cannot be opened."""

    on_depth_frame = Signal()
    streams = ('depth', 'ir')
    is_running = True

    def __init__(self):
        self.unique_kinect_id = 'no-ir-signal'


def _open_fds():
    return len(os.listdir('/proc/self/fd'))


def test_a_device_that_cannot_open_one_stream_leaves_nothing_open_and_the_rest_serves():
    async def main():
        with Server(address=LOOPBACK, announce=False) as server:
            good = ThreeStreams('good')
            server.add_kinect(good)
            threads, fds = threading.active_count(), _open_fds()
            for _ in range(5):  # depth's socket and compressor were open when IR failed
                with pytest.raises(AttributeError, match='on_ir_frame'):
                    server.add_kinect(ListsIrWithoutSignal())
            assert [k.unique_kinect_id for k in server.kinects] == ['good']
            assert not ListsIrWithoutSignal.on_depth_frame.receivers
            await wait_until(lambda: threading.active_count() == threads, 5, 'threads')
            # libzmq closes sockets on its I/O thread: let it finish before counting.
            await wait_until(lambda: _open_fds() <= fds + 2, 5,
                             'descriptors back to {0} (+2)'.format(fds))
            wire = Wire(server)
            try:
                me = await wire.who()
                assert [d['id'] for d in me['devices']] == ['good']
                wire.subscribe('depth', server.device_endpoint('good'))
                sequence = 0

                def emit_and_check():
                    nonlocal sequence
                    good.capture(sequence)
                    sequence += 1
                    return bool(wire.received['depth'])
                await wire.pump_until(emit_and_check, 15, 'depth frames of the good device')
            finally:
                wire.close()
        # And a start with it fails as a whole, leaving nothing open.
        server = Server(address=LOOPBACK, announce=False)
        server.add_kinect(ListsIrWithoutSignal())
        with pytest.raises(AttributeError):
            server.start()
        assert not server.is_running and server.device_endpoint('no-ir-signal') is None
    run_async(main())


def test_a_subscription_flood_on_the_colour_endpoint_is_cut_off_and_colour_flows_on():
    async def main():
        device = ThreeStreams('flooded')
        pixels = scene(320, 240)
        with Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(device)
            endpoint = server.device_endpoint('flooded', 'color')
            wire = Wire(server)
            flooder = wire.sub_ctx.socket(zmq.SUB)
            flooder.linger = 0
            try:
                wire.subscribe('color', endpoint)
                flooder.connect(endpoint)
                rng = np.random.default_rng(10)
                for _ in range(2000):  # 200 KB of prefixes: a client sends under 1 KiB
                    flooder.setsockopt(zmq.SUBSCRIBE, rng.bytes(100))
                sequence = 0

                def cut_and_flowing():
                    nonlocal sequence
                    device.capture(sequence, pixels)
                    sequence += 1
                    stats = server.device_stats('flooded')['streams']
                    return (stats['color']['subscribers_cut'] >= 1
                            and len(wire.received['color']) >= 5)
                await wire.pump_until(cut_and_flowing, 30, 'the flooder cut, colour flowing')
                stats = server.device_stats('flooded')
                assert stats['subscribers_cut'] == 0  # the depth endpoint's: untouched
                assert stats['streams']['ir']['subscribers_cut'] == 0
                count = len(wire.received['color'])
                await wire.pump_until(lambda: device.capture(sequence, pixels) or len(
                    wire.received['color']) >= count + 3, 15, 'colour after the cut')
            finally:
                flooder.close(0)
                wire.close()
    run_async(main(), timeout=90)


def test_depth_compressor_receivers_of_the_reference_api_get_depth_only():
    # Before: DepthFrameCompressor.on_compressed_frame was the signal of every stream, so
    # a receiver connected to it for depth got IR and JPEG messages too.
    async def main():
        device = ThreeStreams('reference')
        got = []

        def receiver(sender, compressed_frame):
            got.append(compressed_frame.header)
        DepthFrameCompressor.on_compressed_frame.connect(receiver)
        try:
            with Server(address=LOOPBACK, announce=False) as server:
                server.add_kinect(device)
                wire = Wire(server)  # colour is compressed while somebody wants it
                wire.subscribe('color', server.device_endpoint('reference', 'color'))
                sequence = 0

                def three_captures():
                    nonlocal sequence
                    device.capture(sequence, scene(64, 48))
                    sequence += 1
                    return server.device_stats('reference')['streams']['color'][
                        'frames_out'] >= 3 and len(got) >= 3
                await wait_until(three_captures, 15, 'three captures compressed')
                wire.close()
        finally:
            DepthFrameCompressor.on_compressed_frame.disconnect(receiver)
        assert {header_stream(header) for header in got} == {'depth'}
    run_async(main())


def test_ir_and_colour_are_compressed_only_while_somebody_subscribes():
    """No subscriber, no JPEG: the mock renders no colour and the server encodes none."""
    async def main():
        kinect = MockKinect(unique_kinect_id='lazy')
        with kinect, Server(address=LOOPBACK, announce=False) as server:
            server.health_period = 0.05
            server.add_kinect(kinect)
            compressors = server._devices['lazy'].compressors
            await wait_until(lambda: compressors['depth'].frames_in > 10, 10, 'depth')
            assert compressors['color'].frames_in == compressors['ir'].frames_in == 0
            assert server.device_health('lazy', 'color')[0] == 'OK'
            # Nobody listens to the mock's colour signal: it renders nothing.
            assert not list(MockKinect.on_color_frame.receivers_for(kinect))
            wire = Wire(server)
            wire.subscribe('color', server.device_endpoint('lazy', 'color'))
            await wire.pump_until(lambda: len(wire.received['color']) >= 3, 10,
                                  'colour once subscribed')
            assert compressors['ir'].frames_in == 0  # IR still unwanted
            wire.subs.pop('color').close(0)  # the last subscriber leaves
            await wait_until(lambda: not compressors['color'].active, 10,
                             'colour idle again')
            count = compressors['color'].frames_in
            await asyncio.sleep(0.3)
            assert compressors['color'].frames_in == count
            wire.close()
    run_async(main(), timeout=60)


def test_a_peer_toggling_its_subscription_neither_stops_colour_nor_grows_anything():
    """Subscribe/unsubscribe churn from a hostile peer: the real subscriber keeps colour."""
    async def main():
        kinect = MockKinect(unique_kinect_id='churn', streams=('depth', 'color'))
        with kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            endpoint = server.device_endpoint('churn', 'color')
            wire = Wire(server)
            wire.subscribe('color', endpoint)
            await wire.pump_until(lambda: len(wire.received['color']) >= 2, 10, 'colour')
            hostile = wire.sub_ctx.socket(zmq.XSUB)
            hostile.linger = 0
            hostile.connect(endpoint)
            for _ in range(500):  # subscribe-all / unsubscribe-all, as fast as it can
                hostile.send(b'\x01')
                hostile.send(b'\x00')
            await asyncio.sleep(0.5)
            before = len(wire.received['color'])
            await wire.pump_until(lambda: len(wire.received['color']) >= before + 10, 10,
                                  'colour after the churn')
            assert server._devices['churn'].compressors['color'].active
            assert server.device_stats('churn')['streams']['color']['subscribers_cut'] == 0
            hostile.close(0)
            wire.close()
    run_async(main(), timeout=60)
