"""The client node's health against a misbehaving server: diagnostics, logs, resources.

The server is a :py:class:`FakeServer` (real ZeroMQ sockets on loopback, in this
process); the client node runs in a subprocess, as in ``test_ros_nodes.py``.
"""
import os
import time

import psutil
import pytest

ros_helpers = pytest.importorskip('ros_helpers')  # sets the ROS environment first
rclpy = pytest.importorskip('rclpy')
diagnostic_msgs = pytest.importorskip('diagnostic_msgs.msg')

from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_client_hostile import FakeServer  # noqa: E402

NODE_NAME = 'streamkinect2_client'
OK, WARN = diagnostic_msgs.DiagnosticStatus.OK, diagnostic_msgs.DiagnosticStatus.WARN
CLIENT_YAML = os.path.join(ros_helpers.CONFIG, 'client.yaml')


def start_client(namespace, endpoint):
    """Start a client node on *endpoint*, diagnostics twice a second."""
    return ros_helpers.NodeProcess('client_node', {
        'server_endpoint': endpoint, 'response_timeout': 1.0, 'reconnect_period': 0.2,
        'diagnostics_period': 0.5, 'log_period': 1.0}, CLIENT_YAML, namespace)


class Diagnostics(object):
    """The latest /diagnostics status per hardware id."""

    def __init__(self, sub):
        """Subscribe to /diagnostics."""
        self.latest = {}
        self.subscription = sub.node.create_subscription(
            diagnostic_msgs.DiagnosticArray, '/diagnostics', self.on_array, 10)

    def on_array(self, msg):
        for status in msg.status:
            if NODE_NAME in status.name:
                self.latest[status.hardware_id] = status

    def level(self, hardware_id):
        status = self.latest.get(hardware_id)
        return None if status is None else status.level


def test_a_stalled_stream_is_a_warning_in_the_log_and_in_diagnostics():
    device = ros_helpers.unique('stall_')
    namespace = '/' + ros_helpers.unique('t')
    with FakeServer() as fake, ros_helpers.TestSubscriber() as sub:
        fake.device_ids = [device]
        fake.streaming.set()
        with start_client(namespace, fake.endpoint) as client:
            images = []
            sub.node.create_subscription(Image, '{0}/{1}/depth/image_raw'.format(
                namespace, device), images.append, qos_profile_sensor_data)
            diagnostics = Diagnostics(sub)
            sub.spin_until(lambda: images and diagnostics.level(device) == OK,
                           30.0, 'Images and an OK status')
            # The server keeps answering; the stream stops.
            fake.streaming.clear()
            sub.spin_until(lambda: diagnostics.level(device) == WARN, 10.0,
                           'a WARN status for the stalled device')
            assert 'frames' in diagnostics.latest[device].message
            client.wait_for_output('No depth frames from {0}'.format(device), 10.0)
            connection = [s for h, s in diagnostics.latest.items() if h != device]
            assert connection and connection[0].level == OK
            # It resumes: OK again.
            fake.streaming.set()
            sub.spin_until(lambda: diagnostics.level(device) == OK, 10.0,
                           'an OK status again')
            client.wait_for_output('resumed', 10.0)
            assert 'Traceback' not in client.output(), client.output()


def test_publishers_of_removed_devices_are_released_and_devices_capped():
    namespace = '/' + ros_helpers.unique('t')

    def rotating(server, frames):
        server.device_ids = ['r{0}'.format(server.requests)]
        return server.me()

    def thousand(server, frames):
        # Short ids: a thousand devices must fit in one control message (64 KiB).
        return server.me([{'id': 'm{0}'.format(i), 'endpoints': {
            'depth': server.depth_endpoint}} for i in range(1000)])

    def device_topics(sub):
        return {t for t in ros_helpers.published_topics(sub, namespace)
                if t.startswith(namespace + '/')}

    with FakeServer(rotating) as fake, ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, fake.endpoint) as client:
        sub.spin_until(lambda: fake.requests >= 3 and device_topics(sub), 30.0,
                       'the node publishing a rotating device')
        sub.spin_until(lambda: fake.requests >= 30, 30.0, 'thirty device lists')
        # Every list names one new device and drops the last: one device's topics remain
        # (depth: image_raw, image_raw/compressedDepth, camera_info).
        sub.spin_until(lambda: len(device_topics(sub)) <= 3, 10.0,
                       'the topics of removed devices to go')
        assert 'Devices' not in client.output()  # no name clash, nothing refused

        fake.reply = thousand
        sub.spin_until(lambda: len(device_topics(sub)) >= 3 * 8, 30.0, 'many devices')
        settled = time.monotonic() + 2.0  # let it take all it will take
        sub.spin_until(lambda: time.monotonic() > settled, 5.0, 'two more seconds')
        assert len(device_topics(sub)) <= 3 * 64
        assert psutil.Process(client.pid).num_fds() < 1000
        assert client.proc.poll() is None, client.output()
        assert 'Traceback' not in client.output(), client.output()


def test_intrinsics_that_are_not_finite_still_give_images_and_a_truthful_camera_info():
    # Valid JSON, but 1e400 is not a float a camera can have: the node used to raise on
    # every frame and publish nothing at all.
    from sensor_msgs.msg import CameraInfo
    from streamkinect2_ros.conversions import DEFAULT_DEPTH_INTRINSICS
    device = ros_helpers.unique('inf_')
    namespace = '/' + ros_helpers.unique('t')

    def reply(fake, frames):
        if frames[0] == b'\x01':
            return [b'\x02']
        text = fake.me()[1].decode('utf8').replace(
            '"endpoints":{"depth"', '"depth_camera":{"width":512,"height":424,"fx":1e400,'
            '"fy":365.0,"cx":254.0,"cy":205.0},"endpoints":{"depth"')
        assert '1e400' in text
        return [b'\x04', text.encode('utf8')]
    with FakeServer(reply=reply) as fake, ros_helpers.TestSubscriber() as sub:
        fake.device_ids = [device]
        fake.streaming.set()
        with start_client(namespace, fake.endpoint) as client:
            images, infos = [], []
            base = '{0}/{1}/depth/'.format(namespace, device)
            sub.node.create_subscription(Image, base + 'image_raw', images.append,
                                         qos_profile_sensor_data)
            sub.node.create_subscription(CameraInfo, base + 'camera_info', infos.append,
                                         qos_profile_sensor_data)
            sub.spin_until(lambda: len(images) >= 3 and len(infos) >= 3, 30.0,
                           'Images and CameraInfos despite fx = 1e400')
            info = infos[-1]
            assert info.k[0] == DEFAULT_DEPTH_INTRINSICS['fx']
            assert all(abs(v) < 1e6 for v in list(info.k) + list(info.d) + list(info.p))
            client.wait_for_output('depth_camera record is not usable', 10.0)
