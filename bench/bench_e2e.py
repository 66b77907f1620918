"""End-to-end benchmark on loopback: mock server process -> client, with figures.

Prints frames/s received, frames dropped, CPU per frame of the server and the client,
capture -> decoded latency p50/p99, bandwidth and compression ratio. Runs by itself:
``python bench/bench_e2e.py [--devices N] [--fps F] [--duration S]``.
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
from streamkinect2.stats import percentile
from tornado.ioloop import IOLoop


DEFAULT_REPLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                              'shared', 'data', 'depth', 'kinect2_room_calibration.npz')


def start_server(devices, fps, replay, lifetime=600):
    """Start a mock server process on loopback; return (process, control endpoint).

    The server stops by itself after *lifetime* seconds, should this script be killed.
    """
    code = 'import sys; from streamkinect2.tools import mock_server_main; ' \
           'sys.exit(mock_server_main())'
    process = subprocess.Popen(
        [sys.executable, '-c', code, '--address', '127.0.0.1', '--no-announce',
         '--devices', str(devices), '--fps', str(fps), '--duration', str(lifetime)]
        + (['--replay', replay] if replay else []),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED='1'))
    line = process.stdout.readline()
    if ' on tcp://' not in line:
        process.kill()
        raise RuntimeError('server did not start: {0!r}'.format(line))
    return process, line.rsplit(' on ', 1)[1].strip()


async def measure(endpoint, devices, warmup, duration):
    """Receive for *duration* s after *warmup* s; return the figures."""
    client = Client(endpoint, io_loop=IOLoop.current())
    latencies, counting = [], [False]

    def on_add(client, kinect_id):
        client.enable_depth_frames(kinect_id)

    def on_frame(client, depth_frame, kinect_id):
        if counting[0]:
            latencies.append(time.time() - depth_frame.timestamp)
    Client.on_add_kinect.connect(on_add, client, weak=False)
    Client.on_depth_frame.connect(on_frame, client, weak=False)
    client.connect()
    deadline = time.monotonic() + 10
    while len(client.kinect_ids) < devices and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(warmup)
    snapshot = {k: (s.received, s.dropped, s.invalid, s.payload_bytes, s.raw_bytes)
                for k, s in client.stats.items()}
    counting[0] = True
    return client, snapshot, latencies


def main(argv=None):
    """Run one configuration and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--devices', type=int, default=1)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--duration', type=float, default=15.0)
    parser.add_argument('--warmup', type=float, default=2.0)
    parser.add_argument('--replay', default=DEFAULT_REPLAY,
                        help='recorded frames to serve (.npz); "" for the synthetic scene '
                             '(default: the real Kinect v2 frames in ../shared/data/depth)')
    args = parser.parse_args(argv)

    if args.replay and not os.path.exists(args.replay):
        print('note: {0} not found; serving the synthetic scene'.format(args.replay))
        args.replay = ''
    server, endpoint = start_server(args.devices, args.fps, args.replay)
    server_ps = psutil.Process(server.pid)
    me = psutil.Process()
    try:
        async def run():
            client, before, latencies = await measure(endpoint, args.devices, args.warmup,
                                                      args.duration)
            cpu0 = (server_ps.cpu_times(), me.cpu_times(), time.monotonic())
            await asyncio.sleep(args.duration)
            cpu1 = (server_ps.cpu_times(), me.cpu_times(), time.monotonic())
            after = {k: (s.received, s.dropped, s.invalid, s.payload_bytes, s.raw_bytes)
                     for k, s in client.stats.items()}
            client.disconnect()
            return before, after, latencies, cpu0, cpu1
        before, after, latencies, cpu0, cpu1 = asyncio.run(run())
    finally:
        server.terminate()
        server.wait(10)

    elapsed = cpu1[2] - cpu0[2]
    delta = np.array([np.subtract(after[k], before.get(k, (0,) * 5)) for k in after])
    received, dropped, invalid, wire, raw = delta.sum(axis=0)
    cpu = lambda t0, t1: (t1.user + t1.system) - (t0.user + t0.system)  # noqa: E731
    lat = [latency * 1000 for latency in latencies]
    print('end to end on loopback: {0} mock device(s) at {1:g} fps, {2:.0f} s, {3}'.format(
        args.devices, args.fps, elapsed, 'replaying ' + os.path.basename(args.replay)
        if args.replay else 'synthetic scene'))
    print('  frames received/s    {0:8.1f}  ({1:.1f} per device)'.format(
        received / elapsed, received / elapsed / args.devices))
    print('  frames dropped       {0:8d}  invalid {1}'.format(int(dropped), int(invalid)))
    print('  latency capture->decoded  p50 {0:.2f} ms  p99 {1:.2f} ms'.format(
        percentile(lat, 0.5), percentile(lat, 0.99)))
    print('  CPU per frame: server {0:.2f} ms, client {1:.2f} ms'.format(
        cpu(cpu0[0], cpu1[0]) / received * 1000, cpu(cpu0[1], cpu1[1]) / received * 1000))
    print('  bandwidth {0:.1f} Mbit/s, compression ratio {1:.2f}'.format(
        wire * 8 / elapsed / 1e6, raw / wire))
    return 0


if __name__ == '__main__':
    sys.exit(main())
