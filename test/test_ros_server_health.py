"""The server node's health: bad parameters stop it, and streams that stop show.

A control port out of range stops the node at start with a reason (a subprocess, as
``ros2 run`` would start it). A device that stops or frames that fail to compress turn
the device's ``/diagnostics`` status to WARN or ERROR and are logged through the ROS
logger; streaming again turns it back to OK (the node in this process, real rclpy).
"""
import logging
import time

import pytest

ros_helpers = pytest.importorskip('ros_helpers')  # sets the ROS environment first
rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402, I100
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from streamkinect2 import MockKinect  # noqa: E402
from streamkinect2_ros.server_node import ServerNode  # noqa: E402

LOOPBACK = ros_helpers.LOOPBACK


@pytest.mark.parametrize('params', [{'control_port': 70000}, {'control_port': -5},
                                    {'mock_fps': 0.0}, {'mock_count': 0}])
def test_out_of_range_parameters_stop_the_node_with_a_reason(params):
    # Before: control_port 70000 bound some other port and the node kept running.
    out = ros_helpers.failed_start_output('server_node', params, 'range ')
    assert next(iter(params)) in out


class _Node(object):
    """A server node and a /diagnostics subscriber on a private context."""

    def __init__(self, device_id):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = ServerNode(context=self.context, parameter_overrides=[
            Parameter('address', value=LOOPBACK), Parameter('announce', value=False),
            Parameter('server_name', value=ros_helpers.unique('health ')),
            Parameter('mock_ids', value=[device_id]),
            Parameter('diagnostics_period', value=0.2)])
        self.listener = rclpy.create_node(ros_helpers.unique('diagnostics_listener_'),
                                          context=self.context)
        self.statuses = []
        self.listener.create_subscription(
            DiagnosticArray, '/diagnostics',
            lambda msg: self.statuses.extend(s for s in msg.status
                                             if s.hardware_id == device_id), 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.listener)

    def wait_for(self, level, text, timeout=15.0):
        """Spin until a status of *level* whose message holds *text*; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            for status in self.statuses:
                if status.level == level and text in status.message:
                    del self.statuses[:]
                    return status
        raise AssertionError('no status {0!r} {1!r}; last: {2}'.format(
            level, text, [(s.level, s.message) for s in self.statuses[-3:]]))

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self.node.close()
        self.node.destroy_node()
        self.listener.destroy_node()
        self.context.try_shutdown()


def test_diagnostics_and_the_log_show_a_stopped_device_and_failing_frames(caplog, capfd):
    caplog.set_level(logging.INFO, logger='streamkinect2')
    device_id = ros_helpers.unique('healthdev')
    harness = _Node(device_id)
    try:
        ok = harness.wait_for(DiagnosticStatus.OK, 'streaming')
        assert {v.key for v in ok.values} >= {'frames_in', 'frames_failed',
                                              'frames_dropped', 'subscribers_cut'}
        device = next(d for d in harness.node.devices if d.unique_kinect_id == device_id)
        device.stop()
        harness.wait_for(DiagnosticStatus.ERROR, 'not running')
        device.start()
        harness.wait_for(DiagnosticStatus.OK, 'streaming')
        # Frames the compressor cannot take, between the good ones.
        deadline = time.monotonic() + 15
        failing = None
        while failing is None and time.monotonic() < deadline:
            MockKinect.on_depth_frame.send(device, depth_frame=object())
            harness.executor.spin_once(timeout_sec=0.02)
            failing = next((s for s in harness.statuses if s.level in (
                DiagnosticStatus.WARN, DiagnosticStatus.ERROR)
                and 'failed to compress' in s.message), None)
        assert failing is not None, [(s.level, s.message) for s in harness.statuses[-3:]]
        harness.wait_for(DiagnosticStatus.OK, 'streaming')
    finally:
        harness.close()
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert any(level == 'ERROR' and 'not running' in text for level, text in messages)
    assert any(level == 'ERROR' and 'frame' in text and 'failed' in text
               for level, text in messages)
    # The same lines went out through the node's ROS logger.
    err = capfd.readouterr().err
    assert '[ERROR]' in err and 'not running' in err, err[-2000:]
    assert 'Traceback' in err and 'a depth frame needs' in err, err[-2000:]
