"""Helpers for the ROS 2 node tests: node subprocesses, a test subscriber, deadlines.

Importing this module pins every ROS participant of the test process and of its
subprocesses to this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) in a domain
derived from the pid, before rclpy creates any context.
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_DOMAIN_ID'] = str(1 + os.getpid() % 100)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'config')
LOOPBACK = '127.0.0.1'


def unique(prefix):
    """Return *prefix* plus a random suffix: names no other test run can share."""
    return '{0}{1}'.format(prefix, uuid.uuid4().hex[:8])


def free_port():
    """Return a TCP port on loopback that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def node_env():
    """Return the environment for a node subprocess."""
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['PYTHONFAULTHANDLER'] = '1'  # SIGABRT on a hung node dumps every thread's stack
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_DOMAIN_ID'] = os.environ['ROS_DOMAIN_ID']
    # The package under test, whether installed (colcon) or not (source tree).
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
    return env


class NodeProcess(object):
    """A node (``python -m streamkinect2_ros.<module>``) in a subprocess, output to a file.

    *params* are ``-p name:=value`` overrides (values as ROS YAML text), *params_file*
    a YAML file, *namespace* a node namespace. Use as a context manager: the process is
    stopped (SIGINT, then SIGKILL after a deadline) on exit.
    """

    def __init__(self, module, params=None, params_file=None, namespace=None):
        """Start the node."""
        args = [sys.executable, '-m', 'streamkinect2_ros.' + module, '--ros-args']
        if params_file:
            args += ['--params-file', params_file]
        for name, value in (params or {}).items():
            args += ['-p', '{0}:={1}'.format(name, value)]
        if namespace:
            args += ['-r', '__ns:=' + namespace]
        self.args = args
        self._log = tempfile.NamedTemporaryFile(prefix='sk2-{0}-'.format(module),
                                                suffix='.log', delete=False)
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=node_env(), cwd=REPO)

    @property
    def pid(self):
        """Return the process id."""
        return self.proc.pid

    def output(self):
        """Return what the node has printed so far."""
        with open(self._log.name, errors='replace') as log:
            return log.read()

    def wait_for_output(self, text, timeout):
        """Wait until the node has printed *text*; fail after *timeout* s."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError('node exited ({0}) before printing {1!r}:\n{2}'.format(
                    self.proc.returncode, text, self.output()))
            if time.monotonic() > deadline:
                raise AssertionError('node did not print {0!r} within {1} s:\n{2}'.format(
                    text, timeout, self.output()))
            time.sleep(0.05)

    def stop(self, sig=signal.SIGINT, timeout=10.0):
        """Send *sig*, wait for exit (SIGKILL after *timeout* s); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5.0)
                raise AssertionError('node did not exit within {0} s of signal {1}:\n'
                                     '{2}'.format(timeout, sig, self.output()))
        return self.proc.returncode

    def kill(self):
        """SIGKILL the node and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5.0)

    def close(self):
        """Stop the node if it runs and remove its log file."""
        try:
            if self.proc.poll() is None:
                try:
                    self.stop(signal.SIGINT, timeout=10.0)
                except AssertionError:
                    pass
        finally:
            self._log.close()
            os.unlink(self._log.name)

    def __enter__(self):
        """Return the running node."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Stop the node."""
        self.close()


def published_topics(sub, namespace, node_name='streamkinect2_client'):
    """Return the topics node *node_name* in *namespace* publishes (seen by *sub*)."""
    try:
        return {name for name, _ in sub.node.get_publisher_names_and_types_by_node(
            node_name, namespace)}
    except Exception:  # the node is not (yet) in the graph
        return set()


def failed_start_output(executable, overrides, name_prefix):
    """Start node *executable* with *overrides* on loopback; return its output.

    The node must refuse to start: exit with status 1 (within 60 s) and log FATAL.
    """
    params = {'address': LOOPBACK, 'announce': 'false', 'diagnostics_period': 0.0,
              'server_name': unique(name_prefix)}
    params.update(overrides)
    with NodeProcess(executable, params) as node:
        try:
            code = node.proc.wait(60)
        except Exception:
            raise AssertionError('the node kept running:\n' + node.output())
        out = node.output()
    assert code == 1 and 'FATAL' in out, out
    return out


class TestSubscriber(object):
    """An rclpy node on a private context, spun on this thread with deadlines."""

    __test__ = False  # not a pytest test class

    def __init__(self, name='streamkinect2_test_subscriber'):
        """Create the context, the node and an executor."""
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(unique(name + '_'), context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate, timeout, what='condition'):
        """Spin until *predicate()* is true; fail after *timeout* s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError('timed out after {0} s waiting for {1}'.format(
                    timeout, what))
            self.executor.spin_once(timeout_sec=0.05)

    def spin_future(self, future, timeout, what='future'):
        """Spin until *future* is done and return its result; fail after *timeout* s."""
        self.spin_until(future.done, timeout, what)
        return future.result()

    def close(self):
        """Destroy the node and shut the private context down."""
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()

    def __enter__(self):
        """Return the subscriber."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Close the subscriber."""
        self.close()
