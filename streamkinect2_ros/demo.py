"""The demo without ``ros2 launch``: mock server node, client node, live figures.

    python -m streamkinect2_ros.demo [--duration 20] [--mock-count 1] [--fps 30]

Starts ``server_node`` (mock devices) and ``client_node`` as subprocesses with the
package's parameter files, paired by server name over Zeroconf on the loopback
interface, subscribes to each device's Images in this process and prints, once a
second, Images/s and the capture -> subscriber latency per device. After
``--duration`` seconds (0: until Ctrl-C) it shuts everything down; the exit status is 0
if Images arrived, 1 if none did. ROS traffic stays on this machine unless
``ROS_AUTOMATIC_DISCOVERY_RANGE`` says otherwise.

:py:class:`Pipeline` is reused by ``bench/bench_ros.py``.
"""
import argparse
import collections
import os
import signal
import subprocess
import sys
import time
import uuid

__all__ = ['Pipeline', 'config_path', 'main', 'percentile', 'stop_processes']

PACKAGE = 'streamkinect2_ros'


def config_path(name):
    """Return the path of ``config/<name>``: installed share directory or source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(os.path.join(get_package_share_directory(PACKAGE), 'config'))
    except Exception:  # not installed through colcon, or no ament_index
        pass
    candidates.append(os.path.join(sys.prefix, 'share', PACKAGE, 'config'))
    candidates.append(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'config'))
    for directory in candidates:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError('config/{0} not found in {1}'.format(name, candidates))


def percentile(sorted_values, fraction):
    """Return the *fraction* percentile of a sorted list (nan if empty)."""
    if not sorted_values:
        return float('nan')
    return sorted_values[min(len(sorted_values) - 1,
                             int(round(fraction * (len(sorted_values) - 1))))]


class Pipeline(object):
    """Server node + client node subprocesses, and a subscriber to their Images.

    ``samples[device]`` collects ``(receive monotonic time, latency s)`` per Image,
    latency being subscriber receive time minus the header stamp (the capture time).
    """

    def __init__(self, mock_count=1, fps=30.0, address='127.0.0.1', quiet=False,
                 server_name=None):
        """Describe the pipeline; :py:meth:`start` starts it."""
        self.devices = ['mock{0}'.format(i) for i in range(mock_count)]
        self.fps = fps
        self.address = address
        self.quiet = quiet
        self.server_name = server_name or 'streamkinect2 demo {0}'.format(
            uuid.uuid4().hex[:6])
        self.samples = {device: collections.deque() for device in self.devices}
        self.processes = {}
        self._context = self._node = self._executor = None

    def _spawn(self, module, params_file, params):
        args = [sys.executable, '-m', '{0}.{1}'.format(PACKAGE, module), '--ros-args',
                '--params-file', config_path(params_file)]
        for name, value in params.items():
            args += ['-p', '{0}:={1}'.format(name, value)]
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        out = subprocess.DEVNULL if self.quiet else None
        return subprocess.Popen(args, env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)

    def start(self):
        """Start both nodes and subscribe to every device's Images."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image

        name = '"{0}"'.format(self.server_name)
        self.processes['server'] = self._spawn('server_node', 'server.yaml', {
            'server_name': name, 'address': self.address, 'announce': 'true',
            'device': 'mock', 'mock_count': len(self.devices), 'mock_fps': float(self.fps),
            'mock_ids': '[{0}]'.format(', '.join(self.devices))})
        self.processes['client'] = self._spawn('client_node', 'client.yaml', {
            'server_name': name, 'discovery_address': self.address, 'server_endpoint': '""',
            'log_period': 0.0})
        self._context = rclpy.Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node('streamkinect2_demo_subscriber_' + uuid.uuid4().hex[:6],
                                       context=self._context)
        for device in self.devices:
            self._node.create_subscription(Image, '/{0}/depth/image_raw'.format(device),
                                           self._receiver(device), qos_profile_sensor_data)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)

    def _receiver(self, device):
        samples = self.samples[device]

        def receive(msg):
            now_ns = time.time_ns()
            stamp_ns = msg.header.stamp.sec * 1000000000 + msg.header.stamp.nanosec
            samples.append((time.monotonic(), (now_ns - stamp_ns) * 1e-9))
        return receive

    def check_processes(self):
        """Raise RuntimeError if a node has exited."""
        for role, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError('the {0} node exited with status {1}'.format(
                    role, proc.returncode))

    def spin(self, seconds):
        """Deliver callbacks for *seconds* (checking the nodes still run)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._executor.spin_once(timeout_sec=min(0.1, left))
        self.check_processes()

    def figures(self, since):
        """Return ``{device: (Images/s, p50 ms, p99 ms, count)}`` for samples after *since*."""
        now = time.monotonic()
        result = {}
        for device, samples in self.samples.items():
            latencies = sorted(lat for t, lat in samples if t >= since)
            span = max(1e-9, now - since)
            result[device] = (len(latencies) / span, percentile(latencies, 0.5) * 1e3,
                              percentile(latencies, 0.99) * 1e3, len(latencies))
        return result

    def stop(self, timeout=10.0):
        """Stop the subscriber and the nodes (SIGINT, SIGKILL after *timeout* s).

        Return ``{role: exit status}``.
        """
        if self._node is not None:
            self._executor.shutdown(timeout_sec=1.0)
            self._node.destroy_node()
            self._context.try_shutdown()
            self._node = None
        return stop_processes(self.processes, timeout)


def stop_processes(processes, timeout=10.0):
    """Stop the node processes of *processes* (``{role: Popen}``); return their statuses.

    SIGINT to each still running (a node's clean shutdown), then a wait of at most
    *timeout* s for all of them; one still running after that is killed.
    """
    for proc in processes.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    status = {}
    for role, proc in processes.items():
        try:
            status[role] = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            status[role] = proc.wait(5.0)
    return status


def _parser():
    parser = argparse.ArgumentParser(
        prog='python -m streamkinect2_ros.demo',
        description='Mock server node + client node; print live Images/s and latency.')
    parser.add_argument('--duration', type=float, default=20.0,
                        help='seconds to run (0: until Ctrl-C; default 20)')
    parser.add_argument('--mock-count', type=int, default=1, help='mock devices (1)')
    parser.add_argument('--fps', type=float, default=30.0, help='mock frame rate (30)')
    parser.add_argument('--address', default='127.0.0.1',
                        help='interface for the server and discovery (127.0.0.1)')
    parser.add_argument('--quiet', action='store_true', help="hide the nodes' logs")
    return parser


def main(argv=None):
    """Run the demo; return 0 if Images arrived, else 1."""
    args = _parser().parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    pipeline = Pipeline(args.mock_count, args.fps, args.address, args.quiet)
    print('streamkinect2 demo: server {0!r} on {1}, {2} mock device(s) at {3:g} fps; '
          'Images on {4}'.format(pipeline.server_name, args.address, args.mock_count,
                                 args.fps, ', '.join('/{0}/depth/image_raw'.format(d)
                                                     for d in pipeline.devices)),
          flush=True)
    started = time.monotonic()
    error = None
    try:
        pipeline.start()
        while not args.duration or time.monotonic() - started < args.duration:
            tick = time.monotonic()
            pipeline.spin(1.0)
            line = '; '.join(
                '{0}: {1:5.1f} Images/s, latency p50 {2:5.1f} ms p99 {3:5.1f} ms'.format(
                    device, rate, p50, p99) if count else '{0}: waiting'.format(device)
                for device, (rate, p50, p99, count) in pipeline.figures(tick).items())
            print('[{0:5.1f} s] {1}'.format(time.monotonic() - started, line), flush=True)
    except KeyboardInterrupt:
        pass
    except RuntimeError as err:
        error = err
    finally:
        status = pipeline.stop()
    total = pipeline.figures(started)
    received = sum(count for _, _, _, count in total.values())
    print('streamkinect2 demo: {0} Images received; node exit status {1}'.format(
        received, status), flush=True)
    if error is not None:
        print('streamkinect2 demo: {0}'.format(error), file=sys.stderr)
    return 0 if received and error is None else 1


if __name__ == '__main__':
    sys.exit(main())
