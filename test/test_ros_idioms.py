"""ROS idioms of the nodes: loggers, QoS overrides, ``use_sim_time``, parameter constraints.

- Every line of a node is under the node's ROS logger (its name, in its namespace): a
  fatal error at start as much as the library's lines, and in a process holding two
  nodes each library line goes to the node whose IOLoop logged it, not to both.
- ``qos_overrides./<topic>.publisher.<policy>`` (rclpy's ``QoSOverridingOptions``) sets
  the QoS of one topic of the client node, starting from ``qos_reliability`` and
  ``qos_depth``; the override parameters are read-only, as rclpy declares them.
- With ``use_sim_time`` and a ``/clock`` publisher, ``stamp_source: receive`` stamps with
  the node's clock (sim time).
- The allowed values of string parameters are in their descriptors'
  ``additional_constraints`` and are enforced from there, at start and at runtime.

The nodes run as subprocesses (as ``ros2 run`` starts them) or, where the test needs
two nodes in one process, in this process on a private context.
"""
import logging
import re
import subprocess
import sys
import time

import pytest

ros_helpers = pytest.importorskip('ros_helpers')  # sets the ROS environment first
rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402, I100
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, qos_profile_sensor_data,  # noqa: E402
                       QoSProfile, ReliabilityPolicy)
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from streamkinect2_ros.client_node import ClientNode  # noqa: E402
from streamkinect2_ros.params import declare_all, ParamSpec  # noqa: E402
from streamkinect2_ros.rosutil import create_overridable_publisher, LoopNode  # noqa: E402
from streamkinect2_ros.server_node import ServerNode  # noqa: E402

LOOPBACK = ros_helpers.LOOPBACK
CLIENT = 'streamkinect2_client'
SERVER = 'streamkinect2_server'


def logger_name(namespace, node_name):
    """Return the ROS logger name of node *node_name* in *namespace* (rcl's rule)."""
    return '.'.join(part for part in namespace.split('/') + [node_name] if part)


def lines_of(output, logger):
    """Return the lines of *output* logged by ROS logger *logger*."""
    return [line for line in output.splitlines()
            if re.search(r'\[\w+\] \[[\d.]+\] \[{0}\]: '.format(re.escape(logger)), line)]


def start_server(name, device, port, **params):
    """Start a mock server node on loopback with control port *port*."""
    overrides = {'address': LOOPBACK, 'server_name': '"{0}"'.format(name),
                 'mock_ids': '[{0}]'.format(device), 'mock_fps': 15.0, 'announce': 'false',
                 'control_port': port, 'diagnostics_period': 0.0}
    overrides.update(params)
    return ros_helpers.NodeProcess('server_node', overrides)


def spin_params(sub, target):
    """Return a parameter client of node *target*, its services ready."""
    client = AsyncParameterClient(sub.node, target)
    sub.spin_until(client.services_are_ready, 20.0, 'parameter services of ' + target)
    return client


# --- point 8: every line of a node under the node's logger -------------------------------

@pytest.mark.parametrize('module,node_name,namespace,params', [
    ('server_node', SERVER, '', {'control_port': 70000}),
    ('client_node', CLIENT, '/sk2ns', {'stamp_source': 'sometime'}),
], ids=['server', 'client in a namespace'])
def test_a_node_that_fails_at_start_logs_under_its_own_name(
        module, node_name, namespace, params):
    # Before: [FATAL] [ServerNode] / [ClientNode], the Python class name.
    namespace = namespace and namespace + ros_helpers.unique('_')
    with ros_helpers.NodeProcess(module, params, namespace=namespace) as node:
        assert node.proc.wait(60) == 1
        out = node.output()
    fatal = [line for line in out.splitlines() if '[FATAL]' in line]
    assert len(fatal) == 1, out
    assert lines_of(fatal[0], logger_name(namespace, node_name)), out
    assert 'ServerNode' not in out and 'ClientNode' not in out, out


def test_a_node_whose_arguments_rclpy_refuses_logs_under_its_name():
    # Before: a Python traceback from rclpy.init and nothing under the node's name.
    args = [sys.executable, '-m', 'streamkinect2_ros.server_node', '--ros-args', '-r',
            '__node:=1bad']
    done = subprocess.run(args, env=ros_helpers.node_env(), cwd=ros_helpers.REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=60, text=True)
    assert done.returncode == 1, done.stdout
    assert 'Traceback' not in done.stdout, done.stdout
    fatal = lines_of(done.stdout, SERVER)
    assert len(fatal) == 1 and '[FATAL]' in fatal[0] and '__node:=1bad' in fatal[0], \
        done.stdout


def test_library_lines_go_to_the_node_that_owns_them(capfd):
    # A server node and a client node in one process (as a composed executable would
    # run them): the client's discovery lines are the client's alone, the server's
    # announcement the server's. Before: every library line went to both nodes.
    name = ros_helpers.unique('owner ')
    namespace = '/' + ros_helpers.unique('own')
    context = rclpy.Context()
    rclpy.init(context=context)
    nodes = []
    try:
        nodes.append(ServerNode(context=context, parameter_overrides=[
            Parameter('address', value=LOOPBACK), Parameter('announce', value=True),
            Parameter('server_name', value=name), Parameter('mock_fps', value=5.0),
            Parameter('diagnostics_period', value=0.0)]))
        nodes.append(ClientNode(context=context, namespace=namespace, parameter_overrides=[
            Parameter('discovery_address', value=LOOPBACK),
            Parameter('server_name', value=name), Parameter('streams', value=['depth']),
            Parameter('log_period', value=0.0), Parameter('diagnostics_period', value=0.0)]))
        client = nodes[1]
        executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            executor.add_node(node)
        deadline = time.monotonic() + 30.0
        while client.connected_server != name:
            assert time.monotonic() < deadline, 'the client did not find the server'
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown(timeout_sec=1.0)
    finally:
        for node in reversed(nodes):
            node.close()
            node.destroy_node()
        context.try_shutdown()
    captured = capfd.readouterr()
    out = captured.out + captured.err
    found = [line for line in out.splitlines()
             if 'streamkinect2.discovery: Found server {0!r}'.format(name) in line]
    assert found, out
    assert found == lines_of('\n'.join(found), logger_name(namespace, CLIENT)), found
    announced = [line for line in out.splitlines()
                 if '{0!r} announced over Zeroconf'.format(name) in line]
    assert announced, out
    assert announced == lines_of('\n'.join(announced), SERVER), announced


def test_library_and_package_records_follow_the_nodes_log_level(capfd):
    # The node's logger at DEBUG (as --log-level <node>:=debug sets it): the library's
    # debug records show under it, and so do this package's own Python records (the
    # IOLoop thread's). Before: only INFO and above, and streamkinect2_ros not at all.
    node_name = ros_helpers.unique('sk2_level_')
    rclpy.logging.set_logger_level(node_name, rclpy.logging.LoggingSeverity.DEBUG)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = LoopNode(node_name, context=context)
        try:
            logging.getLogger('streamkinect2.discovery').debug('debug line %s', node_name)
            logging.getLogger('streamkinect2_ros.ioloop').warning(
                'package line %s', node_name)
        finally:
            node.close()
            node.destroy_node()
        logging.getLogger('streamkinect2.discovery').warning('after close %s', node_name)
    finally:
        context.try_shutdown()
    captured = capfd.readouterr()
    lines = lines_of(captured.out + captured.err, node_name)
    assert any('[DEBUG]' in line and 'streamkinect2.discovery: debug line' in line
               for line in lines), lines
    assert any('[WARN]' in line and 'streamkinect2_ros.ioloop: package line' in line
               for line in lines), lines
    assert not any('after close' in line for line in lines), lines
    for name in ('streamkinect2', 'streamkinect2_ros'):
        assert not [h for h in logging.getLogger(name).handlers
                    if getattr(h, 'ros_logger', None) is not None], name


# --- QoS overrides, read-only, and the constraints of a running client node --------------

def test_qos_overrides_per_topic_start_from_qos_reliability_and_qos_depth(tmp_path):
    device = ros_helpers.unique('qos_')
    namespace = '/' + ros_helpers.unique('q')
    base = '{0}/{1}'.format(namespace, device)
    port = ros_helpers.free_port()
    params_file = tmp_path / 'client.yaml'
    params_file.write_text('\n'.join([
        '/**:',
        '  ros__parameters:',
        '    qos_depth: 3',
        '    qos_overrides:',
        '      {0}/depth/image_raw:'.format(base),
        '        publisher:',
        '          reliability: reliable',
        '          depth: 7',
        '      {0}/color/camera_info:'.format(base),
        '        publisher:',
        '          durability: transient_local', '']))
    topics = {stream: '{0}/{1}'.format(base, stream) for stream in (
        'depth/image_raw', 'ir/image_raw', 'color/camera_info', 'color/image_raw/compressed',
        'depth/image_raw/compressedDepth')}
    with start_server(ros_helpers.unique('qos '), device, port), \
            ros_helpers.NodeProcess('client_node', {
                'server_endpoint': 'tcp://{0}:{1}'.format(LOOPBACK, port),
                'log_period': 0.0, 'diagnostics_period': 0.0}, str(params_file),
                namespace) as client, \
            ros_helpers.TestSubscriber() as sub:
        def profiles():
            return {key: [info.qos_profile
                          for info in sub.node.get_publishers_info_by_topic(topic)]
                    for key, topic in topics.items()}
        sub.spin_until(lambda: all(profiles().values()), 60.0, 'the publishers')
        seen = {key: found[0] for key, found in profiles().items()}
        # The overrides, and the others as qos_reliability says (best_effort).
        assert seen['depth/image_raw'].reliability == ReliabilityPolicy.RELIABLE
        assert seen['color/camera_info'].durability == DurabilityPolicy.TRANSIENT_LOCAL
        for key in ('ir/image_raw', 'color/image_raw/compressed',
                    'depth/image_raw/compressedDepth', 'color/camera_info'):
            assert seen[key].reliability == ReliabilityPolicy.BEST_EFFORT, key
        for key in ('depth/image_raw', 'ir/image_raw'):
            assert seen[key].durability == DurabilityPolicy.VOLATILE, key
        # The parameters: per topic, from qos_depth unless overridden, read-only.
        params = spin_params(sub, namespace + '/' + CLIENT)
        names = ['qos_overrides.{0}.publisher.{1}'.format(topics[key], policy)
                 for key, policy in (('depth/image_raw', 'depth'),
                                     ('depth/image_raw', 'reliability'),
                                     ('ir/image_raw', 'depth'),
                                     ('ir/image_raw', 'reliability'),
                                     ('ir/image_raw', 'history'),
                                     ('color/camera_info', 'durability'))]
        values = sub.spin_future(params.get_parameters(names), 10.0).values
        assert [values[0].integer_value, values[1].string_value, values[2].integer_value,
                values[3].string_value, values[4].string_value, values[5].string_value] == [
            7, 'reliable', 3, 'best_effort', 'keep_last', 'transient_local'], values
        described = sub.spin_future(params.describe_parameters(names), 10.0).descriptors
        assert all(d.read_only for d in described), described
        refused = sub.spin_future(params.set_parameters(
            [Parameter(names[3], value='reliable')]), 10.0).results[0]
        assert not refused.successful

        # Point 4 on the same node: allowed values in the descriptors, enforced.
        described = {d.name: d for d in sub.spin_future(params.describe_parameters(
            ['stamp_source', 'qos_reliability', 'compressed_depth_format', 'streams']),
            10.0).descriptors}
        assert described['stamp_source'].additional_constraints == \
            'one of: capture, capture_corrected, receive'
        assert described['qos_reliability'].additional_constraints == \
            'one of: best_effort, reliable'
        assert described['compressed_depth_format'].additional_constraints == \
            'one of: png, rvl'
        assert described['streams'].additional_constraints == \
            'each one of: depth, ir, color'
        refused = sub.spin_future(params.set_parameters(
            [Parameter('stamp_source', value='sometime')]), 10.0).results[0]
        assert not refused.successful
        assert 'capture, capture_corrected, receive' in refused.reason, refused.reason
        assert 'Traceback' not in client.output(), client.output()


def test_a_publisher_made_again_keeps_its_override_and_the_default_stays():
    # A device that goes and comes back gets its publishers made again: the override
    # parameters are declared once, and the node's default profile is never written.
    topic = '/' + ros_helpers.unique('again') + '/depth/image_raw'
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('sk2_qos_again', context=context, parameter_overrides=[
            Parameter('qos_overrides.{0}.publisher.reliability'.format(topic),
                      value='reliable')])
        try:
            default = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=3,
                                 reliability=ReliabilityPolicy.BEST_EFFORT)
            for _ in range(2):
                pub = create_overridable_publisher(node, Image, topic, default)
                assert pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                assert pub.qos_profile.depth == 3
                node.destroy_publisher(pub)
            assert default.reliability == ReliabilityPolicy.BEST_EFFORT
            other = create_overridable_publisher(node, Image, topic + '_other', default)
            assert other.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
            assert sorted(name for name in node.get_parameters_by_prefix(
                'qos_overrides.' + topic + '.publisher')) == [
                'depth', 'durability', 'history', 'reliability']
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()


def test_a_bad_qos_override_stops_the_node_naming_it():
    name = 'qos_overrides./t/dev/depth/image_raw.publisher.reliability'
    out = ros_helpers.failed_start_output('client_node', {
        'server_endpoint': 'tcp://127.0.0.1:9', name: 'sometimes'}, 'qos ')
    fatal = [line for line in out.splitlines() if '[FATAL]' in line]
    assert len(fatal) == 1, out
    assert name in fatal[0] and 'best_effort' in fatal[0] and 'reliable' in fatal[0], out


# --- use_sim_time ------------------------------------------------------------------------

def test_receive_stamps_and_diagnostics_follow_sim_time():
    device = ros_helpers.unique('sim_')
    namespace = '/' + ros_helpers.unique('s')
    name = ros_helpers.unique('sim ')
    sim_start_ns = 1000 * 10 ** 9  # far from wall time (about 1.8e18 ns)
    published = []
    with start_server(name, device, ros_helpers.free_port(), announce='true') as server, \
            ros_helpers.NodeProcess('client_node', {
                'server_name': '"{0}"'.format(name), 'discovery_address': LOOPBACK,
                'use_sim_time': 'true', 'stamp_source': 'receive',
                'streams': '[depth]', 'log_period': 0.0, 'diagnostics_period': 0.5},
                namespace=namespace) as client, \
            ros_helpers.TestSubscriber() as sub:
        clock = sub.node.create_publisher(Clock, '/clock', 10)

        def tick():
            now = sim_start_ns + len(published) * 100 * 10 ** 6  # 0.1 s per 50 ms
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(now, 10 ** 9)
            clock.publish(msg)
            published.append(now)
        sub.node.create_timer(0.05, tick)
        images = []
        statuses = []
        sub.node.create_subscription(Image, '{0}/{1}/depth/image_raw'.format(
            namespace, device), images.append, qos_profile_sensor_data)
        sub.node.create_subscription(DiagnosticArray, '/diagnostics', lambda msg: statuses.append(
            msg) if any(s.name.startswith(CLIENT) for s in msg.status) else None, 10)

        def stamp(msg):
            return msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
        sub.spin_until(lambda: sum(1 for m in images if stamp(m)) >= 3 and any(
            stamp(m) for m in statuses), 60.0, 'sim-time stamped Images and diagnostics')
        latest = published[-1]
        # Before the first /clock a node's sim time is 0; after, it is what /clock says.
        stamps = [stamp(m) for m in images + statuses if stamp(m)]
        assert all(sim_start_ns <= s <= latest for s in stamps), (stamps, latest)

        # Point 8 with a real subprocess: the library's discovery line is the node's.
        found = [line for line in client.output().splitlines() if 'Found server' in line]
        assert found and found == lines_of('\n'.join(found), logger_name(namespace, CLIENT))
        assert 'streamkinect2.discovery: Found server' in found[0]

        # Point 4 on the server node: allowed values in the descriptors.
        params = spin_params(sub, '/' + SERVER)
        described = {d.name: d for d in sub.spin_future(params.describe_parameters(
            ['device', 'color_resolution', 'freenect2_pipeline', 'streams']),
            10.0).descriptors}
        assert {name: d.additional_constraints for name, d in described.items()} == {
            'device': 'one of: freenect2, mock', 'color_resolution': 'one of: hd, qhd',
            'freenect2_pipeline': 'one of: auto, cuda, opencl, opengl, cpu',
            'streams': 'each one of: depth, ir, color'}
        assert 'Traceback' not in server.output() + client.output()


# --- allowed values: one place, at start and at runtime ----------------------------------

@pytest.mark.parametrize('module,params,text', [
    ('server_node', {'color_resolution': 'uhd'}, "color_resolution: 'uhd' is not one of: "
     'hd, qhd'),
    ('server_node', {'streams': '[depth, audio]'}, "streams: 'audio' is not one of: depth, "
     'ir, color'),
    ('client_node', {'qos_reliability': 'sometimes'}, "qos_reliability: 'sometimes' is not "
     'one of: best_effort, reliable'),
], ids=['resolution', 'server streams', 'reliability'])
def test_a_value_not_allowed_stops_the_node_with_one_clear_error(module, params, text):
    out = ros_helpers.failed_start_output(module, params, 'choices ')
    fatal = [line for line in out.splitlines() if '[FATAL]' in line]
    assert len(fatal) == 1 and text in fatal[0], out


def test_declare_all_enforces_choices_at_declaration_and_at_runtime():
    specs = (ParamSpec('mode', 'a', 'a mode', False, choices=('a', 'b')),
             ParamSpec('kinds', [], 'kinds', True, choices=('x', 'y')),
             ParamSpec('level', 1, 'a number', False, (0, 3)))
    changes = []

    def on_set(parameters):
        changes.append(parameters)
        return SetParametersResult(successful=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        bad = rclpy.create_node('sk2_choices_bad', context=context, parameter_overrides=[
            Parameter('mode', value='c'), Parameter('kinds', value=['x', 'z'])])
        try:
            with pytest.raises(ValueError) as refused:
                declare_all(bad, specs)
            assert str(refused.value) == ("parameter mode: 'c' is not one of: a, b; "
                                          "parameter kinds: 'z' is not one of: x, y")
        finally:
            bad.destroy_node()
        node = rclpy.create_node('sk2_choices', context=context, parameter_overrides=[
            Parameter('kinds', value=['y'])])
        try:
            assert declare_all(node, specs, on_set=on_set) == {
                'mode': 'a', 'kinds': ['y'], 'level': 1}
            described = {d.name: d for d in node.describe_parameters(
                ['mode', 'kinds', 'level'])}
            assert described['mode'].additional_constraints == 'one of: a, b'
            assert described['kinds'].additional_constraints == 'each one of: x, y'
            assert described['level'].additional_constraints == ''
            result, = node.set_parameters([Parameter('mode', value='c')])
            assert not result.successful and result.reason == \
                "parameter mode: 'c' is not one of: a, b"
            assert node.get_parameter('mode').value == 'a' and changes == []
            result, = node.set_parameters([Parameter('mode', value='b')])
            assert result.successful and node.get_parameter('mode').value == 'b'
            assert [[(p.name, p.value) for p in change] for change in changes] == [
                [('mode', 'b')]]
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()
