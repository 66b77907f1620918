"""Benchmark the ROS 2 demo pipeline on loopback.

    python bench/bench_ros.py [--duration 20] [--warmup 3] [--mock-count 1] [--fps 30]
                              [--streams depth,ir,color] [--color-raw]
                              [--color-resolution hd|qhd] [--color-quality Q]

Runs the mock server node and the client node as subprocesses (as
``python -m streamkinect2_ros.demo``) with a subscriber in this process, and prints:
Images/s delivered to the subscriber, capture -> subscriber latency p50/p99 (header stamp
= capture time), and CPU time per Image of each node process and of the subscriber
(psutil: user + system, over the measurement window, after a warm-up).

``--streams`` (default ``depth``) is passed to both nodes (the server serves those, the
client publishes those). Per device the subscriber takes ``depth/image_raw``,
``ir/image_raw`` with ir and ``color/image_raw/compressed`` with color (the JPEG the
client node forwards), and ``color/image_raw`` too with ``--color-raw`` (the client node
then decodes every colour frame); with more than depth it prints, per topic, messages/s
delivered and latency, and the CPU per capture (one depth Image with its IR and colour)
of each process. The mock server node synthesises its scene (it has no replay).
"""
import argparse
import collections
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from streamkinect2_ros.demo import percentile, Pipeline  # noqa: E402

STREAMS = ('depth', 'ir', 'color')


def cpu_seconds(process):
    """Return the user + system CPU seconds of a psutil process."""
    times = process.cpu_times()
    return times.user + times.system


class StreamsPipeline(Pipeline):
    """The demo pipeline with ``streams`` (and colour options) given to the nodes.

    ``samples[device]`` holds the depth Images (as the demo's); ``samples[(device,
    topic)]`` each further topic's messages (topic relative to the device).
    """

    def __init__(self, mock_count, fps, streams, color_raw=False, server_params=None,
                 **kwargs):
        """Describe the pipeline; :py:meth:`start` starts it."""
        super().__init__(mock_count, fps, **kwargs)
        self.streams = tuple(streams)
        self.topics = []
        if 'ir' in self.streams:
            self.topics.append(('ir/image_raw', 'Image'))
        if 'color' in self.streams:
            self.topics.append(('color/image_raw/compressed', 'CompressedImage'))
            if color_raw:
                self.topics.append(('color/image_raw', 'Image'))
        self._params = {'server_node': dict(server_params or {}), 'client_node': {}}
        value = '[{0}]'.format(', '.join(self.streams))
        for params in self._params.values():
            params['streams'] = value
        for device in self.devices:
            for topic, _ in self.topics:
                self.samples[(device, topic)] = collections.deque()

        #: Last client-node counters per (device id, key) from /diagnostics.
        self.client_counters = {}

    def _on_diagnostics(self, msg):
        for status in msg.status:
            values = {value.key: value.value for value in status.values}
            if 'published' in values:  # a client-node device status
                for key, value in values.items():
                    self.client_counters[(status.hardware_id, key)] = value

    def _spawn(self, module, params_file, params):
        return super()._spawn(module, params_file, dict(params, **self._params[module]))

    def start(self):
        """Start both nodes and subscribe to every device's topics."""
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs import msg
        super().start()
        self._node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                       10)
        for device in self.devices:
            for topic, type_name in self.topics:
                self._node.create_subscription(
                    getattr(msg, type_name), '/{0}/{1}'.format(device, topic),
                    self._receiver((device, topic)), qos_profile_sensor_data)


def main(argv=None):
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=20.0, help='measured seconds')
    parser.add_argument('--warmup', type=float, default=3.0,
                        help='seconds of streaming before measuring')
    parser.add_argument('--mock-count', type=int, default=1)
    parser.add_argument('--fps', type=float, default=30.0)
    parser.add_argument('--streams', default='depth',
                        help='comma-separated streams served and published, of {0} '
                             '(default: depth)'.format(','.join(STREAMS)))
    parser.add_argument('--color-raw', action='store_true',
                        help='subscribe to color/image_raw too (the client node decodes)')
    parser.add_argument('--color-resolution', choices=('hd', 'qhd'), default=None,
                        help="server node's colour resolution (default: its parameter file's)")
    parser.add_argument('--color-quality', type=int, default=None,
                        help="server node's JPEG quality (default: its parameter file's)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.streams.split(',')]
    if 'depth' not in names or set(names) - set(STREAMS):
        parser.error('--streams: depth and any of ir, color')
    streams = tuple(stream for stream in STREAMS if stream in names)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    server_params = {}
    if args.color_resolution is not None:
        server_params['color_resolution'] = args.color_resolution
    if args.color_quality is not None:
        server_params['color_quality'] = args.color_quality
    pipeline = StreamsPipeline(args.mock_count, args.fps, streams, args.color_raw,
                               server_params, quiet=True)
    try:
        pipeline.start()
        deadline = time.monotonic() + 30.0
        while not all(pipeline.samples.values()):
            if time.monotonic() > deadline:
                raise SystemExit('no messages on {0} within 30 s'.format(', '.join(
                    str(key) for key, samples in pipeline.samples.items() if not samples)))
            pipeline.spin(0.2)
        pipeline.spin(args.warmup)
        procs = {role: psutil.Process(p.pid) for role, p in pipeline.processes.items()}
        procs['subscriber'] = psutil.Process()
        cpu0 = {role: cpu_seconds(p) for role, p in procs.items()}
        start = time.monotonic()
        counters0 = dict(pipeline.client_counters)
        pipeline.spin(args.duration)
        elapsed = time.monotonic() - start
        cpu = {role: cpu_seconds(p) - cpu0[role] for role, p in procs.items()}
        counters1 = dict(pipeline.client_counters)
    finally:
        status = pipeline.stop()

    def latencies_of(keys):
        return sorted(lat for key in keys for t, lat in pipeline.samples[key] if t >= start)

    latencies = latencies_of(pipeline.devices)
    images = len(latencies)
    if streams == ('depth',):
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

    print('streamkinect2_ros demo pipeline on loopback: {0} mock device(s) at {1:g} fps '
          '(synthetic scene), streams {2}, {3:.0f} s measured'.format(
              args.mock_count, args.fps, ','.join(streams), elapsed))
    if 'color' in streams:
        print('  colour {0}, JPEG quality {1} (server node parameters{2})'.format(
            args.color_resolution or 'hd (parameter file)',
            args.color_quality or 'of the parameter file',
            '' if server_params else ' from config/server.yaml'))
    print('  {0:<28s} {1:>10s} {2:>10s} {3:>10s}  (capture -> subscriber)'.format(
        'topic (per device)', 'msgs/s', 'lat p50', 'lat p99'))
    rows = [('depth/image_raw', latencies)] + [
        (topic, latencies_of([(device, topic) for device in pipeline.devices]))
        for topic, _ in pipeline.topics]
    delivered = True
    for topic, values in rows:
        delivered = delivered and bool(values)
        print('  {0:<28s} {1:10.1f} {2:7.2f} ms {3:7.2f} ms'.format(
            topic, len(values) / elapsed / args.mock_count, percentile(values, 0.5) * 1e3,
            percentile(values, 0.99) * 1e3))
    print('  (expected {0:.1f} msgs/s per topic)'.format(args.fps))

    def grown(key):
        return sum(int(counters1.get((d, key), 0)) - int(counters0.get((d, key), 0))
                   for d in {d for d, _ in counters1})
    print('  client node (its /diagnostics, over the window, ~1 s resolution):')
    for stream in streams:
        prefix = '' if stream == 'depth' else stream + '_'
        print('    {0:<6s} received {1:6d}  published {2:6d}  dropped upstream {3:4d}  '
              'invalid {4:3d}{5}'.format(
                  stream, grown(prefix + 'received'), grown(prefix + 'published'),
                  grown(prefix + 'dropped'), grown(prefix + 'invalid'),
                  '  decoded {0}'.format(grown('color_decoded')) if stream == 'color'
                  else ''))
    captures = grown('published') or images  # depth frames the client node published
    for role in ('server', 'client', 'subscriber'):
        print('  CPU per capture {0:<10s} {1:8.2f} ms  ({2:.0f} % of a core; {3} captures)'.format(
            role, cpu[role] / max(1, captures) * 1e3, cpu[role] / elapsed * 100, captures))
    print('  node exit status        {0}'.format(status))
    return 0 if delivered else 1


if __name__ == '__main__':
    sys.exit(main())
