"""Soak: one server with four mock sensors at 30 fps and three clients, for ten minutes.

``python bench/soak.py [--duration 600] [--devices 4] [--clients 3]``. Everything on
loopback, in separate processes. Prints, per client, frames received and lost, latency p99
in the first and the last window, and for every process the memory growth (RSS after
warm-up to end) and CPU use.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import psutil
from streamkinect2.client import Client
from streamkinect2.stats import percentile
from tornado.ioloop import IOLoop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e  # noqa: E402, I100  (bench/bench_e2e.py: the same server process)


def client_main(endpoint, window, devices):
    """Receive from *endpoint*; print one JSON line of figures per *window* seconds."""
    async def run():
        client = Client(endpoint, io_loop=IOLoop.current())
        latencies = []
        Client.on_add_kinect.connect(lambda c, kinect_id: c.enable_depth_frames(kinect_id),
                                     client, weak=False)
        Client.on_depth_frame.connect(lambda c, depth_frame, kinect_id: latencies.append(
            time.time() - depth_frame.timestamp), client, weak=False)
        client.connect()
        while True:
            await asyncio.sleep(window)
            stats = list(client.stats.values())
            lat = [latency * 1000 for latency in latencies]  # NaN figures if none
            latencies.clear()
            print(json.dumps({
                'connected': client.is_connected, 'devices': len(client.kinect_ids),
                'received': sum(s.received for s in stats),
                'dropped': sum(s.dropped for s in stats),
                'invalid': sum(s.invalid for s in stats),
                'p50_ms': percentile(lat, 0.5),
                'p99_ms': percentile(lat, 0.99)}), flush=True)
    asyncio.run(run())


def main(argv=None):
    """Run the soak and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=600.0)
    parser.add_argument('--devices', type=int, default=4)
    parser.add_argument('--clients', type=int, default=3)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--window', type=float, default=30.0,
                        help='seconds per client report (first and last are compared)')
    parser.add_argument('--replay', default=bench_e2e.DEFAULT_REPLAY,
                        help='recorded frames to serve ("" for the synthetic scene)')
    parser.add_argument('--client', metavar='ENDPOINT', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args.client, args.window, args.devices)
    if args.replay and not os.path.exists(args.replay):
        args.replay = ''
    window = min(args.window, args.duration / 4)

    server, endpoint = bench_e2e.start_server(args.devices, args.fps, args.replay,
                                              lifetime=args.duration + 300)
    clients = [subprocess.Popen([sys.executable, __file__, '--client', endpoint,
                                 '--window', str(window)], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))
               for _ in range(args.clients)]
    procs = {'server': psutil.Process(server.pid)}
    procs.update({'client {0}'.format(i + 1): psutil.Process(c.pid)
                  for i, c in enumerate(clients)})
    reports = {name: [] for name in procs if name != 'server'}
    try:
        first = [json.loads(c.stdout.readline()) for c in clients]  # warm-up window
        start = {name: (p.memory_info().rss, sum(p.cpu_times()[:2]))
                 for name, p in procs.items()}
        started = time.monotonic()
        while time.monotonic() - started < args.duration:
            for name, c in zip(reports, clients):
                reports[name].append(json.loads(c.stdout.readline()))
        elapsed = time.monotonic() - started
        end = {name: (p.memory_info().rss, sum(p.cpu_times()[:2]))
               for name, p in procs.items()}
    finally:
        for process in clients + [server]:
            process.terminate()
        for process in clients + [server]:
            process.wait(10)

    expected = args.devices * args.fps * elapsed
    print('soak: {0} device(s) at {1:g} fps, {2} clients, {3:.0f} s ({4}) on loopback'.format(
        args.devices, args.fps, args.clients, elapsed,
        'replaying ' + os.path.basename(args.replay) if args.replay else 'synthetic scene'))
    for index, name in enumerate(reports):
        last, base = reports[name][-1], first[index]
        received = last['received'] - base['received']
        print('  {0}: received {1} of ~{2:.0f} frames; lost (sequence gaps) {3}; invalid {4}; '
              'latency p99 first window {5:.1f} ms, last window {6:.1f} ms; connected at '
              'end: {7}'.format(name, received, expected, last['dropped'] - base['dropped'],
                                last['invalid'], reports[name][0]['p99_ms'],
                                last['p99_ms'], last['connected']))
    for name in procs:
        rss0, cpu0 = start[name]
        rss1, cpu1 = end[name]
        print('  {0:9s} RSS {1:6.1f} MiB -> {2:6.1f} MiB (growth {3:+.1f} MiB); CPU {4:.0f} % '
              'of a core'.format(name, rss0 / 2 ** 20, rss1 / 2 ** 20, (rss1 - rss0) / 2 ** 20,
                                 (cpu1 - cpu0) / elapsed * 100))
    return 0


if __name__ == '__main__':
    sys.exit(main())
