"""Benchmark the ROS 2 pipeline on loopback: server node -> client node -> subscriber.

    python bench/bench_ros.py [--devices 4] [--fps 30] [--duration 20] [--warmup 3]
                              [--streams depth[,ir,color]] [--color-raw]
                              [--color-resolution hd|qhd] [--color-quality Q]
                              [--replay NPZ | --synthetic]
                              [--subscriber bench|ros] [--reliable] [--stagger]
                              [--settle SECONDS] [--subscriber-profile]
                              [--profile shipped|none|FILE] [--env NAME=VALUE ...]
                              [--compare CONFIG,CONFIG,... [--runs 3]] [--threads]

The server node (``streamkinect2_ros.server_node``, run by this script with the ``mock``
device backend replaced by a gated replay) replays the real Kinect v2 frames of
``../shared/data`` (``depth/kinect2_room_calibration.npz``; with IR or colour the
synchronised RGB-D sets of ``rgbd/kinect2_sync_rgbd.npz``; ``--synthetic``: the mock's
scene) on ``--devices`` devices; the client node publishes them; a subscriber in another
process takes every device's topics. The devices send nothing until every subscription has
matched, then exactly ``(warmup + duration) x fps`` captures each, so that every Image is
accounted for: sent by the server, received / dropped upstream / dropped in the node /
published by the client node (its ``/diagnostics``), received by the subscriber, and lost
after ``publish()`` (published minus received; the subscriber also counts the losses DDS
reports through the ``message_lost`` event).

Printed: per topic, Images sent, published, received and lost; Images/s delivered and the
capture -> subscriber latency p50 / p99 over the measured window (after ``--warmup``); CPU
time per Image (per capture with several streams) of the server node, the client node and
the subscriber process (psutil: user + system over the window); each process's RSS at the
start and the end of the window (its growth: a long ``--duration`` is the ROS soak; the bench
subscriber keeps a record of every Image, about 140 bytes each).

Subscribers: ``bench`` (default) takes the topics in this process on one node spun with
``spin_once``; ``ros`` runs a subscriber written the way ROS users write one (one node, one
subscription per topic with the sensor-data QoS, ``rclpy.spin``, the default
SingleThreadedExecutor) in a process of its own.

Middleware: ``--profile shipped`` (default) leaves Fast DDS's configuration to the nodes:
the client node then takes the package's profile, ``config/fastdds_large_data.xml``;
``none`` runs them with Fast DDS's defaults (``FASTDDS_BUILTIN_TRANSPORTS=DEFAULT``, a
choice the client node keeps); or a profile file of yours. ``--env`` sets further variables
for the node processes (``RMW_FASTRTPS_PUBLICATION_MODE=...``). The subscriber runs with
Fast DDS's defaults, as a user's would; ``--subscriber-profile`` gives it the nodes'
configuration, with the package's profile unless that chooses another (with the ``bench``
subscriber: one configuration for the whole session). ``--compare shipped,none --runs 3``
runs the configurations alternately in one session and prints each run and the medians; a
configuration is ``shipped``, ``none``, a profile path, or ``env:NAME=VALUE[;NAME=VALUE]``.
``--threads`` adds the CPU per Image of each thread of each process. ``--stagger`` starts
the devices evenly spread over a frame period (free-running sensors) instead of together.

Losses are also printed in time (seconds after the first Image, grouped when less than
0.5 s apart): a hole in every topic of every device at once is a stalled process or
transport, a hole in one topic a slow subscription.
"""
import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from streamkinect2_ros.client_node import FASTDDS_PROFILE  # noqa: E402
from streamkinect2_ros.demo import config_path, percentile, stop_processes  # noqa: E402

STREAMS = ('depth', 'ir', 'color')
DATA = os.path.join(REPO, '..', 'shared', 'data')
DEFAULT_DEPTH = os.path.join(DATA, 'depth', 'kinect2_room_calibration.npz')
DEFAULT_RGBD = os.path.join(DATA, 'rgbd', 'kinect2_sync_rgbd.npz')
#: Variables the configurations set; cleared first so that each run has only its own.
MIDDLEWARE_VARIABLES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                        'FASTDDS_BUILTIN_TRANSPORTS', 'SKIP_DEFAULT_XML_FILE',
                        'RMW_FASTRTPS_PUBLICATION_MODE', 'RMW_FASTRTPS_USE_QOS_FROM_XML')
#: Seconds between every subscription matching and the first capture (``--settle``).
SETTLE_S = 3.0
#: The server process reads its replay from this variable (JSON).
REPLAY_VARIABLE = 'STREAMKINECT2_BENCH_REPLAY'
#: Per stream, the topics (relative to the device) and message types the subscriber takes.
TOPICS = {'depth': [('depth/image_raw', 'Image')],
          'ir': [('ir/image_raw', 'Image')],
          'color': [('color/image_raw/compressed', 'CompressedImage')]}
COLOR_RAW_TOPIC = ('color/image_raw', 'Image')


def cpu_seconds(process):
    """Return the user + system CPU seconds of a psutil process (children excluded)."""
    times = process.cpu_times()
    return times.user + times.system


def thread_seconds(process):
    """Return ``{thread name: CPU seconds}`` of a psutil process (names from /proc)."""
    result = collections.Counter()
    for thread in process.threads():
        try:
            with open('/proc/{0}/task/{1}/comm'.format(process.pid, thread.id)) as comm:
                name = comm.read().strip()
        except OSError:
            name = '?'
        result[name] += thread.user_time + thread.system_time
    return result


def stamp_ns(msg):
    """Return the header stamp of *msg* in nanoseconds."""
    return msg.header.stamp.sec * 1000000000 + msg.header.stamp.nanosec


# --- the server node's replaying devices (in the server node's process) ----------------

def serve_main(argv):
    """Run the server node, its ``mock`` backend replaced (``--serve`` mode).

    The devices are stopped at a gate: nothing is captured until SIGUSR1, then exactly
    ``budget`` captures per device, and nothing after.
    """
    from streamkinect2.mock import MockKinect, Recording
    from streamkinect2_ros import backends, server_node

    spec = json.loads(os.environ[REPLAY_VARIABLE])
    gate = threading.Event()

    class GatedReplay(MockKinect):
        """A mock device that captures only while the gate is open, ``budget`` times."""

        def __init__(self, budget=0, phase=0.0, **kwargs):
            super().__init__(**kwargs)
            self.budget = budget
            self.phase = phase
            self.emitted = 0

        def start(self):
            time.sleep(self.phase)  # the thread's start sets the phase of its captures
            super().start()

        def _emit_capture(self):
            if gate.is_set() and self.emitted < self.budget:
                self.emitted += 1
                super()._emit_capture()

    recording = Recording.load(spec['replay']) if spec['replay'] else None

    def factory(options):
        streams = ['depth'] + [s for s in options.get('streams') or [] if s != 'depth']
        kwargs = {'fps': spec['fps'], 'streams': streams, 'budget': spec['budget']}
        # Staggered: each device starts 1 / (fps x devices) s after the previous one.
        step = 1.0 / spec['fps'] / len(spec['ids']) if spec['stagger'] else 0.0
        if recording is None:
            return [GatedReplay(unique_kinect_id=kinect_id, phase=step if index else 0.0,
                                **kwargs) for index, kinect_id in enumerate(spec['ids'])]
        return [GatedReplay.from_recording(recording, unique_kinect_id=kinect_id,
                                           phase=step if index else 0.0, **kwargs)
                for index, kinect_id in enumerate(spec['ids'])]

    backends.register_backend('mock', factory)  # this process only: the node's mock
    signal.signal(signal.SIGUSR1, lambda signum, frame: gate.set())
    return server_node.main(args=['bench_replay_server'] + argv)


# --- the subscriber ----------------------------------------------------------------------

class Recorder(object):
    """Subscriptions to *topics* on *node*: per topic ``(stamp ns, receive ns)`` records.

    ``lost[topic]`` adds up the samples DDS reports lost (the ``message_lost`` event).
    """

    def __init__(self, node, topics, reliable=False):
        """Subscribe to *topics*, ``[(topic, type name), ...]``."""
        from rclpy.event_handler import SubscriptionEventCallbacks
        from rclpy.qos import qos_profile_sensor_data, QoSProfile
        from sensor_msgs import msg

        qos = QoSProfile(depth=10) if reliable else qos_profile_sensor_data
        self.records = {topic: [] for topic, _ in topics}
        self.lost = {topic: 0 for topic, _ in topics}
        self.subscriptions = []
        for topic, type_name in topics:
            self.subscriptions.append(node.create_subscription(
                getattr(msg, type_name), topic, self._receiver(topic), qos,
                event_callbacks=SubscriptionEventCallbacks(message_lost=self._lost(topic))))

    def _receiver(self, topic):
        records = self.records[topic]

        def receive(msg):
            records.append((stamp_ns(msg), time.time_ns()))
        return receive

    def _lost(self, topic):
        def lost(info):
            self.lost[topic] += info.total_count_change
        return lost

    def result(self):
        """Return ``{'records': ..., 'lost': ...}`` (JSON-able)."""
        return {'records': self.records, 'lost': self.lost}


def subscribe_main(argv):
    """Run the ROS-user subscriber (``--subscribe`` mode) until SIGINT; write its records.

    ``argv``: the output file, ``reliable`` or ``best_effort``, then ``topic:Type`` pairs.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    out, reliability, topics = argv[0], argv[1], [tuple(a.split(':')) for a in argv[2:]]
    rclpy.init()
    node = rclpy.create_node('bench_ros_user_subscriber_' + uuid.uuid4().hex[:6])
    recorder = Recorder(node, topics, reliability == 'reliable')
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        with open(out, 'w') as stream:
            json.dump(recorder.result(), stream)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# --- one run -------------------------------------------------------------------------------

class Run(object):
    """One pipeline: the two nodes, the subscriber, and what they counted."""

    def __init__(self, args, env):
        """Describe the run; *env* holds the middleware variables of its configuration."""
        self.args = args
        self.env = env
        self.devices = ['mock{0}'.format(i) for i in range(args.devices)]
        self.topics = [topic for stream in args.streams for topic in TOPICS[stream]]
        if args.color_raw and 'color' in args.streams:
            self.topics.append(COLOR_RAW_TOPIC)
        self.server_name = 'streamkinect2 bench {0}'.format(uuid.uuid4().hex[:6])
        self.budget = int(round((args.warmup + args.duration) * args.fps))
        self.processes = {}
        self.counters = {}        # (device, key) -> latest client-node diagnostics value
        self.counters_at = 0      # time.time_ns() of the latest client-node diagnostics
        self.latencies = []       # (time ns, device, p50 ms, p99 ms): client node, per 1 s
        self._logs = []
        self._sub_out = None
        self._context = self._node = self._executor = self._recorder = None

    def _env(self, role):
        env = {k: v for k, v in os.environ.items() if k not in MIDDLEWARE_VARIABLES}
        env.update(subscriber_env(self.args, self.env) if role == 'subscriber' else self.env)
        env['PYTHONUNBUFFERED'] = '1'
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE']
        return env

    def _spawn(self, role, command):
        log = tempfile.TemporaryFile(prefix='bench-ros-{0}-'.format(role))
        self._logs.append((role, log))
        env = self._env(role)
        if role == 'server':
            env[REPLAY_VARIABLE] = json.dumps({
                'replay': self.args.replay, 'fps': self.args.fps, 'ids': self.devices,
                'budget': self.budget, 'stagger': self.args.stagger})
        self.processes[role] = subprocess.Popen(command, env=env, stdout=log, stderr=log,
                                                stdin=subprocess.DEVNULL, cwd=REPO)

    @staticmethod
    def _ros_args(params_file, params):
        args = ['--ros-args', '--params-file', config_path(params_file)]
        for name, value in params.items():
            args += ['-p', '{0}:={1}'.format(name, value)]
        return args

    def full_topics(self):
        """Return ``[(absolute topic, type name), ...]`` of every device."""
        return [('/{0}/{1}'.format(device, topic), type_name)
                for device in self.devices for topic, type_name in self.topics]

    def start(self):
        """Start the nodes and the subscriber; wait until every subscription matched."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        args = self.args
        name = '"{0}"'.format(self.server_name)
        streams = '[{0}]'.format(', '.join(args.streams))
        server_params = {'server_name': name, 'address': '127.0.0.1', 'announce': 'true',
                         'device': 'mock', 'mock_count': len(self.devices),
                         'mock_fps': float(args.fps),
                         'mock_ids': '[{0}]'.format(', '.join(self.devices)),
                         'streams': streams}
        if args.color_resolution is not None:
            server_params['color_resolution'] = args.color_resolution
        if args.color_quality is not None:
            server_params['color_quality'] = args.color_quality
        self._spawn('server', [sys.executable, os.path.abspath(__file__), '--serve']
                    + self._ros_args('server.yaml', server_params))
        client_params = {'server_name': name, 'discovery_address': '127.0.0.1',
                         'server_endpoint': '""', 'log_period': 0.0, 'streams': streams,
                         'qos_reliability': 'reliable' if args.reliable else 'best_effort'}
        self._spawn('client', [sys.executable, '-m', 'streamkinect2_ros.client_node']
                    + self._ros_args('client.yaml', client_params))

        self._context = rclpy.Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self._node = rclpy.create_node('bench_ros_' + uuid.uuid4().hex[:6],
                                       context=self._context)
        self._node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                       10)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        if args.subscriber == 'bench':
            self._recorder = Recorder(self._node, self.full_topics(), args.reliable)
        else:
            handle, self._sub_out = tempfile.mkstemp(prefix='bench-ros-sub-', suffix='.json')
            os.close(handle)
            self._spawn('subscriber', [
                sys.executable, os.path.abspath(__file__), '--subscribe', self._sub_out,
                'reliable' if args.reliable else 'best_effort'] + [
                '{0}:{1}'.format(topic, type_name) for topic, type_name in self.full_topics()])

        def matched():
            return all(self._node.count_publishers(topic) >= 1
                       and self._node.count_subscribers(topic) >= 1
                       for topic, _ in self.full_topics())
        self.spin_until(matched, 60.0, 'the client node publishing every topic with its '
                        'subscriber')
        # Discovery both ways (the writers match the readers too) and settling: with 1 s
        # here, 1 run in 3 to 1 in 11 lost one 0.1 to 0.4 s stretch of every topic of every
        # device at once, 0.4 to 0.7 s after the first Image, its subscriber idle and
        # waiting (4 devices, depth + IR + qhd colour; also seen with 1 device); with 3 s,
        # none in 25 runs (README).
        self.spin(args.settle)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            values = {value.key: value.value for value in status.values}
            if 'published' in values:  # a client-node device status
                for key, value in values.items():
                    self.counters[(status.hardware_id, key)] = value
                self.counters_at = time.time_ns()
                self.latencies.append((self.counters_at, status.hardware_id,
                                       float(values.get('latency_p50_ms', 'nan')),
                                       float(values.get('latency_p99_ms', 'nan'))))

    def spin(self, seconds):
        """Deliver callbacks for *seconds* (checking the nodes still run)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline -
                                                               time.monotonic())))
        self.check_processes()

    def spin_until(self, predicate, timeout, what):
        """Spin until *predicate()*; raise RuntimeError after *timeout* s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError('timed out after {0} s waiting for {1}'.format(
                    timeout, what))
            self.spin(0.05)

    def check_processes(self):
        """Raise RuntimeError if a process of the run has exited."""
        for role, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError('the {0} process exited with status {1}:\n{2}'.format(
                    role, proc.returncode, self.log(role)))

    def log(self, role):
        """Return what process *role* printed (its last 3000 characters)."""
        for name, log in self._logs:
            if name == role:
                log.seek(0)
                return log.read().decode(errors='replace')[-3000:]
        return ''

    def measure(self):
        """Open the gate, measure, let the captures drain; return the figures (a dict)."""
        args = self.args
        procs = {role: psutil.Process(p.pid) for role, p in self.processes.items()}
        if args.subscriber == 'bench':
            procs['subscriber'] = psutil.Process()
        self.processes['server'].send_signal(signal.SIGUSR1)
        opened_ns = time.time_ns()
        self.spin(args.warmup)
        cpu0 = {role: cpu_seconds(p) for role, p in procs.items()}
        threads0 = {role: thread_seconds(p) for role, p in procs.items()}
        rss0 = {role: p.memory_info().rss for role, p in procs.items()}
        window = [time.time_ns(), None]
        self.spin(args.duration)
        window[1] = time.time_ns()
        cpu = {role: cpu_seconds(p) - cpu0[role] for role, p in procs.items()}
        threads = {role: thread_seconds(p) - threads0[role] for role, p in procs.items()}
        rss = {role: (rss0[role], p.memory_info().rss) for role, p in procs.items()}
        load = os.getloadavg()[0]
        # The last captures; then until the client node's counters stop moving (a
        # pipeline that fell behind drains its queues), and a second for the subscriber.
        sent_until = opened_ns + int(self.budget / args.fps * 1e9)
        self.spin(max(0.0, (sent_until - time.time_ns()) * 1e-9))
        deadline = time.monotonic() + 120.0
        previous = None
        while time.monotonic() < deadline:
            seen = self.counters_at
            self.spin_until(lambda: self.counters_at > seen, 10.0,
                            'client-node diagnostics after the last capture')
            current = sorted((key, value) for key, value in self.counters.items()
                             if key[1].endswith(('received', 'published', 'dropped',
                                                 'dropped_in_node')))
            if current == previous:
                break
            previous = current
        self.spin(1.0)
        return {'window_ns': window, 'cpu': cpu, 'threads': threads, 'load': load,
                'rss': rss}

    def stop(self):
        """Stop everything; return the subscriber's records and DDS losses."""
        result = None
        if self._recorder is not None:
            result = self._recorder.result()
        subscriber = self.processes.pop('subscriber', None)
        if subscriber is not None:
            if subscriber.poll() is None:
                subscriber.send_signal(signal.SIGINT)
            try:
                subscriber.wait(20.0)
            except subprocess.TimeoutExpired:
                subscriber.kill()
                subscriber.wait(5.0)
            try:
                with open(self._sub_out) as stream:
                    result = json.load(stream)
            except ValueError:
                result = None
            os.unlink(self._sub_out)
        if self._node is not None:
            self._executor.shutdown(timeout_sec=1.0)
            self._node.destroy_node()
            self._context.try_shutdown()
            self._node = None
        stop_processes(self.processes, 15.0)
        for _, log in self._logs:
            log.close()
        return result


def run_once(args, env):
    """Run the pipeline once with the middleware variables *env*; return its figures."""
    run = Run(args, env)
    try:
        run.start()
        measured = run.measure()
    finally:
        subscribed = run.stop()
    if subscribed is None:
        raise RuntimeError('the subscriber wrote no records')
    return figures(args, run, measured, subscribed)


def figures(args, run, measured, subscribed):
    """Return the figures of one run (a dict) from what was counted."""
    start_ns, end_ns = measured['window_ns']
    period_s = end_ns * 1e-9 - start_ns * 1e-9
    counters = run.counters
    result = {'topics': {}, 'cpu': measured['cpu'], 'threads': measured['threads'],
              'load': measured['load'], 'rss': measured['rss'],
              'window_s': period_s, 'sent_per_device': run.budget}
    # Depth, capture -> client node: its 1 s windows within the measured window.
    inside = [(p50, p99) for t, _, p50, p99 in run.latencies
              if start_ns + 1e9 <= t <= end_ns and p50 == p50]
    result['client_p50_ms'] = statistics.median(p50 for p50, _ in inside) if inside \
        else float('nan')
    result['client_p99_ms'] = statistics.median(p99 for _, p99 in inside) if inside \
        else float('nan')
    for topic, _ in run.topics:
        stream = topic.split('/')[0]
        prefix = '' if stream == 'depth' else stream + '_'
        received = lost_dds = 0
        latencies = []
        rate = 0.0
        published = node_received = dropped = node_dropped = 0
        lost_by_device = []
        gaps = []
        for device in run.devices:
            name = '/{0}/{1}'.format(device, topic)
            records = subscribed['records'][name]
            received += len(records)
            lost_dds += subscribed['lost'][name]
            inside = sorted(stamp for stamp, _ in records if start_ns <= stamp < end_ns)
            if len(inside) > 1:
                rate += (len(inside) - 1) / ((inside[-1] - inside[0]) * 1e-9)
            latencies += [(recv - stamp) * 1e-9 for stamp, recv in records
                          if start_ns <= stamp < end_ns]

            def counter(key):
                return int(counters.get((device, prefix + key), 0))
            published += counter('published')
            lost_by_device.append(counter('published') - len(records))
            node_received += counter('received')
            dropped += counter('dropped')
            node_dropped += counter('dropped_in_node')
            gaps += loss_gaps(sorted(stamp for stamp, _ in records), args.fps, device,
                              topic)
        if topic == COLOR_RAW_TOPIC[0]:  # decoded only for subscribers: its own count
            published = sum(int(counters.get((d, 'color_decoded'), 0)) for d in run.devices)
        latencies.sort()
        result['topics'][topic] = {
            'sent': run.budget * len(run.devices), 'received_by_node': node_received,
            'dropped_upstream': dropped, 'dropped_in_node': node_dropped,
            'published': published, 'received': received, 'lost': published - received,
            'lost_dds': lost_dds, 'lost_by_device': lost_by_device, 'gaps': gaps,
            'rate': rate,
            'count': len(latencies),
            'p50_ms': percentile(latencies, 0.5) * 1e3,
            'p99_ms': percentile(latencies, 0.99) * 1e3,
            'max_ms': latencies[-1] * 1e3 if latencies else float('nan')}
    result['first_stamp_ns'] = min(
        (records[0][0] for records in subscribed['records'].values() if records), default=0)
    return result


def loss_gaps(stamps, fps, device, topic):
    """Return ``[(stamp ns, missing, device, topic), ...]``: the holes in a stream's stamps.

    *stamps* (sorted) come one frame period apart; a hole of more than half a period more is
    ``round(hole / period) - 1`` missing Images after the stamp.
    """
    period_ns = 1e9 / fps
    return [(before, int(round((after - before) / period_ns)) - 1, device, topic)
            for before, after in zip(stamps, stamps[1:]) if after - before > 1.5 * period_ns]


def loss_events(result, merge_s=0.5):
    """Return the losses of a run grouped in time: ``[(t s, Images, devices, topics)]``.

    *t* counts from the first Image received; holes less than *merge_s* apart are one event
    (a stalled process loses every topic at once; a slow topic loses on its own).
    """
    gaps = sorted(gap for fig in result['topics'].values() for gap in fig['gaps'])
    events = []
    for stamp, missing, device, topic in gaps:
        t = (stamp - result['first_stamp_ns']) * 1e-9
        if events and t - events[-1][0] < merge_s:
            events[-1][1] += missing
            events[-1][2].add(device)
            events[-1][3].add(topic)
        else:
            events.append([t, missing, {device}, {topic}])
    return events


# --- printing --------------------------------------------------------------------------

def describe(args):
    """Return the heading line of the benchmark."""
    return ('streamkinect2_ros pipeline on loopback: {0} device(s) at {1:g} fps, streams {2}, '
            '{3}, subscriber: {4}{5}; {6:g} s measured after {7:g} s').format(
        args.devices, args.fps, ','.join(args.streams),
        'replaying ' + os.path.basename(args.replay) if args.replay else 'synthetic scene',
        'this process (spin_once)' if args.subscriber == 'bench'
        else 'a ROS-user process (rclpy.spin)', ''.join(
            (', reliable' if args.reliable else '', ', staggered' if args.stagger else '')),
        args.duration, args.warmup)


def print_run(args, result, label=''):
    """Print the figures of one run."""
    print('  {0}(1-min load {1:.2f})'.format(label + ' ' if label else '', result['load']))
    print('  {0:<28s} {1:>6s} {2:>9s} {3:>8s} {4:>6s} {5:>5s} {6:>9s} {7:>8s} {8:>8s}'.format(
        'topic (all devices)', 'sent', 'published', 'received', 'lost', 'dds', 'Images/s',
        'p50 ms', 'p99 ms'))
    for topic, fig in result['topics'].items():
        print('  {0:<28s} {1:6d} {2:9d} {3:8d} {4:6d} {5:5d} {6:9.1f} {7:8.2f} {8:8.2f}'.format(
            topic, fig['sent'], fig['published'], fig['received'], fig['lost'],
            fig['lost_dds'], fig['rate'], fig['p50_ms'], fig['p99_ms']))
    depth = result['topics']['depth/image_raw']
    print('  client node (depth): received {0}, dropped upstream {1}, dropped in the node {2}, '
          'published {3}; capture -> client node p50 / p99 {4:.2f} / {5:.2f} ms (median of '
          'its 1 s windows)'.format(depth['received_by_node'], depth['dropped_upstream'],
                                    depth['dropped_in_node'], depth['published'],
                                    result['client_p50_ms'], result['client_p99_ms']))
    if any(fig['lost'] for fig in result['topics'].values()):
        print('  lost per device: {0}'.format('; '.join(
            '{0} {1}'.format(topic, fig['lost_by_device'])
            for topic, fig in result['topics'].items())))
        print('  losses in time (s after the first Image: Images, devices, topics): {0}'.format(
            '; '.join('{0:.1f}: {1}, {2}, {3}'.format(t, missing, len(devices), len(topics))
                      for t, missing, devices, topics in loss_events(result))))
    images = max(1, sum(fig['count'] for topic, fig in result['topics'].items()
                        if topic != COLOR_RAW_TOPIC[0]))
    captures = max(1, depth['count'])
    unit, count = ('Image', images) if len(args.streams) == 1 else ('capture', captures)
    cpu, window = result['cpu'], result['window_s']
    shares = ['{0} {1:.2f} ms ({2:.0f} %)'.format(
        role, cpu[role] / count * 1e3, cpu[role] / window * 100)
        for role in ('server', 'client', 'subscriber')]
    print('  CPU per {0}: {1}'.format(unit, ', '.join(shares)))
    print('  RSS over the measured window: {0}'.format(', '.join(
        '{0} {1:.1f} -> {2:.1f} MiB ({3:+.1f})'.format(
            role, before / 2 ** 20, after / 2 ** 20, (after - before) / 2 ** 20)
        for role, (before, after) in result['rss'].items())))
    if args.threads:
        for role in ('server', 'client', 'subscriber'):
            print('    {0} threads, CPU ms per {1}: {2}'.format(role, unit, ', '.join(
                '{0} {1:.2f}'.format(name, seconds / count * 1e3)
                for name, seconds in result['threads'][role].most_common()
                if seconds / count * 1e3 >= 0.01)))


def summary(result):
    """Return the headline figures of one run: delivered Images/s, lost, p99, CPU/Image."""
    topics = result['topics'].values()
    images = max(1, sum(fig['count'] for fig in topics))
    return {'Images/s': sum(fig['rate'] for fig in topics),
            'lost': sum(fig['lost'] for fig in topics),
            'lost %': 100.0 * sum(fig['lost'] for fig in topics) / max(
                1, sum(fig['published'] for fig in topics)),
            'p50 ms': max(fig['p50_ms'] for fig in topics),
            'p99 ms': max(fig['p99_ms'] for fig in topics),
            'CPU server ms': result['cpu']['server'] / images * 1e3,
            'CPU client ms': result['cpu']['client'] / images * 1e3,
            'CPU subscriber ms': result['cpu']['subscriber'] / images * 1e3,
            'load': result['load']}


def subscriber_env(args, env):
    """Return the middleware variables of the subscriber, given the nodes' *env*.

    ``{}`` (Fast DDS's defaults, as a user's subscriber has them), or with
    ``--subscriber-profile`` the nodes' variables with the package's profile unless they
    choose a configuration of their own.
    """
    if not args.subscriber_profile:
        return {}
    chosen = dict(env)
    if not any(name in chosen for name in ('FASTDDS_DEFAULT_PROFILES_FILE',
                                           'FASTRTPS_DEFAULT_PROFILES_FILE',
                                           'FASTDDS_BUILTIN_TRANSPORTS')):
        chosen['FASTDDS_DEFAULT_PROFILES_FILE'] = config_path(FASTDDS_PROFILE)
    return chosen


def configuration_env(spec):
    """Return the middleware variables of configuration *spec* (see the module doc)."""
    if spec == 'shipped':  # the client node takes it by itself
        return {}
    if spec == 'none':  # a choice of Fast DDS configuration: the client node keeps it
        return {'FASTDDS_BUILTIN_TRANSPORTS': 'DEFAULT'}
    if spec.startswith('env:'):
        return dict(item.split('=', 1) for item in spec[4:].split(';') if item)
    if not os.path.exists(spec):
        raise SystemExit('configuration {0!r}: not shipped, none, env:... nor a file'.format(
            spec))
    return {'FASTDDS_DEFAULT_PROFILES_FILE': os.path.abspath(spec)}


def main(argv=None):
    """Run the benchmark and print the figures."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['--serve']:
        return serve_main(argv[1:])
    if argv[:1] == ['--subscribe']:
        return subscribe_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=20.0, help='measured seconds')
    parser.add_argument('--warmup', type=float, default=3.0,
                        help='seconds of streaming before measuring')
    parser.add_argument('--devices', '--mock-count', type=int, default=1, dest='devices')
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
    parser.add_argument('--replay', default=None, metavar='NPZ',
                        help='recorded frames to replay (default: the real depth frames, or '
                             'the real RGB-D sets with ir or color)')
    parser.add_argument('--synthetic', action='store_true', help="the mock's scene instead")
    parser.add_argument('--subscriber', choices=('bench', 'ros'), default='bench')
    parser.add_argument('--stagger', action='store_true',
                        help='spread the devices over a frame period (default: together)')
    parser.add_argument('--reliable', action='store_true',
                        help='reliable publishers (qos_reliability) and subscriber')
    parser.add_argument('--profile', default='shipped',
                        help='shipped (default), none, or a Fast DDS XML profile')
    parser.add_argument('--env', action='append', default=[], metavar='NAME=VALUE',
                        help='a variable for the node processes (repeatable)')
    parser.add_argument('--subscriber-profile', action='store_true',
                        help="the subscriber takes the package's Fast DDS profile (or the "
                             "nodes' configuration); by default it runs with Fast DDS's "
                             "defaults, as a user's would")
    parser.add_argument('--settle', type=float, default=SETTLE_S, metavar='SECONDS',
                        help='seconds between the subscriptions matching and the first '
                             'capture (default: %(default)s; see docs/ros.md on 1 s)')
    parser.add_argument('--threads', action='store_true',
                        help='print the CPU per Image of each thread of each process')
    parser.add_argument('--compare', default=None, metavar='CONFIG,CONFIG',
                        help='run these configurations alternately (see the module doc)')
    parser.add_argument('--runs', type=int, default=3, help='runs per configuration')
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.streams.split(',')]
    if 'depth' not in names or set(names) - set(STREAMS):
        parser.error('--streams: depth and any of ir, color')
    args.streams = tuple(stream for stream in STREAMS if stream in names)
    if args.synthetic:
        args.replay = ''
    elif args.replay is None:
        args.replay = DEFAULT_DEPTH if args.streams == ('depth',) else DEFAULT_RGBD
    if args.replay and not os.path.exists(args.replay):
        print('note: {0} not found; replaying the synthetic scene'.format(args.replay))
        args.replay = ''
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    # A domain of its own (unless given): no other ROS process of this machine shares the
    # topics and counts (domains 1 to 100 have ports in any kernel's range).
    os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
    extra = dict(item.split('=', 1) for item in args.env)

    print(describe(args), flush=True)
    if args.subscriber == 'bench' and args.subscriber_profile:
        # This process's participant: one configuration for every run (read once).
        if args.compare is not None:
            parser.error('--subscriber-profile with --compare: use --subscriber ros')
        os.environ.update(subscriber_env(args, dict(configuration_env(args.profile),
                                                    **extra)))
    print('  subscriber middleware: {0}'.format(
        'as the nodes, or config/{0}'.format(FASTDDS_PROFILE) if args.subscriber_profile
        else "Fast DDS's defaults"))
    if args.compare is None:
        env = dict(configuration_env(args.profile), **extra)
        print('  middleware: {0}'.format(' '.join(
            '{0}={1}'.format(k, v) for k, v in sorted(env.items()))
            or "the client node's default (config/{0})".format(FASTDDS_PROFILE)))
        result = run_once(args, env)
        print_run(args, result)
        return 0 if all(fig['received'] for fig in result['topics'].values()) else 1

    configs = [spec.strip() for spec in args.compare.split(',') if spec.strip()]
    runs = collections.defaultdict(list)
    for index in range(args.runs):
        for spec in configs:
            env = dict(configuration_env(spec), **extra)
            result = run_once(args, env)
            print_run(args, result, '[{0} run {1}]'.format(spec, index + 1))
            runs[spec].append(summary(result))
            sys.stdout.flush()
    print('medians of {0} runs per configuration, alternated in one session:'.format(
        args.runs))
    keys = list(next(iter(runs.values()))[0])
    print('  {0:<24s} '.format('configuration') + ' '.join('{0:>17s}'.format(k) for k in keys))
    for spec in configs:
        print('  {0:<24s} '.format(spec[:24]) + ' '.join(
            '{0:17.2f}'.format(statistics.median(run[key] for run in runs[spec]))
            for key in keys))
    return 0


if __name__ == '__main__':
    sys.exit(main())
