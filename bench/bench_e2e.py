"""End-to-end benchmark on loopback: mock server process -> client, with figures.

Prints frames/s received, frames dropped, CPU per frame of the server and the client,
capture -> decoded latency p50/p99, bandwidth and compression ratio. Runs by itself:
``python bench/bench_e2e.py [--devices N] [--fps F] [--duration S]``.

With ``--streams depth,ir,color`` (and ``--rgbd`` to replay the real synchronised RGB-D
captures of ../shared/data/rgbd) it prints those figures per stream, the CPU per capture
(one depth frame with its IR and colour) of the server and the client processes, and the
client's CPU per frame of each stream in its receive handler. The client forwards the
colour JPEG as it arrives (``.jpeg``, nothing decoded) unless ``--decode-color`` has it
decode each one (``.array``); the colour latency is then capture -> decoded, else
capture -> received. ``--color-resolution qhd`` and ``--color-quality Q`` set the
server's colour options.
"""
import argparse
import asyncio
import os
import subprocess
import sys
import time

import numpy as np
import psutil
from streamkinect2.client import Client
from streamkinect2.device import STREAMS
from streamkinect2.stats import percentile
from tornado.ioloop import IOLoop


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data')
DEFAULT_REPLAY = os.path.join(DATA, 'depth', 'kinect2_room_calibration.npz')
DEFAULT_RGBD = os.path.join(DATA, 'rgbd', 'kinect2_sync_rgbd.npz')
COUNTERS = ('received', 'dropped', 'invalid', 'payload_bytes', 'raw_bytes')


def start_server(devices, fps, replay, lifetime=600, streams=('depth',), color_quality=None,
                 color_resolution='hd'):
    """Start a mock server process on loopback; return (process, control endpoint).

    The server is ``streamkinect2-mock-server``'s code; it stops by itself after
    *lifetime* seconds, should this script be killed.
    """
    code = 'import sys; from streamkinect2.tools import mock_server_main; ' \
           'sys.exit(mock_server_main())'
    command = [sys.executable, '-c', code, '--address', '127.0.0.1', '--no-announce',
               '--devices', str(devices), '--fps', str(fps), '--duration', str(lifetime),
               '--streams', ','.join(streams), '--color-resolution', color_resolution] + (
        ['--replay', replay] if replay else []) + (
        ['--color-quality', str(color_quality)] if color_quality is not None else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    line = process.stdout.readline()
    if ' on tcp://' not in line:
        process.kill()
        process.wait(10)
        raise RuntimeError('server did not start: {0!r}'.format(line))
    return process, line.rsplit(' on ', 1)[1].strip()


class Receiver(object):
    """A client that enables *streams* of every device and keeps the figures.

    ``latencies[stream]``: capture -> decoded (colour: -> received, or -> decoded with
    *decode_color*) in s, while ``counting``. ``handler_cpu[stream]``: thread CPU seconds
    the client's IOLoop spent in the receive handler of that stream (validation, the
    library's accounting, the frame signal and the receivers: forwarding or decoding),
    while ``counting``.
    """

    def __init__(self, endpoint, streams, decode_color):
        """Create the client (not connected)."""
        self.streams = tuple(streams)
        self.decode_color = decode_color
        self.latencies = {stream: [] for stream in self.streams}
        self.handler_cpu = dict.fromkeys(self.streams, 0.0)
        self.forwarded_bytes = 0
        self.counting = False
        self.client = Client(endpoint, io_loop=IOLoop.current())
        on_message = self.client._on_message

        def timed_on_message(kinect_id, stream, subscription, frames):
            start = time.thread_time()
            on_message(kinect_id, stream, subscription, frames)
            if self.counting:
                self.handler_cpu[stream] += time.thread_time() - start
        # Per instance: the subscriptions call self._on_message when a message comes.
        self.client._on_message = timed_on_message
        Client.on_add_kinect.connect(self._on_add, self.client, weak=False)
        Client.on_depth_frame.connect(self._on_depth, self.client, weak=False)
        Client.on_ir_frame.connect(self._on_ir, self.client, weak=False)
        Client.on_color_frame.connect(self._on_color, self.client, weak=False)

    def _on_add(self, client, kinect_id):
        for stream in self.streams:
            getattr(client, 'enable_{0}_frames'.format(stream))(kinect_id)

    def _on_depth(self, client, depth_frame, kinect_id):
        if self.counting:
            self.latencies['depth'].append(time.time() - depth_frame.timestamp)

    def _on_ir(self, client, ir_frame, kinect_id):
        if self.counting:
            self.latencies['ir'].append(time.time() - ir_frame.timestamp)

    def _on_color(self, client, color_frame, kinect_id):
        if self.decode_color:
            color_frame.array  # noqa: B018 - decode, as a consumer of pixels does
        else:
            self.forwarded_bytes += len(color_frame.jpeg)  # what a forwarder hands on
        if self.counting:
            self.latencies['color'].append(time.time() - color_frame.timestamp)

    def counters(self):
        """Return ``{stream: [received, dropped, invalid, payload bytes, raw bytes]}``."""
        totals = {stream: np.zeros(len(COUNTERS), dtype=np.int64) for stream in self.streams}
        for kinect_id in self.client.kinect_ids:
            for stream in self.streams:
                stats = self.client.stream_stats(kinect_id, stream)
                if stats is not None:
                    totals[stream] += [getattr(stats, name) for name in COUNTERS]
        return totals


async def measure(endpoint, devices, warmup, duration, streams=('depth',), decode_color=False):
    """Connect, wait for the devices, stream for *warmup* s; return (receiver, counters).

    The receiver is counting from then on.
    """
    receiver = Receiver(endpoint, streams, decode_color)
    receiver.client.connect()
    deadline = time.monotonic() + 10
    while len(receiver.client.kinect_ids) < devices and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(warmup)
    snapshot = receiver.counters()
    receiver.counting = True
    return receiver, snapshot


def cpu_seconds(times):
    """Return user + system seconds of psutil cpu_times."""
    return times.user + times.system


def print_depth_only(args, elapsed, delta, receiver, cpu_server, cpu_client):
    """Print the figures of a depth-only run (the README's layout)."""
    received, dropped, invalid, wire, raw = delta['depth']
    lat = [latency * 1000 for latency in receiver.latencies['depth']]
    print('end to end on loopback: {0} mock device(s) at {1:g} fps, {2:.0f} s, {3}'.format(
        args.devices, args.fps, elapsed, 'replaying ' + os.path.basename(args.replay)
        if args.replay else 'synthetic scene'))
    print('  frames received/s    {0:8.1f}  ({1:.1f} per device)'.format(
        received / elapsed, received / elapsed / args.devices))
    print('  frames dropped       {0:8d}  invalid {1}'.format(int(dropped), int(invalid)))
    print('  latency capture->decoded  p50 {0:.2f} ms  p99 {1:.2f} ms'.format(
        percentile(lat, 0.5), percentile(lat, 0.99)))
    print('  CPU per frame: server {0:.2f} ms, client {1:.2f} ms'.format(
        cpu_server / received * 1000, cpu_client / received * 1000))
    print('  bandwidth {0:.1f} Mbit/s, compression ratio {1:.2f}'.format(
        wire * 8 / elapsed / 1e6, raw / wire))


def print_streams(args, elapsed, delta, receiver, cpu_server, cpu_client):
    """Print the per-stream figures of a multi-stream run."""
    print('end to end on loopback: {0} mock device(s) at {1:g} fps, {2:.0f} s, {3}; '
          'streams {4}'.format(
              args.devices, args.fps, elapsed, 'replaying ' + os.path.basename(args.replay)
              if args.replay else 'synthetic scene', ','.join(receiver.streams)))
    if 'color' in receiver.streams:
        print('  colour {0}, JPEG quality {1}; client {2}'.format(
            args.color_resolution, args.color_quality if args.color_quality is not None
            else (90 if args.color_resolution == 'hd' else 75),
            'decodes each colour frame (.array)' if args.decode_color
            else 'forwards the JPEG (nothing decoded)'))
    print('  {0:<6s} {1:>9s} {2:>8s} {3:>8s} {4:>9s} {5:>6s} {6:>9s} {7:>9s} {8:>11s}'.format(
        'stream', 'frames/s', 'dropped', 'invalid', 'Mbit/s', 'ratio', 'lat p50', 'lat p99',
        'client CPU'))
    total_wire = 0
    for stream in receiver.streams:
        received, dropped, invalid, wire, raw = delta[stream]
        total_wire += wire
        lat = [latency * 1000 for latency in receiver.latencies[stream]]
        print('  {0:<6s} {1:9.1f} {2:8d} {3:8d} {4:9.1f} {5:6.2f} {6:6.2f} ms {7:6.2f} ms '
              '{8:6.3f} ms'.format(
                  stream, received / elapsed, int(dropped), int(invalid),
                  wire * 8 / elapsed / 1e6, raw / wire if wire else float('nan'),
                  percentile(lat, 0.5), percentile(lat, 0.99),
                  receiver.handler_cpu[stream] / max(1, received) * 1000))
    print('  (latency: capture -> decoded{0}; client CPU: per frame, in its receive '
          'handler)'.format('' if args.decode_color or 'color' not in receiver.streams
                            else ', colour -> received'))
    captures = int(delta['depth'][0])
    print('  total {0:.1f} Mbit/s'.format(total_wire * 8 / elapsed / 1e6))
    print('  CPU per capture ({0} captures): server {1:.2f} ms ({2:.0f} % of a core), '
          'client {3:.2f} ms ({4:.0f} % of a core)'.format(
              captures, cpu_server / max(1, captures) * 1000, cpu_server / elapsed * 100,
              cpu_client / max(1, captures) * 1000, cpu_client / elapsed * 100))
    if 'color' in receiver.streams:
        colour = int(delta['color'][0])
        others = sum(receiver.handler_cpu[stream] for stream in receiver.streams
                     if stream != 'color')
        print('  client CPU per colour frame ({0}): {1:.3f} ms in its handler; at most '
              '{2:.3f} ms counting everything of the process but the depth/IR handlers '
              '(ZeroMQ I/O thread of all streams, event loop)'.format(
                  'decoding' if args.decode_color else 'forwarding',
                  receiver.handler_cpu['color'] / max(1, colour) * 1000,
                  (cpu_client - others) / max(1, colour) * 1000))


def main(argv=None):
    """Run one configuration and print its figures."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--devices', type=int, default=1)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--duration', type=float, default=15.0)
    parser.add_argument('--warmup', type=float, default=2.0)
    parser.add_argument('--replay', default=DEFAULT_REPLAY,
                        help='recorded frames to serve (.npz); "" for the synthetic scene '
                             '(default: the real Kinect v2 frames in ../shared/data/depth)')
    parser.add_argument('--rgbd', nargs='?', const=DEFAULT_RGBD, default=None, metavar='PATH',
                        help='replay the real synchronised RGB-D captures (depth, IR, '
                             'colour; default ../shared/data/rgbd/kinect2_sync_rgbd.npz) '
                             'instead of --replay')
    parser.add_argument('--streams', default='depth',
                        help='comma-separated streams to serve and receive, of {0} '
                             '(default: depth)'.format(','.join(STREAMS)))
    parser.add_argument('--color-resolution', choices=('hd', 'qhd'), default='hd')
    parser.add_argument('--color-quality', type=int, default=None,
                        help="JPEG quality 1-100 (default: the server's, 90 hd, 75 qhd)")
    parser.add_argument('--decode-color', action='store_true',
                        help='the client decodes each colour frame (default: forwards the '
                             'JPEG only)')
    args = parser.parse_args(argv)
    names = {name.strip() for name in args.streams.split(',')}
    streams = tuple(stream for stream in STREAMS if stream in names)
    unknown = names - set(STREAMS)
    if unknown or 'depth' not in streams:
        parser.error('--streams: depth and any of ir, color (unknown: {0})'.format(
            ','.join(sorted(unknown)) or '-'))
    if args.rgbd is not None:
        args.replay = args.rgbd

    if args.replay and not os.path.exists(args.replay):
        print('note: {0} not found; serving the synthetic scene'.format(args.replay))
        args.replay = ''
    server, endpoint = start_server(args.devices, args.fps, args.replay, streams=streams,
                                    color_quality=args.color_quality,
                                    color_resolution=args.color_resolution)
    server_ps = psutil.Process(server.pid)
    me = psutil.Process()
    try:
        async def run():
            receiver, before = await measure(endpoint, args.devices, args.warmup,
                                             args.duration, streams, args.decode_color)
            cpu0 = (server_ps.cpu_times(), me.cpu_times(), time.monotonic())
            await asyncio.sleep(args.duration)
            cpu1 = (server_ps.cpu_times(), me.cpu_times(), time.monotonic())
            receiver.counting = False
            after = receiver.counters()
            receiver.client.disconnect()
            return receiver, before, after, cpu0, cpu1
        receiver, before, after, cpu0, cpu1 = asyncio.run(run())
    finally:
        server.terminate()
        server.wait(10)

    elapsed = cpu1[2] - cpu0[2]
    delta = {stream: after[stream] - before[stream] for stream in streams}
    cpu_server = cpu_seconds(cpu1[0]) - cpu_seconds(cpu0[0])
    cpu_client = cpu_seconds(cpu1[1]) - cpu_seconds(cpu0[1])
    if streams == ('depth',):
        print_depth_only(args, elapsed, delta, receiver, cpu_server, cpu_client)
    else:
        print_streams(args, elapsed, delta, receiver, cpu_server, cpu_client)
    return 0


if __name__ == '__main__':
    sys.exit(main())
