"""End-to-end tests of the ROS 2 nodes: server and client in subprocesses, real rclpy.

Every participant stays on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, a
domain per test process, Zeroconf and ZeroMQ on 127.0.0.1); names are unique per test so
that a stale or foreign message cannot pass.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

ros_helpers = pytest.importorskip('ros_helpers')  # sets the ROS environment first
rclpy = pytest.importorskip('rclpy')

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from streamkinect2 import MockKinect  # noqa: E402

LOOPBACK = ros_helpers.LOOPBACK
SERVER_YAML = os.path.join(ros_helpers.CONFIG, 'server.yaml')
CLIENT_YAML = os.path.join(ros_helpers.CONFIG, 'client.yaml')


def start_server(name, device_id, **params):
    """Start a mock server node on loopback, from the shipped YAML plus overrides."""
    overrides = {'address': LOOPBACK, 'server_name': name, 'mock_ids': '[{0}]'.format(
        device_id), 'mock_fps': 30.0, 'diagnostics_period': 0.0}
    overrides.update(params)
    return ros_helpers.NodeProcess('server_node', overrides, SERVER_YAML)


def start_client(namespace, **params):
    """Start a client node (shipped YAML plus overrides) in *namespace*."""
    overrides = {'discovery_address': LOOPBACK, 'log_period': 1.0,
                 'response_timeout': 1.0, 'reconnect_period': 0.5}
    overrides.update(params)
    return ros_helpers.NodeProcess('client_node', overrides, CLIENT_YAML, namespace)


class Inbox(object):
    """Collects the Images and CameraInfos of one device's topics."""

    def __init__(self, sub, namespace, device):
        """Subscribe to ``<namespace>/<device>/depth/{image_raw,camera_info}``."""
        base = '{0}/{1}/depth/'.format(namespace, device)
        self.images = []
        self.infos = []
        self.subs = [
            sub.node.create_subscription(Image, base + 'image_raw', self.images.append,
                                         qos_profile_sensor_data),
            sub.node.create_subscription(CameraInfo, base + 'camera_info', self.infos.append,
                                         qos_profile_sensor_data),
        ]

    def clear(self):
        """Forget what was received."""
        del self.images[:]
        del self.infos[:]


def check_image(img, frame_id):
    """Assert *img* is a 16UC1 Kinect depth Image equal to the mock frame it claims."""
    assert img.encoding == '16UC1'
    assert (img.width, img.height, img.step) == (512, 424, 1024)
    assert img.is_bigendian == (np.dtype('=u2').byteorder == '>')
    assert img.header.frame_id == frame_id
    pixels = np.frombuffer(bytes(img.data), dtype=np.uint16).reshape(424, 512)
    expected = MockKinect.render_frame(MockKinect.sequence_of(pixels))
    assert pixels.tobytes() == expected.tobytes()


def stamp_ns(msg):
    """Return the header stamp of *msg* in nanoseconds."""
    return msg.header.stamp.sec * 1000000000 + msg.header.stamp.nanosec


def listening_ports(pid):
    """Return the TCP ports process *pid* listens on (empty once it has exited)."""
    try:
        return {c.laddr.port for c in psutil.Process(pid).net_connections('tcp')
                if c.status == psutil.CONN_LISTEN}
    except psutil.NoSuchProcess:
        return set()


def test_discovered_server_images_parameters_and_shutdown():
    device = ros_helpers.unique('mock_')
    namespace = '/' + ros_helpers.unique('t')
    server_name = ros_helpers.unique('sk2-test-')
    frame_id = 'kinect2_{0}_depth_optical_frame'.format(device)
    with start_server(server_name, device, announce='true') as server, \
            start_client(namespace, server_name=server_name) as client, \
            ros_helpers.TestSubscriber() as sub:
        inbox = Inbox(sub, namespace, device)
        sub.spin_until(lambda: len(inbox.images) >= 3 and inbox.infos, 30.0,
                       'Images from the client node')
        server.wait_for_output('control endpoint tcp://127.0.0.1:', 5.0)
        for img in inbox.images[:3]:
            check_image(img, frame_id)
            # The stamp is the capture time carried by the frame: seconds old at most.
            assert abs(time.time_ns() - stamp_ns(img)) < 30e9
        info = inbox.infos[-1]
        assert info.header.frame_id == frame_id
        assert (info.width, info.height) == (512, 424)
        assert info.distortion_model == 'plumb_bob'
        intr = MockKinect().depth_camera  # the mock's record: a real sensor's calibration
        assert list(info.k) == pytest.approx([intr['fx'], 0, intr['cx'],
                                              0, intr['fy'], intr['cy'], 0, 0, 1])
        assert list(info.d) == pytest.approx([intr['k1'], intr['k2'], intr['p1'],
                                              intr['p2'], intr['k3']])
        assert list(info.p)[:3] == pytest.approx([intr['fx'], 0, intr['cx']])
        # Images and CameraInfos of a frame share the stamp.
        image_stamps = {stamp_ns(i) for i in inbox.images}
        assert any(stamp_ns(i) in image_stamps for i in inbox.infos)

        # Parameter changes take effect on the next frames; bad values are refused.
        params = AsyncParameterClient(sub.node, namespace + '/streamkinect2_client')
        sub.spin_until(lambda: params.services_are_ready(), 10.0, 'parameter services')
        refused = sub.spin_future(params.set_parameters(
            [Parameter('stamp_source', value='sometime')]), 10.0)
        assert not refused.results[0].successful
        accepted = sub.spin_future(params.set_parameters([
            Parameter('frame_id', value='changed_{device}_frame'),
            Parameter('stamp_source', value='receive')]), 10.0)
        assert all(r.successful for r in accepted.results)
        new_frame_id = 'changed_{0}_frame'.format(device)
        inbox.clear()
        sub.spin_until(lambda: any(i.header.frame_id == new_frame_id for i in inbox.images)
                       and any(i.header.frame_id == new_frame_id for i in inbox.infos),
                       10.0, 'Images with the new frame_id')
        changed = [i for i in inbox.images if i.header.frame_id == new_frame_id]
        check_image(changed[0], new_frame_id)
        read_back = sub.spin_future(params.get_parameters(['frame_id', 'stamp_source']),
                                    10.0)
        assert [v.string_value for v in read_back.values] == [
            'changed_{device}_frame', 'receive']

        # The client reports figures while it streams.
        client.wait_for_output('Images/s', 10.0)

        # Clean shutdown: SIGINT for the client, SIGTERM for the server; exit 0, promptly.
        server_ports = listening_ports(server.pid)
        assert server_ports
        assert client.stop(signal.SIGINT, timeout=10.0) == 0, client.output()
        assert server.stop(signal.SIGTERM, timeout=10.0) == 0, server.output()
        for proc in (client, server):
            assert 'Traceback' not in proc.output(), proc.output()
        assert 'stopped' in server.output()
    for proc in (server, client):
        assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == \
            psutil.STATUS_ZOMBIE
    assert not listening_ports(server.pid)


def test_client_survives_server_restart_on_fixed_endpoint():
    device = ros_helpers.unique('mock_')
    namespace = '/' + ros_helpers.unique('t')
    port = ros_helpers.free_port()
    endpoint = 'tcp://{0}:{1}'.format(LOOPBACK, port)
    frame_id = 'kinect2_{0}_depth_optical_frame'.format(device)
    server_name = ros_helpers.unique('sk2-test-')
    with start_client(namespace, server_endpoint=endpoint) as client, \
            ros_helpers.TestSubscriber() as sub:
        inbox = Inbox(sub, namespace, device)
        with start_server(server_name, device, announce='false', control_port=port):
            sub.spin_until(lambda: len(inbox.images) >= 2, 30.0, 'Images (first server)')
            check_image(inbox.images[-1], frame_id)
        # The first server was stopped cleanly (SIGINT); the second is killed outright.
        with start_server(server_name, device, announce='false', control_port=port) as s2:
            restarted = time.time_ns()
            inbox.clear()
            sub.spin_until(lambda: any(stamp_ns(i) > restarted for i in inbox.images),
                           20.0, 'Images from the restarted server')
            check_image(inbox.images[-1], frame_id)
            s2.kill()
        gone = time.time_ns()
        client.wait_for_output('went away', 10.0)
        with start_server(server_name, device, announce='false', control_port=port):
            sub.spin_until(lambda: any(stamp_ns(i) > gone for i in inbox.images), 20.0,
                           'Images after the server was killed and restarted')
            check_image(inbox.images[-1], frame_id)
        assert client.proc.poll() is None, client.output()
        assert client.stop(signal.SIGTERM, timeout=10.0) == 0, client.output()


def test_demo_runner_exits_zero_with_images():
    proc = subprocess.run(
        [sys.executable, '-m', 'streamkinect2_ros.demo', '--duration', '4', '--quiet'],
        env=ros_helpers.node_env(), cwd=ros_helpers.REPO, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, text=True)
    assert proc.returncode == 0, proc.stdout
    assert 'Images/s' in proc.stdout
    assert "node exit status {'server': 0, 'client': 0}" in proc.stdout


def test_client_rediscovers_restarted_server_by_name():
    device = ros_helpers.unique('mock_')
    namespace = '/' + ros_helpers.unique('t')
    server_name = ros_helpers.unique('sk2-test-')
    with start_client(namespace, server_name=server_name) as client, \
            ros_helpers.TestSubscriber() as sub:
        inbox = Inbox(sub, namespace, device)
        with start_server(server_name, device, announce='true') as first:
            sub.spin_until(lambda: inbox.images, 30.0, 'Images (first server)')
            assert first.stop(signal.SIGTERM, timeout=10.0) == 0, first.output()
        client.wait_for_output('went away', 10.0)
        restarted = time.time_ns()
        with start_server(server_name, device, announce='true'):
            sub.spin_until(lambda: any(stamp_ns(i) > restarted for i in inbox.images),
                           30.0, 'Images from the re-announced server')
            check_image(inbox.images[-1], 'kinect2_{0}_depth_optical_frame'.format(device))
        assert client.stop(signal.SIGINT, timeout=10.0) == 0, client.output()


def test_curve_parameters_admit_only_the_listed_client(tmp_path):
    from streamkinect2.security import make_keypair
    server_public, server_secret = make_keypair(str(tmp_path), 'server')
    good_public, good_secret = make_keypair(str(tmp_path), 'good')
    _, bad_secret = make_keypair(str(tmp_path), 'bad')
    device = ros_helpers.unique('mock_')
    port = ros_helpers.free_port()
    endpoint = 'tcp://{0}:{1}'.format(LOOPBACK, port)
    good_ns, bad_ns = '/' + ros_helpers.unique('good'), '/' + ros_helpers.unique('bad')
    with start_server(ros_helpers.unique('sk2-curve-'), device, announce='false',
                      control_port=port, curve_secret_file=server_secret,
                      curve_allowed_clients='["{0}"]'.format(good_public)), \
            start_client(good_ns, server_endpoint=endpoint, curve_secret_file=good_secret,
                         curve_server_key=server_public) as good, \
            start_client(bad_ns, server_endpoint=endpoint, curve_secret_file=bad_secret,
                         curve_server_key=server_public) as bad, \
            ros_helpers.TestSubscriber() as sub:
        good_inbox, bad_inbox = Inbox(sub, good_ns, device), Inbox(sub, bad_ns, device)
        sub.spin_until(lambda: len(good_inbox.images) >= 3, 30.0, 'Images (admitted)')
        check_image(good_inbox.images[-1], 'kinect2_{0}_depth_optical_frame'.format(device))
        # The other client has had as long plus two more seconds: it got nothing at all.
        deadline = time.monotonic() + 2.0
        sub.spin_until(lambda: time.monotonic() > deadline, 5.0, 'two more seconds')
        assert bad_inbox.images == [] and bad_inbox.infos == []
        assert 'Connected to server' in good.output()
        assert 'Connected to server' not in bad.output()
