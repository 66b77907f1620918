"""Benchmark the ROS 2 demo pipeline on loopback.

    python bench/bench_ros.py [--duration 20] [--warmup 3] [--mock-count 1] [--fps 30]

Runs the mock server node and the client node as subprocesses (as
``python -m streamkinect2_ros.demo``) with a subscriber in this process, and prints:
Images/s delivered to the subscriber, capture -> subscriber latency p50/p99 (header stamp
= capture time), and CPU time per Image of each node process and of the subscriber
(psutil: user + system, over the measurement window, after a warm-up).
"""
import argparse
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from streamkinect2_ros.demo import percentile, Pipeline  # noqa: E402


def cpu_seconds(process):
    """Return the user + system CPU seconds of a psutil process."""
    times = process.cpu_times()
    return times.user + times.system


def main(argv=None):
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=20.0, help='measured seconds')
    parser.add_argument('--warmup', type=float, default=3.0,
                        help='seconds of streaming before measuring')
    parser.add_argument('--mock-count', type=int, default=1)
    parser.add_argument('--fps', type=float, default=30.0)
    args = parser.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    pipeline = Pipeline(args.mock_count, args.fps, quiet=True)
    try:
        pipeline.start()
        deadline = time.monotonic() + 30.0
        while not all(pipeline.samples.values()):
            if time.monotonic() > deadline:
                raise SystemExit('no Images within 30 s')
            pipeline.spin(0.2)
        pipeline.spin(args.warmup)
        procs = {role: psutil.Process(p.pid) for role, p in pipeline.processes.items()}
        procs['subscriber'] = psutil.Process()
        cpu0 = {role: cpu_seconds(p) for role, p in procs.items()}
        start = time.monotonic()
        pipeline.spin(args.duration)
        elapsed = time.monotonic() - start
        cpu = {role: cpu_seconds(p) - cpu0[role] for role, p in procs.items()}
    finally:
        status = pipeline.stop()

    latencies = sorted(lat for samples in pipeline.samples.values()
                       for t, lat in samples if t >= start)
    images = len(latencies)
    print('streamkinect2_ros demo pipeline on loopback: {0} mock device(s) at {1:g} fps, '
          '512x424 16UC1, {2:.0f} s measured'.format(args.mock_count, args.fps, elapsed))
    print('  Images/s delivered      {0:8.1f}  (expected {1:.1f})'.format(
        images / elapsed, args.mock_count * args.fps))
    print('  latency p50 / p99       {0:8.2f} / {1:.2f} ms  (capture -> subscriber)'.format(
        percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3))
    for role in ('server', 'client', 'subscriber'):
        print('  CPU per Image {0:<10s} {1:8.2f} ms  ({2:.0f} % of a core)'.format(
            role, cpu[role] / max(1, images) * 1e3, cpu[role] / elapsed * 100))
    print('  node exit status        {0}'.format(status))
    return 0 if images else 1


if __name__ == '__main__':
    sys.exit(main())
