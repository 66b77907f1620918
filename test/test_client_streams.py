"""The client receives IR and colour beside depth: real sockets on loopback.

The streams come from :py:class:`~test_client_hostile.FakeServer` (a PUB socket per
stream, messages built as a server builds them), the hostile ones too; the last test
runs against the real server and mock when they serve IR and colour.
"""
import logging
import threading
import time

from conftest import LOOPBACK, run_async, wait_until
import numpy as np
import pytest
from streamkinect2 import codec
from streamkinect2.client import (Client, max_color_payload_bytes,
                                  max_depth_payload_bytes)
from streamkinect2.common import EndpointType
from streamkinect2.device import ColorFrame, IrFrame, STREAMS
from streamkinect2.mock import MockKinect
from streamkinect2.protocol import FRAME_HEADER_SIZE
from streamkinect2.server import Server
from streamkinect2.tools import receive_main
from test_client_hostile import (color_jpeg, color_parts, FakeServer, fast_client,
                                 frame_parts, ir_frame, ir_parts)


class Streams(object):
    """Records the frames of every stream of a client; enables *enable* on each device."""

    def __init__(self, client, enable=STREAMS):
        """Connect to the client's signals."""
        self.client = client
        self.enable = enable
        self.frames = {stream: [] for stream in STREAMS}
        self.added = []
        Client.on_add_kinect.connect(self.on_add, client)
        Client.on_depth_frame.connect(self.on_depth, client)
        Client.on_ir_frame.connect(self.on_ir, client)
        Client.on_color_frame.connect(self.on_color, client)

    def on_add(self, client, kinect_id):
        self.added.append(kinect_id)
        for stream in self.enable:
            getattr(client, 'enable_{0}_frames'.format(stream))(kinect_id)

    def on_depth(self, client, kinect_id, depth_frame):
        self.frames['depth'].append((kinect_id, depth_frame))

    def on_ir(self, client, kinect_id, ir_frame):
        self.frames['ir'].append((kinect_id, ir_frame))

    def on_color(self, client, kinect_id, color_frame):
        self.frames['color'].append((kinect_id, color_frame))

    def count(self, stream):
        return len(self.frames[stream])


def all_streams(**kwargs):
    """Return a streaming FakeServer with depth, IR and colour."""
    fake = FakeServer(streams=STREAMS, **kwargs)
    fake.streaming.set()
    return fake


# --- the streams ----------------------------------------------------------------------

def test_ir_and_colour_arrive_beside_depth_and_colour_is_never_decoded():
    async def main():
        with all_streams() as fake:
            client = fast_client(fake.endpoint)
            seen = Streams(client)
            client.connect()
            try:
                await wait_until(lambda: all(seen.count(s) >= 5 for s in STREAMS), 10,
                                 'frames of every stream')
                _, ir = seen.frames['ir'][-1]
                assert isinstance(ir, IrFrame) and ir.shape == (512, 424)
                assert np.array_equal(ir.array, ir_frame(ir.sequence))  # lossless
                assert ir.device_timestamp == 1000 + ir.sequence
                kinect_id, colour = seen.frames['color'][-1]
                assert kinect_id == 'dev' and isinstance(colour, ColorFrame)
                # Handed over as received: the JPEG bytes, nothing decoded.
                assert all(f.pixels is None for _, f in seen.frames['color'])
                assert colour.jpeg == color_jpeg() and colour.data is colour.jpeg
                assert colour.shape == (960, 540) and colour.paired
                assert colour.device_timestamp == 2000 + colour.sequence
                # Decoded when asked for, and only then.
                assert colour.array.shape == (540, 960, 3) and colour.pixels is not None
                sequences = {s: {f.sequence for _, f in seen.frames[s]} for s in STREAMS}
                assert sequences['depth'] & sequences['ir'] & sequences['color']
                for stream in STREAMS:
                    stats = client.stream_stats('dev', stream)
                    assert stats.received >= 5 and stats.invalid == 0
                    assert stats.payload_bytes > 0 and stats.last_sequence is not None
                # stats[] stays depth, for code written before IR and colour.
                assert client.stats['dev'] is client.stream_stats('dev', 'depth')
                colour_stats = client.stream_stats('dev', 'color')
                assert colour_stats.raw_bytes == 960 * 540 * 3 * colour_stats.received
            finally:
                client.disconnect()
            assert all(client.stream_stats('dev', s) is None for s in STREAMS)
    run_async(main())


def test_enabling_what_a_device_does_not_offer_is_refused():
    async def main():
        with FakeServer(streams=('depth', 'ir')) as fake:
            fake.streaming.set()
            client = fast_client(fake.endpoint)
            seen = Streams(client, enable=('depth',))
            client.connect()
            try:
                await wait_until(lambda: seen.count('depth') >= 2, 10, 'depth frames')
                assert client.stream_stats('dev', 'ir') is None  # never enabled
                assert client.stream_stats('nobody', 'depth') is None
                with pytest.raises(ValueError, match='unknown stream'):
                    client.stream_stats('dev', 'sound')
                with pytest.raises(ValueError, match='no color endpoint'):
                    client.enable_color_frames('dev')
                for name in ('enable_ir_frames', 'enable_color_frames', 'disable_ir_frames',
                             'disable_color_frames'):
                    with pytest.raises(ValueError, match='no device'):
                        getattr(client, name)('nobody')
                client.disable_color_frames('dev')  # not enabled: nothing to do
                client.enable_ir_frames('dev')
                client.enable_ir_frames('dev')  # twice: one socket
                assert client.is_enabled('dev', 'ir')
                await wait_until(lambda: seen.count('ir') >= 3, 10, 'IR frames')
                client.disable_ir_frames('dev')
                assert not client.is_enabled('dev', 'ir')
                # No more IR while depth goes on (what was queued may still come).
                await wait_until(lambda: seen.count('depth') > 0, 1, 'nothing')
                ir_count, depth_count = seen.count('ir'), seen.count('depth')
                await wait_until(lambda: seen.count('depth') >= depth_count + 20, 10,
                                 'twenty more depth frames')
                assert seen.count('ir') <= ir_count + 4  # at most the socket's queue
                # Its counters stay, until the device goes.
                assert client.stream_stats('dev', 'ir').received >= 3
            finally:
                client.disconnect()
    run_async(main())


@pytest.mark.parametrize('endpoints', [
    {'ir': 5}, {'ir': ['tcp://127.0.0.1:1']}, {'ir': ''}, {'ir': 'ipc:///tmp/x'},
    {'ir': 'tcp://127.0.0.1:99999'}])
def test_a_record_whose_ir_endpoint_is_not_followed_is_refused(endpoints):
    """A me record's IR endpoint follows the depth rules: no redirection, no garbage."""
    def reply(server, frames):
        return server.me([{'id': 'dev', 'endpoints': dict(
            endpoints, depth=server.depth_endpoint)}])

    async def main():
        with FakeServer(reply) as fake:
            client = fast_client(fake.endpoint)
            seen = Streams(client, enable=())
            client.connect()
            try:
                await wait_until(lambda: seen.added, 5, 'the device')
                with pytest.raises(ValueError, match='ir endpoint'):
                    client.enable_ir_frames('dev')
                client.enable_depth_frames('dev')  # the rest of the record is fine
                assert not client.is_enabled('dev', 'ir') and client.is_connected
            finally:
                client.disconnect()
    run_async(main())


def test_stats_of_every_stream_go_with_the_device():
    async def main():
        with all_streams() as fake:
            client = fast_client(fake.endpoint)
            seen = Streams(client)
            client.connect()
            try:
                await wait_until(lambda: all(seen.count(s) >= 2 for s in STREAMS), 10,
                                 'frames of every stream')
                fake.device_ids = ['other']
                await wait_until(lambda: client.kinect_ids == ['other'], 5, 'a new device')
                for stream in STREAMS:
                    assert client.stream_stats('dev', stream) is None
                    assert not client.is_enabled('dev', stream)
                await wait_until(lambda: any(k == 'other' for k, _ in seen.frames['color']),
                                 10, "the new device's colour")
            finally:
                client.disconnect()
    run_async(main())


def test_a_colour_stream_that_stops_is_reported_while_depth_flows(caplog):
    caplog.set_level(logging.INFO, logger='streamkinect2')

    async def main():
        with all_streams() as fake:
            client = fast_client(fake.endpoint, stall_timeout=300)
            seen = Streams(client)
            client.connect()
            try:
                await wait_until(lambda: seen.count('color') >= 2, 10, 'colour frames')
                fake.paused.add('color')
                colour = client.stream_stats('dev', 'color')
                await wait_until(lambda: colour.stalled, 5, 'a colour stall')
                assert 'No colour frames from dev' in caplog.text
                assert not client.stats['dev'].stalled
                assert not client.stream_stats('dev', 'ir').stalled
                fake.paused.clear()
                await wait_until(lambda: not colour.stalled, 5, 'colour again')
                await wait_until(lambda: 'Colour frames from dev resumed' in caplog.text, 5,
                                 'the news')
            finally:
                client.disconnect()
    run_async(main())


# --- hostile colour and IR ----------------------------------------------------------

def _sof_size(jpeg, width, height):
    """Return *jpeg* with its SOF0 header claiming *width* x *height*."""
    at = jpeg.index(b'\xff\xc0')
    return jpeg[:at + 5] + height.to_bytes(2, 'big') + width.to_bytes(2, 'big') + \
        jpeg[at + 9:]


def _hostile():
    jpeg = color_jpeg()
    forged = _sof_size(jpeg, 60000, 60000)
    return {
        # (stream whose socket carries it, message parts)
        'truncated JPEG': ('color', color_parts(1, jpeg[:len(jpeg) // 2])),
        'JPEG cut in its header': ('color', color_parts(1, jpeg[:300])),
        'not a JPEG': ('color', color_parts(1, bytes(range(256)) * 64)),
        'empty JPEG': ('color', color_parts(1, b'')),
        'JPEG claiming 60000x60000': ('color', color_parts(1, forged)),
        'header claiming 60000x60000': ('color', color_parts(1, forged, width=60000,
                                                             height=60000)),
        'JPEG of another size': ('color', color_parts(1, color_jpeg(320, 240))),
        'colour of codec grad-zstd': ('color', color_parts(1, codec_id=1)),
        'IR on the colour endpoint': ('color', ir_parts(1)),
        'depth on the colour endpoint': ('color', frame_parts(1)),
        'colour on the IR endpoint': ('ir', color_parts(1)),
        'depth on the IR endpoint': ('ir', frame_parts(1)),
        'unknown stream id': ('ir', _restream(ir_parts(1), 7)),
        'unknown flags': ('ir', _restream(ir_parts(1), 0x10001)),
        'truncated IR': ('ir', [ir_parts(1)[0], ir_parts(1)[1][:-10]]),
        'IR payload of garbage': ('ir', _garbage_payload(ir_parts(1))),
        'IR header claiming 60000x60000': ('ir', _resize(ir_parts(1), 60000, 60000)),
        'garbage on IR': ('ir', [b'garbage']),
        'garbage on colour': ('color', [b'\xff\xd8\xff', b'\xff\xd9', b'x']),
        'colour on the depth endpoint': ('depth', color_parts(1, width=512, height=424,
                                                              jpeg=color_jpeg(512, 424))),
    }


def _restream(parts, stream_id):
    header = bytearray(parts[0])
    header[12:16] = stream_id.to_bytes(4, 'little')  # flags
    return [bytes(header), parts[1]]


def _resize(parts, width, height):
    header = bytearray(parts[0])
    header[8:10] = width.to_bytes(2, 'little')
    header[10:12] = height.to_bytes(2, 'little')
    return [bytes(header), parts[1]]


def _garbage_payload(parts):
    payload = bytes((i * 7) & 0xFF for i in range(len(parts[1])))
    return [parts[0], payload]


HOSTILE = sorted(_hostile())


@pytest.mark.parametrize('kind', HOSTILE)
def test_hostile_colour_and_ir_messages_are_dropped_and_counted_while_depth_flows(kind):
    """Issue 10: bad colour/IR messages are dropped and counted; depth keeps flowing."""
    stream, parts = _hostile()[kind]

    async def main():
        with all_streams() as fake:
            client = fast_client(fake.endpoint)
            seen = Streams(client)
            client.connect()
            try:
                await wait_until(lambda: all(seen.count(s) >= 2 for s in STREAMS), 10,
                                 'frames of every stream')
                stats = client.stream_stats('dev', stream)
                for _ in range(5):  # one at a time: each one counted
                    invalid = stats.invalid
                    fake.send(stream, parts)
                    await wait_until(lambda: stats.invalid == invalid + 1, 5,
                                     'the message counted invalid')
                counts = {s: seen.count(s) for s in STREAMS}
                await wait_until(lambda: all(seen.count(s) >= counts[s] + 5 for s in STREAMS),
                                 10, 'every stream still flowing')
                for other in STREAMS:
                    if other != stream:
                        assert client.stream_stats('dev', other).invalid == 0
                assert all(f.pixels is None for _, f in seen.frames['color'])
                assert client.is_connected
            finally:
                client.disconnect()
    run_async(main())


def test_hostile_checks_cover_what_the_header_check_cannot_see():
    """The truncated JPEG keeps a readable header: it is the end-of-image check's."""
    jpeg = color_jpeg()
    assert codec.jpeg_size(jpeg[:len(jpeg) // 2]) == (960, 540)  # the header says nothing
    with pytest.raises(codec.CodecError, match='truncated'):
        codec.check_jpeg(jpeg[:len(jpeg) // 2], 960, 540)
    with pytest.raises(codec.CodecError, match='truncated'):
        Client('tcp://127.0.0.1:1').decode_color_message(color_parts(1, jpeg[:-100]))
    # A sensor's JPEG may end in a few bytes of padding after its end-of-image marker.
    frame = Client('tcp://127.0.0.1:1').decode_color_message(
        color_parts(3, jpeg + bytes(16), paired=False))
    assert frame.sequence == 3 and not frame.paired and frame.pixels is None


def test_an_oversized_colour_message_is_refused_by_zeromq_and_the_stream_comes_back():
    """A colour message over the colour limit is never received; the stream recovers."""
    async def main():
        with all_streams() as fake:
            client = fast_client(fake.endpoint, stall_timeout=300,
                                 max_color_pixels=960 * 540)
            limit = max_color_payload_bytes(960 * 540)
            seen = Streams(client)
            client.connect()
            try:
                await wait_until(lambda: seen.count('color') >= 2, 10, 'colour frames')
                subscription = client._subscriptions['color']['dev']
                assert subscription.stream.socket.maxmsgsize == limit
                ir_socket = client._subscriptions['ir']['dev'].stream.socket
                assert ir_socket.maxmsgsize == max_depth_payload_bytes(client.max_frame_pixels)
                stats = client.stream_stats('dev', 'color')
                # At the limit: received, and invalid (not a JPEG of its size).
                fake.send('color', color_parts(1, color_jpeg() + bytes(
                    limit - len(color_jpeg()))))
                await wait_until(lambda: stats.invalid == 1, 5, 'counted invalid')
                # Over it: ZeroMQ drops the connection before allocating anything.
                fake.send('color', color_parts(1, bytes(limit + 1)))
                await wait_until(lambda: client._subscriptions['color'].get('dev')
                                 is not subscription, 10, 'a new subscription')
                count, depth = seen.count('color'), seen.count('depth')
                await wait_until(lambda: seen.count('color') > count + 5, 10, 'colour again')
                assert stats.invalid == 1 and seen.count('depth') > depth
                assert client.is_connected
            finally:
                client.disconnect()
    run_async(main())


def test_the_colour_limit_bounds_the_largest_sensible_jpeg():
    # Uniform noise at quality 100 without subsampling: the largest a baseline JPEG of a
    # frame gets (4.1 bytes a pixel), and still under the limit.
    noise = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    import simplejpeg
    worst = simplejpeg.encode_jpeg(noise, quality=100, colorspace='BGR',
                                   colorsubsampling='444')
    assert len(worst) + FRAME_HEADER_SIZE < max_color_payload_bytes(1920 * 1080) < 9 << 20


# --- the receive tool ---------------------------------------------------------------

def test_receive_reports_every_stream(capsys):
    with all_streams() as fake:
        assert receive_main([fake.endpoint, '--streams', 'all', '--duration', '2',
                             '--interval', '0.5']) == 0
    out = capsys.readouterr().out
    reports = [line for line in out.splitlines() if 'frames/s' in line]
    for stream in STREAMS:
        lines = [line for line in reports if line.startswith('dev {0}:'.format(stream))]
        assert lines and 'invalid 0' in lines[-1] and 'ratio' in lines[-1]
    assert '(color: ' in out and '(ir: ' in out


def test_receive_takes_depth_alone_by_default_and_refuses_unknown_streams(capsys):
    with FakeServer(streams=('depth', 'ir')) as fake:
        fake.streaming.set()
        assert receive_main([fake.endpoint, '--duration', '1.5', '--interval', '0.5']) == 0
        out = capsys.readouterr().out
        assert 'dev depth:' in out and 'dev ir:' not in out
        # Asked for, colour is missing: said, and the rest received.
        assert receive_main([fake.endpoint, '--streams', 'ir,color', '--duration', '1.5',
                             '--interval', '0.5']) == 0
        out = capsys.readouterr().out
        assert 'not receiving color from device dev' in out and 'dev ir:' in out
    with pytest.raises(SystemExit):
        receive_main(['tcp://127.0.0.1:1', '--streams', 'depth,sound'])


# --- the real server ----------------------------------------------------------------

def test_ir_and_colour_from_the_real_server_and_mock():
    streams = getattr(MockKinect(), 'streams', ('depth',))
    if 'color' not in streams or 'ir' not in streams:
        pytest.skip('the mock serves no IR or colour yet')

    async def main():
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            client = Client(server.endpoints[EndpointType.control])
            seen = Streams(client)
            client.connect()
            kinect_id = kinect.unique_kinect_id
            try:
                await wait_until(lambda: all(seen.count(s) >= 5 for s in STREAMS), 20,
                                 'frames of every stream')
                depth = {f.sequence: f for _, f in seen.frames['depth']}
                for _, ir in seen.frames['ir']:
                    if ir.sequence in depth:
                        assert ir.timestamp_ns == depth[ir.sequence].timestamp_ns
                paired = [f for _, f in seen.frames['color'] if f.paired]
                assert paired and all(f.pixels is None for _, f in seen.frames['color'])
                assert seen.frames['color'][-1][1].array.ndim == 3
                for stream in STREAMS:
                    assert client.stream_stats(kinect_id, stream).invalid == 0
            finally:
                client.disconnect()
    run_async(main())


def test_a_colour_frame_asked_for_its_pixels_by_threads_at_once_is_decoded_once(monkeypatch):
    """A node's IOLoop and its registration worker taking one frame: one decoding."""
    import simplejpeg
    from streamkinect2.codec import encode_jpeg

    pixels = np.zeros((48, 64, 4), np.uint8)
    pixels[:, :, 1] = 200
    frame = ColorFrame(jpeg=encode_jpeg(pixels), shape=(64, 48))
    decodings = []
    real_decode = simplejpeg.decode_jpeg
    started = threading.Barrier(4, timeout=10)

    def slow_decode(*args, **kwargs):
        decodings.append(1)
        time.sleep(0.05)  # long enough for every thread to be asking meanwhile
        return real_decode(*args, **kwargs)
    monkeypatch.setattr(simplejpeg, 'decode_jpeg', slow_decode)
    results = []

    def ask():
        started.wait()
        results.append(frame.array)
    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 4 and len(decodings) == 1
    assert all(result is results[0] or np.shares_memory(result, results[0])
               for result in results)
    assert abs(int(results[0][:, :, 1].mean()) - 200) <= 2
