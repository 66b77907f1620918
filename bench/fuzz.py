"""Fuzz a server's control endpoint and a client's depth endpoint; print the counts.

``python bench/fuzz.py [--control N] [--depth N] [--flood MIB] [--seed S]``. Everything
runs on loopback. The server must answer (or, above ZeroMQ's size limit, drop) every
message and keep serving a well-behaved client streaming beside the fuzzer; the client
must drop and count every bad depth message, allocate no more than a frame for any of
them, and keep delivering the good ones. A subscription flood at a server's depth
endpoint (random prefixes, which libzmq would keep) must be cut off, leave the server's
memory flat (RSS) and the well-behaved client streaming.
"""
import argparse
import asyncio
import collections
import gc
import json
import os
import random
import struct
import sys
import time

import numpy as np
import psutil
from streamkinect2 import codec
from streamkinect2.client import Client
from streamkinect2.common import EndpointType
from streamkinect2.compress import encode_frame_message
from streamkinect2.mock import DepthFrame, MockKinect
from streamkinect2.protocol import FRAME_HEADER_FORMAT, FRAME_HEADER_SIZE
from streamkinect2.server import Server
import zmq
from zmq.asyncio import Context as AsyncContext
import zstandard

LOOPBACK = '127.0.0.1'
VALID_CONTROL = [[b'\x01'], [b'\x03'], [b'\x03', b'null'], [b'\x01', b'{}']]


def _random_json(rng, depth=0):
    kind = rng.randrange(7 if depth < 20 else 4)
    if kind == 0:
        return rng.randrange(-2 ** 70, 2 ** 70)
    if kind == 1:
        return ''.join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(20)))
    if kind == 2:
        return rng.choice([None, True, False, 1.5e308, -0.0])
    if kind == 3:
        return {'version': rng.choice([1, 2, '1', None])}
    if kind == 4:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(rng.randrange(100)): _random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def control_message(rng):
    """Return one random or mutated control message (a list of frames)."""
    choice = rng.randrange(8)
    if choice == 0:  # random frames of random bytes
        return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(0, 5))]
    if choice == 1:  # any type byte with random JSON
        return [bytes([rng.randrange(256)]),
                json.dumps(_random_json(rng)).encode('utf8')]
    if choice == 2:  # deep nesting
        depth = rng.choice([15, 16, 17, 100, 5000, 60000])
        return [b'\x03', b'[' * depth + b']' * depth]
    if choice == 3:  # large payloads either side of the limits
        size = rng.choice([64 * 1024 - 2, 64 * 1024 + 1, 500 * 1024] * 3 + [2 * 1024 * 1024])
        return [b'\x03', b'"' + b'a' * size + b'"']
    if choice == 4:  # invalid UTF-8 / truncated JSON
        return [b'\x03', rng.choice([b'\xff\xfe', b'{"a": "\xc3', b'{"a":', b'\x00'])]
    message = [list(m) for m in rng.choice(VALID_CONTROL)]  # mutate a valid message
    for _ in range(rng.randrange(1, 4)):
        frame = rng.randrange(len(message))
        if message[frame] and rng.random() < 0.5:
            message[frame][rng.randrange(len(message[frame]))] = rng.randrange(256)
        else:
            message[frame].append(rng.randrange(256))
    if rng.random() < 0.2:
        message.append([rng.randrange(256)])
    return [bytes(m) for m in message]


async def fuzz_control(endpoint, count, seed, server_alive):
    """Send *count* fuzzed messages to *endpoint*; return a Counter of outcomes."""
    rng = random.Random(seed)
    ctx = AsyncContext()
    counts = collections.Counter()
    req = None
    try:
        for _ in range(count):
            if req is None:
                req = ctx.socket(zmq.REQ)
                req.linger = 0
                req.connect(endpoint)
            message = control_message(rng)
            counts['sent'] += 1
            if not message:
                counts['empty (not sendable)'] += 1
                continue
            await req.send_multipart(message)
            try:
                reply = await asyncio.wait_for(req.recv_multipart(), 1.0)
            except asyncio.TimeoutError:
                # Above ZMQ_MAXMSGSIZE the server drops the connection without a reply.
                counts['dropped by the server'] += 1
                req.close(linger=0)
                req = None
                continue
            kind = {0: 'error', 2: 'pong', 4: 'me'}.get(reply[0][0], 'other')
            counts['answered ' + kind] += 1
            if not server_alive():
                raise AssertionError('the well-behaved client lost the server')
    finally:
        if req is not None:
            req.close(linger=0)
        ctx.term()
    return counts


async def run_control_fuzz(count, seed):
    """Fuzz a live server while a client streams from it; return the outcome counts."""
    with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
        server.add_kinect(kinect)
        client = Client(server.endpoints[EndpointType.control])
        client.heartbeat_period = 100
        client.response_timeout = 3000
        frames = []
        Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                     client, weak=False)
        Client.on_depth_frame.connect(lambda c, depth_frame, kinect_id: frames.append(
            depth_frame.sequence), client, weak=False)
        client.connect()
        try:
            counts = await fuzz_control(server.endpoints[EndpointType.control], count, seed,
                                        lambda: client.is_connected)
            before = len(frames)
            deadline = time.monotonic() + 5
            while len(frames) < before + 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            counts['client frames during fuzzing'] = before
            counts['client still streaming'] = int(len(frames) >= before + 3
                                                   and client.is_connected)
            pong = asyncio.get_running_loop().create_future()
            client.ping(lambda: pong.set_result(True))
            counts['client ping answered after'] = int(await asyncio.wait_for(pong, 5))
        finally:
            if client.is_connected:
                client.disconnect()
    return counts


# --- depth --------------------------------------------------------------------------

def make_bombs():
    """Small zstd frames that claim to decompress to 10 MiB and 200 MiB."""
    compressor = zstandard.ZstdCompressor(level=1)
    return [compressor.compress(bytes(size * 2 ** 20)) for size in (10, 200)]


# Header bytes whose corruption must be detected: all but the free-running fields
# (flags, sequence, timestamps), which a receiver has no way to check.
_CHECKED_HEADER_BYTES = (list(range(struct.calcsize(FRAME_HEADER_FORMAT[:8])))
                         + list(range(FRAME_HEADER_SIZE - 4, FRAME_HEADER_SIZE)))


def depth_message(rng, valid, bombs):
    """Return one malformed depth message, made from the *valid* (header, payload)."""
    header, payload = valid
    choice = rng.randrange(9)
    if choice == 0:  # random frames
        return [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 4))]
    if choice == 1:  # truncated payload
        return [header, payload[:rng.randrange(len(payload))]]
    if choice == 2:  # header fields lying about the size
        fields = list(struct.unpack(FRAME_HEADER_FORMAT, header))
        fields[rng.choice([4, 5])] = rng.choice([0, 1, 511, 513, 4096, 65535])
        return [struct.pack(FRAME_HEADER_FORMAT, *fields), payload]
    if choice == 3:  # unknown codec
        fields = list(struct.unpack(FRAME_HEADER_FORMAT, header))
        fields[2] = rng.choice([c for c in range(256) if c not in codec.CODEC_NAMES])
        return [struct.pack(FRAME_HEADER_FORMAT, *fields), payload]
    if choice == 4:  # decompression bomb: a small zstd frame claiming 100+ MB
        bomb = rng.choice(bombs)
        fields = list(struct.unpack(FRAME_HEADER_FORMAT, header))
        fields[10] = len(bomb)
        return [struct.pack(FRAME_HEADER_FORMAT, *fields), bomb]
    if choice == 5:  # bit flips in the payload
        mutated = bytearray(payload)
        for _ in range(rng.randrange(1, 8)):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        return [header, bytes(mutated)]
    if choice == 6:  # bit flips in the header
        mutated = bytearray(header)
        mutated[rng.choice(_CHECKED_HEADER_BYTES)] ^= 1 << rng.randrange(8)
        return [bytes(mutated), payload]
    if choice == 7:  # wrong frame count
        return [header, payload, b''] if rng.random() < 0.5 else [header + payload]
    return [header, payload + rng.randbytes(rng.randrange(1, 64))]


async def run_depth_fuzz(count, seed):
    """Send *count* malformed depth messages (valid ones between); return the counts."""
    rng = random.Random(seed)
    ctx = AsyncContext()
    rep, pub = ctx.socket(zmq.REP), ctx.socket(zmq.PUB)
    rep.linger = pub.linger = 0
    pub.sndhwm = 100000
    rep_port = rep.bind_to_random_port('tcp://' + LOOPBACK)
    pub_port = pub.bind_to_random_port('tcp://' + LOOPBACK)
    me = json.dumps({'version': 1, 'name': 'fuzzer', 'endpoints': {
        'control': 'tcp://{0}:{1}'.format(LOOPBACK, rep_port)}, 'devices': [{
            'id': 'fuzzed', 'endpoints': {'depth': 'tcp://{0}:{1}'.format(
                LOOPBACK, pub_port)}}]}).encode()

    async def answer():
        while True:
            await rep.recv_multipart()
            await rep.send_multipart([b'\x04', me])
    answering = asyncio.ensure_future(answer())
    client = Client('tcp://{0}:{1}'.format(LOOPBACK, rep_port))
    client.max_frame_pixels = 512 * 424
    good = []
    Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                 client, weak=False)
    Client.on_depth_frame.connect(lambda c, depth_frame, kinect_id: good.append(
        np.array_equal(depth_frame.array, MockKinect.render_frame(depth_frame.sequence))),
        client, weak=False)
    counts = collections.Counter()
    try:
        client.connect()
        deadline = time.monotonic() + 10
        while 'fuzzed' not in client._depth_streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stats = client.stats['fuzzed']
        message = encode_frame_message(DepthFrame(MockKinect.render_frame(0)))
        # Subscriptions take a moment: wait until a valid frame gets through.
        while not good and time.monotonic() < deadline:
            await pub.send_multipart(list(message.parts))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # let warm-up frames still in flight arrive
        warmup = len(good)
        base = stats.invalid + stats.received
        invalid_base = stats.invalid
        bombs = make_bombs()
        rss_before = peak = _rss()
        for index in range(count):
            sequence = index + 1
            frame = DepthFrame(MockKinect.render_frame(sequence), sequence=sequence)
            message = encode_frame_message(frame)
            valid = tuple(bytes(p) for p in message.parts)
            await pub.send_multipart(depth_message(rng, valid, bombs))
            counts['malformed sent'] += 1
            if index % 10 == 0:
                await pub.send_multipart(list(valid))
                counts['valid sent'] += 1
            # Pace the sender so that nothing is lost to high-water marks (each message
            # may take 5 s to be counted: a loaded machine is slow, not lossy).
            paced = time.monotonic() + 5.0
            while stats.invalid + stats.received - base < counts['malformed sent'] + \
                    counts['valid sent'] and time.monotonic() < paced:
                await asyncio.sleep(0.001)
            peak = max(peak, _rss())
        counts['dropped as invalid'] = stats.invalid - invalid_base
        counts['valid delivered'] = len(good) - warmup
        counts['valid and byte-exact'] = sum(good[warmup:])
        # Process RSS (libzmq's buffers included), sender and client in this process.
        counts['peak RSS growth MiB'] = round((peak - rss_before) / 2 ** 20, 1)
    finally:
        answering.cancel()
        if client.is_connected:
            client.disconnect()
        rep.close(linger=0)
        pub.close(linger=0)
        ctx.term()
    return counts


# --- depth endpoint: subscriptions ---------------------------------------------------

class ZmtpSubscriber(object):
    """A SUB peer speaking ZMTP 3.0 (NULL mechanism) by hand over a plain TCP socket.

    It sends whatever it is told to, which no libzmq socket would: floods of subscription
    prefixes, frames of any size. Everything the server sends is read and discarded.
    """

    GREETING = (b'\xff' + bytes(8) + b'\x7f' + b'\x03\x00' + b'NULL'.ljust(20, b'\x00')
                + b'\x00' + bytes(31))

    def __init__(self, reader, writer):
        """Wrap a connected stream pair; use :py:meth:`connect`."""
        self.reader = reader
        self.writer = writer
        self.received = 0
        self._eof = asyncio.get_running_loop().create_future()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, endpoint):
        """Connect to a ``tcp://host:port`` endpoint and send the greeting and READY."""
        host, port = endpoint[len('tcp://'):].rsplit(':', 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'\x05READY' + b'\x0bSocket-Type' + struct.pack('>I', 3) + b'SUB'
        writer.write(cls.GREETING + bytes([0x04, len(body)]) + body)
        return cls(reader, writer)

    async def _read(self):
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                self.received += len(data)
        except (ConnectionError, OSError):
            pass
        self._eof.set_result(True)

    def send(self, body):
        """Queue one single-frame message; return the bytes it takes on the wire."""
        frame = self.frame(body)
        self.send_raw(frame)
        return len(frame)

    def send_raw(self, data):
        """Queue *data* as it is, unless the server has closed the connection."""
        if not self.closed_by_peer:
            self.writer.write(data)

    @staticmethod
    def frame(body):
        """Encode *body* as the one ZMTP frame of a message."""
        if len(body) < 256:
            return bytes([0x00, len(body)]) + body
        return b'\x02' + struct.pack('>Q', len(body)) + body

    @property
    def closed_by_peer(self):
        """Tell whether the server has closed (or reset) the connection."""
        return self._eof.done() or self.writer.is_closing()

    async def drain(self, timeout):
        """Wait until the queued bytes are in the kernel; False if the server cut us off."""
        try:
            await asyncio.wait_for(self.writer.drain(), timeout)
        except (ConnectionError, OSError):
            return False
        except asyncio.TimeoutError:  # the server reads slowly: still connected
            pass
        return not self.closed_by_peer

    async def wait_closed_by_peer(self, timeout):
        """Wait up to *timeout* s for the server to close the connection; tell if it did."""
        try:
            await asyncio.wait_for(asyncio.shield(self._eof), timeout)
        except asyncio.TimeoutError:
            pass
        return self.closed_by_peer

    async def close(self):
        """Close the connection."""
        self._reading.cancel()
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass


def _rss():
    gc.collect()
    return psutil.Process().memory_info().rss


async def run_subscription_flood(mib, seed):
    """Flood a serving device's depth endpoint with *mib* MiB of random prefixes.

    The attacker reconnects whenever it is cut off. Returns the counts, with the growth
    of this process's RSS (the server's: the attacker is a raw socket and keeps nothing).
    """
    rng = random.Random(seed)
    total = int(mib * 2 ** 20)
    counts = collections.Counter()
    with MockKinect() as kinect, Server(address=LOOPBACK, announce=False) as server:
        server.add_kinect(kinect)
        client = Client(server.endpoints[EndpointType.control])
        frames = []
        Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                     client, weak=False)
        Client.on_depth_frame.connect(lambda c, depth_frame, kinect_id: frames.append(
            depth_frame.sequence), client, weak=False)
        client.connect()
        try:
            deadline = time.monotonic() + 10
            while len(frames) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            before = _rss()
            endpoint = server.device_endpoint(kinect.unique_kinect_id)
            sent = 0
            deadline = time.monotonic() + 60
            while sent < total and time.monotonic() < deadline:
                peer = await ZmtpSubscriber.connect(endpoint)
                counts['connections'] += 1
                try:
                    alive = True
                    while alive and sent < total and time.monotonic() < deadline:
                        batch = b''.join(peer.frame(b'\x01' + rng.randbytes(rng.randrange(
                            8, 40))) for _ in range(2048))  # about 50 KiB
                        peer.send_raw(batch)
                        sent += len(batch)
                        alive = await peer.drain(5)
                    if not alive or await peer.wait_closed_by_peer(0.2):
                        counts['connections cut by the server'] += 1
                finally:
                    await peer.close()
            during = len(frames)
            await asyncio.sleep(1.0)
            counts['MiB sent'] = round(sent / 2 ** 20, 1)
            counts['server RSS growth MiB'] = round((_rss() - before) / 2 ** 20, 1)
            counts['subscribers cut (server count)'] = server.device_stats(
                kinect.unique_kinect_id).get('subscribers_cut', 0)
            counts['client frames during flood'] = during
            counts['client still streaming'] = int(len(frames) >= during + 3
                                                   and client.is_connected)
        finally:
            if client.is_connected:
                client.disconnect()
    return counts


def main(argv=None):
    """Run both fuzzers and print their counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--control', type=int, default=5000)
    parser.add_argument('--depth', type=int, default=3000)
    parser.add_argument('--flood', type=float, default=6.0, metavar='MIB')
    parser.add_argument('--seed', type=int, default=int.from_bytes(os.urandom(4), 'big'))
    args = parser.parse_args(argv)
    print('seed', args.seed)
    for title, fuzzer, count in (
            ('control endpoint, {0} messages', run_control_fuzz, args.control),
            ('client depth endpoint, {0} malformed messages', run_depth_fuzz, args.depth),
            ('server depth endpoint, {0} MiB of random subscriptions',
             run_subscription_flood, args.flood)):
        started = time.monotonic()
        counts = asyncio.run(fuzzer(count, args.seed))
        print((title + ' in {1:.0f} s:').format(count, time.monotonic() - started))
        for key, value in sorted(counts.items()):
            print('  {0:32s} {1}'.format(key, value))
    return 0


if __name__ == '__main__':
    sys.exit(main())
