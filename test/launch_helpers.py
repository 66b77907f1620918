"""Helpers for the tests that start the launch files with the real launch machinery.

``launch``, ``launch_ros``, ``launch_testing`` and the ``ros2`` command line come with a
ROS 2 distribution, or, over the PyPI wheels, from ``../shared/ros2-cli-wheels`` (what
``./dev.sh`` installs); without them these tests skip, saying why.

``ros2 launch streamkinect2_ros ...`` finds the package through the ament index
(``AMENT_PREFIX_PATH``): :func:`make_overlay` makes a prefix for the package as it is in
this source tree (its launch and config files, and ``lib/streamkinect2_ros/<node>``
executables that run the nodes from this tree with this Python), put first on
``AMENT_PREFIX_PATH``, so the tests run the files under test whether or not (and
wherever) the package is installed.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import ros_helpers  # noqa: F401  (sets the ROS environment first)

REPO = ros_helpers.REPO
PACKAGE = 'streamkinect2_ros'
EXECUTABLES = {'server_node': 'streamkinect2_ros.server_node',
               'client_node': 'streamkinect2_ros.client_node'}

#: The ``ros2`` command with this Python (its console script does the same), SIGINT
#: handled even where the test runner was started with SIGINT ignored.
ROS2 = [sys.executable, '-c', 'import signal, sys; '
        'signal.signal(signal.SIGINT, signal.default_int_handler); '
        'from ros2cli.cli import main; sys.exit(main())']

_EXECUTABLE = """#!{python}
import sys
sys.path.insert(0, {repo!r})
from {module} import main
sys.exit(main())
"""


def missing_launch_packages():
    """Return why the launch tests cannot run (a sentence), or None if they can."""
    missing = []
    for module in ('rclpy', 'launch', 'launch_ros', 'launch_testing', 'ros2cli',
                   'ros2launch', 'ros2param', 'ros2topic'):
        try:
            __import__(module)
        except ImportError as error:
            missing.append('{0} ({1})'.format(module, error))
    if not missing:
        return None
    return ('needs the ROS 2 launch packages and command line, missing: {0}; they come '
            'with a ROS 2 distribution, or with ./dev.sh setup from '
            '../shared/ros2-cli-wheels'.format(', '.join(missing)))


def load_launch_file(path):
    """Import the launch file at *path* as a module."""
    spec = importlib.util.spec_from_file_location(
        'launch_file_' + os.path.basename(path).split('.')[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_launch_packages():
    """Skip the calling test, saying why, if the launch packages are missing.

    With ``STREAMKINECT2_LAUNCH_TESTS=require`` (CI sets it: ``.ci/run``) fail instead:
    there the launch tests must run.
    """
    import pytest

    missing = missing_launch_packages()
    if missing is None:
        return
    if os.environ.get('STREAMKINECT2_LAUNCH_TESTS') == 'require':
        pytest.fail('STREAMKINECT2_LAUNCH_TESTS=require, but this test ' + missing)
    pytest.skip(missing)


def make_overlay(root):
    """Make an ament prefix in *root* for the package in this tree; return *root*."""
    share = os.path.join(root, 'share', PACKAGE)
    index = os.path.join(root, 'share', 'ament_index', 'resource_index', 'packages')
    lib = os.path.join(root, 'lib', PACKAGE)
    for directory in (os.path.join(share, 'launch'), os.path.join(share, 'config'),
                      index, lib):
        os.makedirs(directory, exist_ok=True)
    open(os.path.join(index, PACKAGE), 'w').close()
    # File by file, as setup.py installs them (ros2 launch does not follow a linked
    # directory when it looks for a launch file).
    for folder, suffixes in (('launch', ('.launch.py',)), ('config', ('.yaml', '.xml'))):
        for name in os.listdir(os.path.join(REPO, folder)):
            if name.endswith(suffixes):
                os.symlink(os.path.join(REPO, folder, name), os.path.join(share, folder, name))
    os.symlink(os.path.join(REPO, 'package.xml'), os.path.join(share, 'package.xml'))
    for executable, module in EXECUTABLES.items():
        path = os.path.join(lib, executable)
        with open(path, 'w') as script:
            script.write(_EXECUTABLE.format(python=sys.executable, repo=REPO, module=module))
        os.chmod(path, 0o755)
    return root


def ament_prefix_path(overlay):
    """Return AMENT_PREFIX_PATH with *overlay* first (and this Python's prefix)."""
    current = os.environ.get('AMENT_PREFIX_PATH') or sys.prefix
    return os.pathsep.join([overlay, current])


def launch_env(overlay, log_dir, tmp_dir):
    """Return the environment for ``ros2`` commands: this test's domain, on loopback.

    Logs go to *log_dir*, temporary files (launch_ros's parameter files) to *tmp_dir*.
    """
    env = ros_helpers.node_env()
    env['AMENT_PREFIX_PATH'] = ament_prefix_path(overlay)
    env['ROS_LOG_DIR'] = log_dir
    env['TMPDIR'] = tmp_dir
    env.pop('ROS_LOCALHOST_ONLY', None)
    return env


def ros2(args, env, timeout=60.0):
    """Run ``ros2 *args*``; return ``(exit code, output)``. Fail after *timeout* s."""
    try:
        done = subprocess.run(ROS2 + list(args), env=env, cwd=REPO, timeout=timeout,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, errors='replace')
    except subprocess.TimeoutExpired as expired:
        raise AssertionError('ros2 {0} did not finish within {1} s:\n{2}'.format(
            ' '.join(args), timeout, expired.output))
    return done.returncode, done.stdout


def ros2_on_node(args, env, timeout=30):
    """Run a ``ros2`` command about a node (``param get``, ``param dump``, ...).

    Without the daemon (which would outlive the test); waiting for the node to be
    discovered up to *timeout* s (``--timeout``).
    """
    return ros2(list(args) + ['--no-daemon', '--timeout', str(int(timeout))], env,
                timeout=timeout + 30.0)


class Launch(object):
    """``ros2 launch streamkinect2_ros <file> <arguments>`` in a subprocess.

    Output goes to a file. It runs in a process group of its own, as a command started
    from a terminal does: :meth:`stop` sends SIGINT to the group, as Ctrl-C does.
    """

    def __init__(self, launch_file, arguments, env):
        """Start ``ros2 launch``."""
        self.args = ['launch', PACKAGE, launch_file] + list(arguments)
        self._log = tempfile.NamedTemporaryFile(prefix='sk2-launch-', suffix='.log',
                                                delete=False)
        self.proc = subprocess.Popen(ROS2 + self.args, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=REPO, start_new_session=True)

    def output(self):
        """Return what the launch (and its nodes) printed so far."""
        with open(self._log.name, errors='replace') as log:
            return log.read()

    def wait_for(self, predicate, timeout, what):
        """Wait until *predicate(output)* is true; fail after *timeout* s or on exit."""
        deadline = time.monotonic() + timeout
        while not predicate(self.output()):
            if self.proc.poll() is not None:
                raise AssertionError('ros2 launch exited ({0}) before {1}:\n{2}'.format(
                    self.proc.returncode, what, self.output()))
            if time.monotonic() > deadline:
                raise AssertionError('no {0} within {1} s:\n{2}'.format(
                    what, timeout, self.output()))
            time.sleep(0.05)

    def wait_exit(self, timeout):
        """Wait for ros2 launch to exit by itself; return its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError('ros2 launch still runs after {0} s:\n{1}'.format(
                timeout, self.output()))

    def _signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:  # every process of the group has exited
            pass

    def stop(self, timeout=20.0):
        """Ctrl-C: SIGINT to the group; return the exit code (fail after *timeout* s)."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGINT)
        return self.wait_exit(timeout)

    def close(self):
        """Stop the launch (SIGINT, then SIGKILL) and remove its output file."""
        try:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGINT)
                try:
                    self.proc.wait(20.0)
                except subprocess.TimeoutExpired:
                    pass
            self._signal_group(signal.SIGKILL)  # anything left of the group
            self.proc.wait(5.0)
        finally:
            self._log.close()
            os.unlink(self._log.name)

    def __enter__(self):
        """Return the running launch."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Stop the launch."""
        self.close()


class Overlay(object):
    """A temporary overlay prefix (:func:`make_overlay`) and log directory."""

    def __init__(self):
        """Make the prefix."""
        self.root = tempfile.mkdtemp(prefix='sk2-overlay-')
        self.prefix = make_overlay(os.path.join(self.root, 'prefix'))
        self.log_dir = os.path.join(self.root, 'log')
        tmp_dir = os.path.join(self.root, 'tmp')
        os.makedirs(self.log_dir)
        os.makedirs(tmp_dir)
        self.env = launch_env(self.prefix, self.log_dir, tmp_dir)

    def close(self):
        """Remove the prefix."""
        shutil.rmtree(self.root, ignore_errors=True)


# --- for the launch_testing modules ------------------------------------------------------

class LaunchTestSetup(object):
    """What a launch_testing module needs around its launch: the overlay, in this process.

    launch_testing runs the launch in the test process, where the package is looked up
    (share directory, executables) through ``AMENT_PREFIX_PATH``: :meth:`start` puts the
    overlay first on it, :meth:`finish` (from the post-shutdown tests) restores it.
    """

    def __init__(self):
        """Nothing is made before the launch test runs."""
        self.overlay = None
        self._saved = {}
        self._saved_tempdir = None

    def start(self):
        """Make the overlay and put it on this process's environment."""
        self.overlay = Overlay()
        for name in ('AMENT_PREFIX_PATH', 'ROS_LOG_DIR'):
            self._saved[name] = os.environ.get(name)
            os.environ[name] = self.overlay.env[name]
        # launch_ros writes each node's parameters to a temporary file it leaves behind.
        self._saved_tempdir = tempfile.tempdir
        tempfile.tempdir = self.overlay.env['TMPDIR']

    def finish(self):
        """Restore the environment and remove the overlay."""
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.overlay is not None:
            tempfile.tempdir = self._saved_tempdir
            self.overlay.close()
            self.overlay = None


def include(launch_file, arguments):
    """Return an IncludeLaunchDescription of ``launch/<launch_file>`` with *arguments*."""
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    return IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(REPO, 'launch', launch_file)),
        launch_arguments=sorted(arguments.items()))


def receive(sub, topics, qos, timeout=60.0):
    """Subscribe *sub* to ``{topic: message class}`` with *qos*; return the first of each.

    Fail after *timeout* s with the topics that delivered nothing.
    """
    first = {}
    subscriptions = []

    def keep(topic):
        return lambda message: first.setdefault(topic, message)
    try:
        for topic, message_class in topics.items():
            subscriptions.append(sub.node.create_subscription(message_class, topic,
                                                              keep(topic), qos))
        sub.spin_until(lambda: len(first) == len(topics), timeout,
                       'messages on {0}'.format(sorted(set(topics) - set(first))))
    finally:
        for subscription in subscriptions:
            sub.node.destroy_subscription(subscription)
    return first


def topic_types(sub):
    """Return ``{topic: type}`` of the ROS graph as *sub* sees it."""
    return {name: types[0] for name, types in sub.node.get_topic_names_and_types()}


def output_problems(proc_output):
    """Return the output lines of the launched processes that show a failure."""
    return [line for output in proc_output for line in output.text.decode(
        errors='replace').splitlines() if 'Traceback' in line or 'FATAL' in line
        or '[ERROR]' in line]
