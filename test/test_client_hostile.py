"""The client against hostile servers: real sockets on loopback playing the bad peer.

:py:class:`FakeServer` stands in for a server: a ROUTER socket on the control endpoint
(so that it can also never answer) and a PUB socket per stream (depth; IR and colour
when asked for), served on a thread of its own. The other client test modules import it.
"""
import functools
import io
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time

from conftest import LOOPBACK, run_async, wait_until
import numpy as np
import psutil
import pytest
from streamkinect2 import codec
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.compress import encode_frame_message
from streamkinect2.device import DepthFrame
from streamkinect2.mock import MockKinect
from streamkinect2.protocol import frame_flags, FrameHeader, FrameMessage
from streamkinect2.server import Server
from test_server_client import Recorder
import zmq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dead_endpoint():
    """Return a TCP endpoint on loopback where nothing listens (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return 'tcp://{0}:{1}'.format(LOOPBACK, probe.getsockname()[1])


def frame_parts(sequence):
    """Return the two frames of a valid depth message of the mock's frame *sequence*."""
    message = encode_frame_message(DepthFrame(MockKinect.render_frame(sequence),
                                              sequence=sequence))
    return [bytes(part) for part in message.parts]


def ir_frame(sequence):
    """Return the IR pixels of frame *sequence*: the mock's depth, bits flipped."""
    return MockKinect.render_frame(sequence) ^ np.uint16(0x5A5A)


def ir_parts(sequence):
    """Return the two frames of a valid IR message of frame *sequence*."""
    pixels = ir_frame(sequence)
    header = FrameHeader(codec.DEFAULT_CODEC, pixels.shape[1], pixels.shape[0],
                         frame_flags('ir'), sequence, time.time_ns(), 1000 + sequence, 0)
    return [bytes(part) for part in FrameMessage.build(header, codec.encode(pixels)).parts]


def color_card(width=960, height=540):
    """Return a deterministic (height, width, 3) BGR uint8 test card."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 255 // width), (y * 255 // height), ((x ^ y) & 0xFF)],
                    axis=2).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def color_jpeg(width=960, height=540):
    """Return a JPEG of a deterministic BGR test card of *width* x *height*."""
    return codec.encode_jpeg(color_card(width, height), 80)


def color_header(sequence, width=960, height=540, stream='color', paired=True,
                 codec_id=codec.CODEC_JPEG, timestamp_ns=None):
    """Return the header of a colour message (what a server would send), stamped now."""
    return FrameHeader(codec_id, width, height, frame_flags(stream, paired), sequence,
                       time.time_ns() if timestamp_ns is None else timestamp_ns,
                       2000 + sequence, 0)


def color_parts(sequence, jpeg=None, **header):
    """Return the two frames of a colour message of *jpeg* (default: a valid qhd one)."""
    jpeg = color_jpeg() if jpeg is None else jpeg
    message = FrameMessage.build(color_header(sequence, **header), jpeg)
    return [bytes(part) for part in message.parts]


#: The valid message of each stream for a frame sequence number.
STREAM_PARTS = {'depth': frame_parts, 'ir': ir_parts, 'color': color_parts}


class FakeServer(object):
    """A stand-in server on loopback whose replies the test decides.

    ``reply(server, frames)`` returns the frames to answer a request with, or None to
    never answer it (default: a valid ``me`` of :py:attr:`device_ids`). While
    :py:attr:`streaming` is set, a valid message of each of *streams* (default depth
    only; depth, IR and colour share their sequence number) goes out on the stream's
    PUB socket every *frame_period* s, but for the streams in :py:attr:`paused`.
    :py:meth:`send` puts any message on a stream's socket. ``requests`` counts the
    requests, ``peers`` the distinct REQ sockets that sent them. Sockets and thread are
    released by :py:meth:`close`.
    """

    def __init__(self, reply=None, frame_period=0.02, depth_bind='tcp://' + LOOPBACK,
                 streams=('depth',)):
        """Bind the sockets and start the thread."""
        self.reply = reply if reply is not None else FakeServer.me_reply
        self.device_ids = ['dev']
        self.requests = 0
        self.peers = set()
        self.streaming = threading.Event()
        self.paused = set()
        self.sent_frames = 0
        self._frame_period = frame_period
        self._outbox = queue.Queue()
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._pubs = {stream: self._ctx.socket(zmq.PUB) for stream in streams}
        self._pub = self._pubs['depth']
        for sock in [self._router] + list(self._pubs.values()):
            sock.linger = 0
        self.endpoint = 'tcp://{0}:{1}'.format(
            LOOPBACK, self._router.bind_to_random_port('tcp://' + LOOPBACK))
        if depth_bind.startswith('tcp://'):
            self.depth_endpoint = '{0}:{1}'.format(
                depth_bind, self._pub.bind_to_random_port(depth_bind))
        else:
            self._pub.bind(depth_bind)
            self.depth_endpoint = depth_bind
        #: The endpoint of each stream, as ``me`` names them.
        self.stream_endpoints = {'depth': self.depth_endpoint}
        for stream, pub in self._pubs.items():
            if stream != 'depth':
                self.stream_endpoints[stream] = 'tcp://{0}:{1}'.format(
                    LOOPBACK, pub.bind_to_random_port('tcp://' + LOOPBACK))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='FakeServer', daemon=True)
        self._thread.start()

    def me(self, devices=None, **overrides):
        """Return the frames of a ``me`` reply (*devices*: records; default: ours)."""
        if devices is None:
            devices = [{'id': kinect_id, 'endpoints': dict(self.stream_endpoints)}
                       for kinect_id in self.device_ids]
        payload = {'version': 1, 'name': 'fake', 'endpoints': {'control': self.endpoint},
                   'devices': devices}
        payload.update(overrides)
        return [b'\x04', json.dumps(payload, separators=(',', ':')).encode('utf8')]

    def me_reply(self, frames):
        """Answer ``who`` with a valid ``me``, ``ping`` with ``pong``."""
        return [b'\x02'] if frames[0] == b'\x01' else self.me()

    def send(self, stream, parts):
        """Send the message *parts* on the PUB socket of *stream* (from the thread)."""
        self._outbox.put((stream, parts))

    def _run(self):
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        sequence = 0
        next_frame = time.monotonic()
        while not self._stop.is_set():
            while not self._outbox.empty():
                stream, parts = self._outbox.get()
                self._pubs[stream].send_multipart(parts)
            timeout = max(0.0, next_frame - time.monotonic()) if self.streaming.is_set() \
                else 0.05
            if poller.poll(timeout * 1000):
                identity, empty, *frames = self._router.recv_multipart()
                self.requests += 1
                self.peers.add(identity)
                answer = self.reply(self, frames)
                if answer is not None:
                    self._router.send_multipart([identity, empty] + list(answer))
            if self.streaming.is_set() and time.monotonic() >= next_frame:
                sequence += 1
                for stream, pub in self._pubs.items():
                    if stream not in self.paused:
                        pub.send_multipart(STREAM_PARTS[stream](sequence))
                self.sent_frames += 1
                next_frame = time.monotonic() + self._frame_period

    def close(self):
        """Stop the thread and close the sockets."""
        self._stop.set()
        self._thread.join(5.0)
        self._router.close(linger=0)
        for pub in self._pubs.values():
            pub.close(linger=0)
        self._ctx.term()

    def __enter__(self):
        """Return the running server."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Close the server."""
        self.close()


def fast_client(endpoint, **attributes):
    """Return a client with short heartbeat and response timeout."""
    client = Client(endpoint)
    client.heartbeat_period = 20
    client.response_timeout = 500
    for name, value in attributes.items():
        setattr(client, name, value)
    return client


# --- receivers ----------------------------------------------------------------------

@pytest.mark.parametrize('signal_name', ['on_depth_frame', 'on_add_kinect'])
def test_a_raising_receiver_stops_neither_the_stream_nor_the_other_receivers(caplog,
                                                                             signal_name):
    """Issue 8.1: an exception in one receiver must not kill the device's stream."""
    async def main():
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            client = Client(server.endpoints[EndpointType.control])
            frames = []

            def explode(sender, **kwargs):
                raise RuntimeError('a receiver bug')
            getattr(Client, signal_name).connect(explode, client, weak=False)
            Client.on_add_kinect.connect(
                lambda c, kinect_id: c.enable_depth_frames(kinect_id), client, weak=False)
            Client.on_depth_frame.connect(
                lambda c, depth_frame, kinect_id: frames.append(depth_frame), client,
                weak=False)
            client.connect()
            try:
                await wait_until(lambda: len(frames) >= 15, 15,
                                 'frames despite a raising receiver')
                assert client.stats[kinect.unique_kinect_id].received >= 15
            finally:
                client.disconnect()
    run_async(main())
    assert 'a receiver bug' in caplog.text


# --- control: who/me --------------------------------------------------------------

BAD_REPLIES = {
    'error': [b'\x00', b'{"reason": "go away"}'],
    'invalid JSON': [b'\x04', b'{"version": 1, "name": '],
    'oversized (100 KiB)': [b'\x04', json.dumps({'x': 'y' * 100000}).encode()],
    'oversized (2 MiB)': [b'\x04', b'{' + b' ' * (2 << 20) + b'}'],
    'wrong version': [b'\x04', json.dumps({'version': 2, 'name': 'x'}).encode()],
}


@pytest.mark.parametrize('kind', sorted(BAD_REPLIES))
def test_a_server_whose_who_exchange_fails_is_left(kind):
    """Issue 8.7: connected but never identified, for ever, is not an outcome."""
    async def main():
        with FakeServer(lambda server, frames: BAD_REPLIES[kind]) as fake:
            client = fast_client(fake.endpoint)
            events = Recorder(client)
            client.connect()
            try:
                await wait_until(lambda: not client.is_connected, 5, 'the client to give up')
            finally:
                if client.is_connected:
                    client.disconnect()
            assert events.names() == [] and client.server_name is None
            assert fake.requests == 1  # it gave up at once: no heartbeats after
    run_async(main())


def test_a_me_with_a_thousand_devices_is_capped():
    """Issue 8.8: a `me` may not make the client open a socket per listed device."""
    depth = dead_endpoint()

    def reply(server, frames):
        return server.me([{'id': 'd{0:04d}'.format(i), 'endpoints': {'depth': depth}}
                          for i in range(1000)])

    async def main():
        process = psutil.Process()
        with FakeServer(reply) as fake:
            client = fast_client(fake.endpoint)
            events = Recorder(client)
            fds = process.num_fds()
            client.connect()
            try:
                await wait_until(lambda: 'connect' in events.names(), 5, 'identification')
                await wait_until(lambda: fake.requests >= 5, 5, 'heartbeats')
                assert 0 < len(client.kinect_ids) <= 64
                assert events.names().count('add') == len(client.kinect_ids)
                assert set(client.stats) == set(client.kinect_ids)
                assert process.num_fds() - fds < 200
                assert client.is_connected
            finally:
                client.disconnect()
    run_async(main())


def test_device_ids_that_keep_changing_leave_nothing_behind():
    """Issue 8.8: stats and sockets of removed devices go; none survive disconnect()."""
    def reply(server, frames):
        server.device_ids = ['rotating{0}'.format(server.requests)]
        return server.me()

    async def main():
        process = psutil.Process()
        with FakeServer(reply) as fake:
            client = fast_client(fake.endpoint)
            events = Recorder(client)
            client.connect()
            try:
                await wait_until(lambda: fake.requests >= 20, 10, 'twenty device lists')
                fds = process.num_fds()
                await wait_until(lambda: fake.requests >= 220, 20, '200 more')
                assert events.names().count('add') >= 200
                assert len(client.stats) <= 1
                assert set(client.stats) <= set(client.kinect_ids)
                assert process.num_fds() - fds < 20
            finally:
                client.disconnect()
            assert client.stats == {} and client.kinect_ids == []
    run_async(main())


def test_me_cannot_redirect_the_client(tmp_path):
    """Issue 8.11: only tcp:// to the host connected to, unless configured otherwise."""
    with FakeServer() as elsewhere, FakeServer() as fake:
        port = fake.depth_endpoint.rsplit(':', 1)[1]
        ipc = 'ipc://{0}'.format(tmp_path / 'depth')
        fake.reply = lambda server, frames: server.me([
            # Another loopback address: where the PUB is not bound, yet on this machine.
            {'id': 'far', 'endpoints': {'depth': 'tcp://127.0.0.2:{0}'.format(port)}},
            {'id': 'local', 'endpoints': {'depth': ipc}}],
            endpoints={'control': elsewhere.endpoint})
        fake.streaming.set()

        async def main():
            client = fast_client(fake.endpoint)
            events = Recorder(client, enable=False)
            client.connect()
            try:
                await wait_until(lambda: len(client.kinect_ids) == 2, 5, 'device list')
                assert client.endpoints[EndpointType.control] == fake.endpoint
                with pytest.raises(ValueError, match='ipc'):
                    client.enable_depth_frames('local')
                # Followed at the host connected to, not at the one named.
                client.enable_depth_frames('far')
                await wait_until(lambda: events.frames, 10, 'frames from the right host')
                client.disconnect()
                client.connect()
                await wait_until(lambda: 'connect' in events.names()[1:], 5, 'reconnection')
            finally:
                client.disconnect()
            assert elsewhere.requests == 0
        run_async(main())

    # Configured otherwise: the endpoints are followed as the server names them.
    with FakeServer(depth_bind='ipc://{0}'.format(tmp_path / 'trusted')) as fake:
        fake.streaming.set()

        async def trusted():
            client = fast_client(fake.endpoint, follow_endpoints=True)
            events = Recorder(client)
            client.connect()
            try:
                await wait_until(lambda: events.frames, 10, 'frames over ipc')
            finally:
                client.disconnect()
        run_async(trusted())


# --- depth ------------------------------------------------------------------------

SENDER = r"""
import sys, time
import zmq
sys.path.insert(0, sys.argv[1])
from test_client_hostile import frame_parts
ctx = zmq.Context()
pub = ctx.socket(zmq.XPUB)
pub.linger = 0
print(pub.bind_to_random_port('tcp://127.0.0.1'), flush=True)


def subscribed(timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pub.poll(10) and pub.recv() == b'\x01':
            return


def stream(first, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        first += 1
        pub.send_multipart(frame_parts(first))
        time.sleep(0.02)


big = bytearray(200 << 20)
big[::4096] = b'x' * len(big[::4096])  # every page touched
subscribed(20)
for round in range(1, 4):
    pub.send_multipart([frame_parts(0)[0], big], copy=False)
    stream(round * 1000, 0.5)
    subscribed(3)  # the client subscribes again once it sees the stream stopped
stream(4000, 20)
"""


def test_an_oversized_depth_message_is_never_allocated():
    """Issue 8.9: a 200 MiB depth message may not cost the client 200 MiB."""
    sender = subprocess.Popen(
        [sys.executable, '-c', SENDER, os.path.join(REPO, 'test')], stdout=subprocess.PIPE,
        text=True, env=dict(os.environ, PYTHONPATH=REPO))
    peak = []
    sampling = threading.Event()

    def sample():
        me = psutil.Process()
        while not sampling.is_set():
            peak.append(me.memory_info().rss)
            time.sleep(0.001)
    try:
        depth = 'tcp://{0}:{1}'.format(LOOPBACK, int(sender.stdout.readline()))
        with FakeServer(lambda server, frames: server.me(
                [{'id': 'dev', 'endpoints': {'depth': depth}}])) as fake:
            async def main():
                client = fast_client(fake.endpoint, stall_timeout=300)
                events = Recorder(client)
                base = psutil.Process().memory_info().rss
                sampler = threading.Thread(target=sample, name='rss-sampler')
                sampler.start()
                client.connect()
                try:
                    await wait_until(lambda: any(f.sequence > 4000 for _, f in events.frames),
                                     30, 'frames after the third oversized message')
                finally:
                    sampling.set()
                    sampler.join()
                    client.disconnect()
                growth = (max(peak) - base) / 2 ** 20
                assert growth < 64, 'RSS grew by {0:.0f} MiB'.format(growth)
            run_async(main())
    finally:
        sampling.set()
        sender.kill()
        sender.wait(10)
        sender.stdout.close()


def test_a_stream_that_stops_while_the_server_answers_is_reported(caplog):
    """A device that stops delivering while its server is alive: a warning, not silence."""
    caplog.set_level(logging.INFO, logger='streamkinect2')

    async def main():
        with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
            server.add_kinect(kinect)
            client = Client(server.endpoints[EndpointType.control])
            client.stall_timeout = 300
            events = Recorder(client)
            client.connect()
            kinect_id = kinect.unique_kinect_id
            try:
                await wait_until(lambda: len(events.frames) >= 5, 10, 'frames')
                assert not client.stats[kinect_id].stalled
                kinect.stop()
                await wait_until(lambda: client.stats[kinect_id].stalled, 5, 'a stall')
                await wait_until(lambda: 'No depth frames' in caplog.text, 5, 'a warning')
                assert client.is_connected
                kinect.start()
                await wait_until(lambda: not client.stats[kinect_id].stalled, 5, 'resumed')
                await wait_until(lambda: 'resumed' in caplog.text, 5, 'the news')
            finally:
                client.disconnect()
    run_async(main())
    warnings = [r for r in caplog.records if 'No depth frames' in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


# --- colour: what a JPEG's header must tell before anything is decoded --------------

def jpeg_segments(jpeg):
    """Return the segments of *jpeg* as ``(marker, start, end)``, SOI and EOI included.

    A scan's segment is its header and its entropy-coded data (up to the next marker
    that is not a restart marker).
    """
    segments = [(0xD8, 0, 2)]
    at = 2
    while at < len(jpeg):
        marker = jpeg[at + 1]
        if marker == 0xD9:
            segments.append((marker, at, at + 2))
            break
        end = at + 2 + int.from_bytes(jpeg[at + 2:at + 4], 'big')
        if marker == 0xDA:
            end = jpeg.index(b'\xff', end)
            while jpeg[end + 1] == 0 or 0xD0 <= jpeg[end + 1] <= 0xD7:
                end = jpeg.index(b'\xff', end + 2)
        segments.append((marker, at, end))
        at = end
    return segments


def _first(jpeg, marker):
    return next(start for m, start, _ in jpeg_segments(jpeg) if m == marker)


def with_frame(jpeg, marker, precision=8):
    """Return baseline *jpeg* with another start-of-frame *marker* and sample *precision*."""
    at = _first(jpeg, 0xC0)
    return (jpeg[:at + 1] + bytes([marker]) + jpeg[at + 2:at + 4] + bytes([precision])
            + jpeg[at + 5:])


def with_scan_of_one_component(jpeg):
    """Return *jpeg* (three components, one scan) whose scan names its first component only.

    A sequential JPEG may carry its components in scans of their own; a decoder then
    keeps the whole image and works through every scan.
    """
    at = _first(jpeg, 0xDA)
    end = at + 2 + int.from_bytes(jpeg[at + 2:at + 4], 'big')
    assert jpeg[at + 4] == 3
    return jpeg[:at] + b'\xff\xda\x00\x08\x01' + jpeg[at + 5:at + 7] + jpeg[end - 3:]


def pillow_jpeg(mode='RGB', width=960, height=540, **options):
    """Return the test card as Pillow saves it in *mode* (``L``, ``CMYK``...) as JPEG."""
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(color_card(width, height)[:, :, ::-1]).convert(mode).save(
        out, 'JPEG', quality=80, **options)
    return out.getvalue()


def progressive_jpeg(more_scans=0, width=960, height=540):
    """Return the test card as a progressive JPEG with *more_scans* scans added.

    Each added scan repeats one of its scans that holds nothing (a dozen bytes): a
    decoder goes through the whole image for each (measured: 50000 of them, 640 KB,
    took simplejpeg 7.8 s at 1920 x 1080).
    """
    jpeg = pillow_jpeg(width=width, height=height, progressive=True)
    empty = min(((start, end) for marker, start, end in jpeg_segments(jpeg)
                 if marker == 0xDA), key=lambda scan: scan[1] - scan[0])
    assert empty[1] - empty[0] < 16 and jpeg.endswith(b'\xff\xd9')
    return jpeg[:-2] + jpeg[empty[0]:empty[1]] * more_scans + jpeg[-2:]


@functools.lru_cache(maxsize=1)
def refused_jpegs():
    """Return ``{kind: (jpeg, word of the reason)}``: JPEGs of the qhd card to refuse.

    Each is a whole JPEG of the frame header's size: what the checks before already
    made sure of says nothing about these.
    """
    baseline = color_jpeg()
    return {
        'progressive': (progressive_jpeg(), 'progressive'),
        'progressive, 20000 scans more': (progressive_jpeg(20000), 'progressive'),
        '12-bit samples': (with_frame(baseline, 0xC1, precision=12), '12-bit'),
        'lossless': (with_frame(baseline, 0xC3), 'lossless'),
        'arithmetic-coded': (with_frame(baseline, 0xC9), 'arithmetic'),
        'a scan per component': (with_scan_of_one_component(baseline), 'scan'),
    }


class ColourReceiver(object):
    """A client of a FakeServer streaming depth and colour, recording the colour frames.

    ``count`` counts them; ``frames`` keeps them unless *keep* is false.
    """

    def __init__(self, fake, keep=True):
        """Make the client; its colour is enabled as the device appears."""
        self.client = fast_client(fake.endpoint)
        self.frames = []
        self.count = 0
        self.keep = keep
        Client.on_add_kinect.connect(self.on_add, self.client)
        Client.on_color_frame.connect(self.on_color, self.client)

    def on_add(self, client, kinect_id):
        client.enable_color_frames(kinect_id)

    def on_color(self, client, color_frame, kinect_id):
        self.count += 1
        if self.keep:
            self.frames.append(color_frame)

    def stats(self):
        return self.client.stream_stats('dev', 'color')


@pytest.mark.parametrize('kind', sorted(refused_jpegs()))
def test_a_jpeg_whose_decoding_its_header_cannot_bound_is_refused_unread(kind, caplog):
    """Progressive, many scans, 12-bit, lossless, arithmetic: dropped with the reason.

    The protocol carries baseline JPEG; a progressive one costs a pass over the image per
    scan (a decompression bomb for the CPU: seconds for one frame of well under the size
    limit), a 12-bit one no decoder here reads. Refused from the header alone, counted,
    and the colour stream goes on.
    """
    jpeg, reason = refused_jpegs()[kind]
    caplog.set_level(logging.WARNING, logger='streamkinect2')

    async def main():
        with FakeServer(streams=('depth', 'color')) as fake:
            fake.streaming.set()
            receiver = ColourReceiver(fake)
            receiver.client.connect()
            try:
                await wait_until(lambda: len(receiver.frames) >= 2, 10, 'colour frames')
                stats = receiver.stats()
                for sequence in range(100000, 100003):
                    invalid = stats.invalid
                    fake.send('color', color_parts(sequence, jpeg))
                    await wait_until(lambda: stats.invalid == invalid + 1, 5,
                                     'the JPEG counted invalid')
                count = len(receiver.frames)
                await wait_until(lambda: len(receiver.frames) >= count + 3, 10,
                                 'colour frames after them')
                assert all(f.jpeg == color_jpeg() for f in receiver.frames)
                assert receiver.client.is_connected
            finally:
                receiver.client.disconnect()
    run_async(main())
    warnings = [r.getMessage() for r in caplog.records if 'invalid colour' in r.getMessage()]
    assert warnings and reason in warnings[0], warnings


def test_greyscale_cmyk_and_unsubsampled_jpegs_are_taken_and_decode_to_bgr():
    """What a JPEG decoder does right is taken: decoded to BGR, grey in all three channels.

    A colour camera whose JPEG is greyscale (one component) still has a colour topic:
    its ``bgr8`` Image keeps its encoding, the grey in each channel, as a camera driver
    publishing bgr8 would.
    """
    card = color_card().astype(np.int16)
    grey = (card @ np.array([0.114, 0.587, 0.299]))  # BT.601 luma of BGR
    jpegs = {'greyscale': pillow_jpeg('L'), 'CMYK': pillow_jpeg('CMYK'),
             '4:4:4': pillow_jpeg(subsampling=0)}
    delivered = []

    async def main():
        with FakeServer(streams=('depth', 'color')) as fake:
            fake.streaming.set()
            receiver = ColourReceiver(fake)
            delivered.append(receiver)
            receiver.client.connect()
            try:
                await wait_until(lambda: receiver.frames, 10, 'colour frames')
                for sequence, jpeg in enumerate(jpegs.values(), 100000):
                    fake.send('color', color_parts(sequence, jpeg))
                await wait_until(lambda: len([f for f in receiver.frames
                                              if f.sequence >= 100000]) == len(jpegs), 5,
                                 'every JPEG delivered')
                assert receiver.stats().invalid == 0
            finally:
                receiver.client.disconnect()
    run_async(main())
    got = {name: f.array for name, f in zip(jpegs, [f for f in delivered[0].frames
                                                    if f.sequence >= 100000])}
    for name, pixels in got.items():
        assert pixels.shape == (540, 960, 3) and pixels.dtype == np.uint8, name
    assert (got['greyscale'] == got['greyscale'][:, :, :1]).all()
    assert np.abs(got['greyscale'][:, :, 0] - grey).mean() < 3
    for name in ('CMYK', '4:4:4'):
        assert np.abs(got[name] - card).mean() < 3, name


def test_colour_of_ever_new_sizes_cannot_grow_a_registration_without_bound():
    """A library user registering received colour: each size costs tables (12 MiB at hd).

    Sizes with the colour camera's aspect are scaled copies a Registration takes; a
    server that sends a new one with every frame may not make it keep a table for each.
    Measured as process RSS: 24 sizes grew it by 240 MiB (a table each, kept).
    """
    from streamkinect2.calibration import Calibration
    from streamkinect2.registration import Registration
    registration = Registration(Calibration.default())
    sizes = [(80 * k, 45 * k) for k in range(1, 25)]
    jpegs = [codec.encode_jpeg(color_card(*size), 50) for size in sizes]
    done = []
    rss = []

    def register(client, color_frame, kinect_id):
        if color_frame.sequence >= 100000:
            rect = registration.color_rect(color_frame.array, registration.hd)
            assert rect.shape == (1080, 1920, 3)
            done.append(color_frame.sequence)
            rss.append(psutil.Process().memory_info().rss)

    async def main():
        with FakeServer(streams=('depth', 'color')) as fake:
            fake.streaming.set()
            receiver = ColourReceiver(fake, keep=False)
            Client.on_color_frame.connect(register, receiver.client)
            receiver.client.connect()
            try:
                await wait_until(lambda: receiver.count, 10, 'colour frames')
                for sequence, (size, jpeg) in enumerate(zip(sizes, jpegs), 100000):
                    fake.send('color', color_parts(sequence, jpeg, width=size[0],
                                                   height=size[1]))
                    await wait_until(lambda: sequence in done, 10, 'the frame registered')
            finally:
                receiver.client.disconnect()
    run_async(main())
    growth = (max(rss) - rss[0]) / 2 ** 20
    assert growth < 96, 'RSS grew by {0:.0f} MiB'.format(growth)
