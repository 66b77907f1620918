"""The package through the real ``ros2`` command line: ``ros2 launch``, ``param``, ``topic``.

What a ROS user types, run as subprocesses in this test's ROS domain, on loopback
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; the demo announces and discovers on
127.0.0.1, under a server name of its own). Skips, saying why, without the ROS 2 launch
packages and command line (``./dev.sh`` installs them from ``../shared/ros2-cli-wheels``;
CI requires them: ``STREAMKINECT2_LAUNCH_TESTS=require``).
"""
import os
import re
import shlex
import time

import launch_helpers
import psutil
import pytest
import ros_helpers
import yaml

try:
    from streamkinect2_ros import client_node, server_node
except ImportError:  # no rclpy: launch_packages (below) skips every test, saying why
    client_node = server_node = None

REPO = launch_helpers.REPO
CLIENT = '/streamkinect2_client'
SERVER = '/streamkinect2_server'
#: Seconds a launch gets to bring its nodes up and publish, and to stop on Ctrl-C.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


@pytest.fixture(scope='module', autouse=True)
def launch_packages():
    """Skip (fail in CI), saying why, without the ROS 2 launch packages."""
    launch_helpers.require_launch_packages()


@pytest.fixture(scope='module')
def overlay():
    """Return an ament prefix of the package in this tree (launch_helpers.make_overlay)."""
    made = launch_helpers.Overlay()
    yield made
    made.close()


def started_pids(output):
    """Return ``{process name: pid}`` from ros2 launch's "process started" lines."""
    return {name: int(pid) for name, pid in re.findall(
        r'\[INFO\] \[([\w-]+)\]: process started with pid \[(\d+)\]', output)}


def assert_stopped_cleanly(launch, code):
    """Check a demo stopped by Ctrl-C: exit 0, both nodes finished cleanly, no traceback."""
    out = launch.output()
    assert code == 0, out
    assert 'Traceback' not in out, out
    pids = started_pids(out)
    assert set(pids) == {'server_node-1', 'client_node-2'}, out
    for name, pid in pids.items():
        assert '[INFO] [{0}]: process has finished cleanly'.format(name) in out, out
        assert '[ERROR] [{0}]'.format(name) not in out, out
        assert_gone(pid)
    assert 'escalating' not in out, out  # to SIGTERM: a node did not stop on SIGINT


def assert_gone(pid):
    """Check process *pid* no longer runs."""
    try:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    except psutil.NoSuchProcess:
        pass


def wait_for_topics(env, expected, timeout=START_TIMEOUT):
    """Wait until ``ros2 topic list -t`` lists every topic of *expected* (``{topic: type}``).

    Return ``{topic: type}`` of what it listed last; fail after *timeout* s.
    """
    deadline = time.monotonic() + timeout
    while True:
        code, out = launch_helpers.ros2(['topic', 'list', '-t', '--no-daemon',
                                         '--spin-time', '1.0'], env)
        assert code == 0, out
        topics = dict(re.findall(r'^(\S+) \[(\S+)\]$', out, re.MULTILINE))
        if set(expected) <= set(topics) or time.monotonic() > deadline:
            return topics


def device_topics(device, streams=('depth', 'ir', 'color')):
    """Return ``{topic: type}`` a client publishes for *device*."""
    topics = {}
    for stream in streams:
        base = '/{0}/{1}/'.format(device, stream)
        topics[base + 'image_raw'] = 'sensor_msgs/msg/Image'
        topics[base + 'camera_info'] = 'sensor_msgs/msg/CameraInfo'
    if 'color' in streams:
        topics['/{0}/color/image_raw/compressed'.format(device)] = \
            'sensor_msgs/msg/CompressedImage'
    return topics


# --- the demo, as a user runs it, and what ros2 param and ros2 topic say about it -----

DEMO_ARGUMENTS = ['mock_count:=2', 'mock_ids:=[a, b]', 'mock_fps:=15.0',
                  'qos_reliability:=reliable', 'qos_depth:=3']


@pytest.fixture(scope='module')
def demo(overlay):
    """Run ``ros2 launch streamkinect2_ros demo.launch.py`` with DEMO_ARGUMENTS."""
    arguments = DEMO_ARGUMENTS + ['server_name:=' + ros_helpers.unique('cli demo ')]
    with launch_helpers.Launch('demo.launch.py', arguments, overlay.env) as launch:
        launch.wait_for(lambda out: out.count('Publishing device') == 2, START_TIMEOUT,
                        'two devices published')
        yield launch


def test_demo_publishes_each_device_with_the_right_types(demo, overlay):
    expected = {}
    for device in ('a', 'b'):
        expected.update(device_topics(device))
    topics = wait_for_topics(overlay.env, expected)
    assert {name: topics.get(name) for name in expected} == expected, topics


@pytest.fixture(scope='module')
def dumps(demo, overlay):
    """Return ``{node: its parameters}`` from ``ros2 param dump`` of the demo's nodes."""
    params = {}
    for node in (CLIENT, SERVER):
        code, out = launch_helpers.ros2_on_node(['param', 'dump', node], overlay.env)
        assert code == 0, out
        params[node] = yaml.safe_load(out)[node]['ros__parameters']
    return params


@pytest.mark.parametrize('node', [CLIENT, SERVER], ids=['client', 'server'])
def test_param_dump_shows_every_parameter(dumps, node):
    module = {CLIENT: client_node, SERVER: server_node}[node]
    assert node == '/' + module.NODE_NAME
    specs = module.PARAMETERS
    params = dumps[node]
    assert set(params) >= {spec.name for spec in specs}, params
    # The string arrays that are empty by default are set, to an empty array (mock_ids
    # is given).
    for spec in specs:
        if spec.default == [] and spec.name != 'mock_ids':
            assert params[spec.name] == [], (spec.name, params)


def test_param_get_of_an_empty_string_array(demo, overlay):
    code, out = launch_helpers.ros2_on_node(['param', 'get', CLIENT, 'devices'], overlay.env)
    assert (code, out.strip()) == (0, 'String values are: []'), out


def test_demo_arguments_reach_the_nodes(dumps):
    assert {name: dumps[SERVER][name] for name in ('mock_count', 'mock_ids', 'mock_fps')} \
        == {'mock_count': 2, 'mock_ids': ['a', 'b'], 'mock_fps': 15.0}
    assert {name: dumps[CLIENT][name] for name in ('qos_reliability', 'qos_depth')} \
        == {'qos_reliability': 'reliable', 'qos_depth': 3}


def test_demo_stops_cleanly_on_ctrl_c(demo):
    assert_stopped_cleanly(demo, demo.stop(STOP_TIMEOUT))


# --- a bad argument says which ------------------------------------------------------------

@pytest.mark.parametrize('launch_file,argument,expected', [
    ('server.launch.py', 'mock_count:=abc', "mock_count: expected an integer, got 'abc'"),
    ('client.launch.py', 'qos_depth:=x', "qos_depth: expected an integer, got 'x'"),
    ('demo.launch.py', 'mock_fps:=fast', "mock_fps: expected a number, got 'fast'"),
    ('server.launch.py', 'announce:=yes', "announce: expected true or false, got 'yes'"),
], ids=['int', 'client-int', 'double', 'bool'])
def test_a_bad_launch_argument_is_named(overlay, launch_file, argument, expected):
    arguments = [argument, 'address:=127.0.0.1'] if launch_file != 'client.launch.py' \
        else [argument, 'discovery_address:=127.0.0.1']
    with launch_helpers.Launch(launch_file, arguments, overlay.env) as launch:
        code = launch.wait_exit(START_TIMEOUT)
        out = launch.output()
    assert code != 0, out
    assert 'launch argument ' + expected in out, out
    assert 'invalid literal' not in out and 'could not convert' not in out, out
    assert 'process started' not in out, out


# --- the demo does not outlive its nodes ------------------------------------------------

@pytest.mark.parametrize('arguments,dead', [
    (['mock_count:=1', 'mock_ids:=[a, b]'], 'server_node-1'),   # more ids than devices
    (['qos_depth:=0'], 'client_node-2'),                         # out of range
], ids=['server-exits', 'client-exits'])
def test_the_demo_shuts_down_when_a_node_exits(overlay, arguments, dead):
    arguments = arguments + ['server_name:=' + ros_helpers.unique('cli dies ')]
    with launch_helpers.Launch('demo.launch.py', arguments, overlay.env) as launch:
        code = launch.wait_exit(START_TIMEOUT)
        out = launch.output()
    assert code != 0, out
    pids = started_pids(out)
    assert set(pids) == {'server_node-1', 'client_node-2'}, out
    # The launch says which node ended it, and stopped the other one.
    assert re.search(r'{0} exited with code \d+'.format(dead.split('-')[0]), out), out
    for pid in pids.values():
        assert_gone(pid)


@pytest.mark.parametrize('launch_file,arguments', [
    ('server.launch.py', ['mock_count:=0', 'address:=127.0.0.1', 'announce:=false']),
    ('client.launch.py', ['qos_depth:=0', 'discovery_address:=127.0.0.1']),
], ids=['server', 'client'])
def test_a_launch_fails_when_its_node_fails(overlay, launch_file, arguments):
    with launch_helpers.Launch(launch_file, arguments, overlay.env) as launch:
        code = launch.wait_exit(START_TIMEOUT)
        out = launch.output()
    assert code != 0, out
    executable = launch_file.split('.')[0] + '_node'
    assert '{0} exited with code 1'.format(executable) in out, out


# --- the examples in docs/ros.md run as written -------------------------------------------

def documented_launch_commands(path):
    """Return the ``ros2 launch streamkinect2_ros ...`` commands written in *path*.

    In a Markdown file, those of its code blocks; in a launch file, its docstring's.
    """
    commands = []
    in_code = not path.endswith('.md')
    pending = ''
    for line in open(path).read().splitlines():
        if line.startswith('```'):
            in_code = not in_code
            continue
        if not in_code:
            continue
        line = pending + line
        pending = ''
        if line.rstrip().endswith('\\'):
            pending = line.rstrip()[:-1] + ' '
            continue
        if not line.strip().startswith('ros2 launch'):
            continue
        words = shlex.split(line, comments=True)
        if words[:3] == ['ros2', 'launch', 'streamkinect2_ros']:
            commands.append(words[3:])
    return commands


DOCS = os.path.join(REPO, 'docs', 'ros.md')
DOC_COMMANDS = documented_launch_commands(DOCS)
DEMO_DOC_COMMANDS = [words for words in DOC_COMMANDS if words[0] == 'demo.launch.py']
#: Every example: docs/ros.md's, the README's, the launch files' docstrings'.
ALL_COMMANDS = sorted({tuple(words) for path in [DOCS, os.path.join(REPO, 'README.md')] + [
    os.path.join(REPO, 'launch', name) for name in sorted(os.listdir(
        os.path.join(REPO, 'launch'))) if name.endswith('.launch.py')]
    for words in documented_launch_commands(path)})


def test_docs_have_launch_examples():
    assert len(DOC_COMMANDS) >= 5 and len(ALL_COMMANDS) > len(DOC_COMMANDS)
    assert any('mock_ids:=[a, b]' in words for words in DEMO_DOC_COMMANDS), DEMO_DOC_COMMANDS


@pytest.mark.parametrize('words', ALL_COMMANDS, ids=' '.join)
def test_documented_launch_arguments_are_declared_and_typed(overlay, words, monkeypatch):
    """Every example's arguments: declared by its launch file, and of the right type."""
    from launch import LaunchContext
    from launch.actions import OpaqueFunction

    monkeypatch.setenv('AMENT_PREFIX_PATH', overlay.env['AMENT_PREFIX_PATH'])
    module = launch_helpers.load_launch_file(os.path.join(REPO, 'launch', words[0]))
    description = module.generate_launch_description()
    declared = {argument.name: argument for argument in description.get_launch_arguments()}
    given = dict(word.split(':=', 1) for word in words[1:])
    assert set(given) <= set(declared), set(given) - set(declared)
    context = LaunchContext()
    for name, argument in declared.items():
        context.launch_configurations[name] = given.get(name, ''.join(
            substitution.perform(context) for substitution in argument.default_value))
    assert any(isinstance(entity, OpaqueFunction) for entity in description.entities)
    nodes = module.launch_setup(context)
    assert nodes


@pytest.mark.parametrize('words', DEMO_DOC_COMMANDS, ids=' '.join)
def test_documented_demo_commands_run(overlay, words):
    """Run each documented demo command (under a server name of this test's own)."""
    given = dict(word.split(':=', 1) for word in words[1:])
    count = int(given.get('mock_count', '1'))
    ids = [i.strip() for i in given.get('mock_ids', '[mock0]').strip('[]').split(',')]
    arguments = words[1:] + ['server_name:=' + ros_helpers.unique('cli docs ')]
    with launch_helpers.Launch(words[0], arguments, overlay.env) as launch:
        launch.wait_for(lambda out: out.count('Publishing device') == count, START_TIMEOUT,
                        '{0} devices published'.format(count))
        for device in ids:
            assert 'Publishing device {0} under /{0}'.format(device) in launch.output()
        assert_stopped_cleanly(launch, launch.stop(STOP_TIMEOUT))
