"""The client node's kinect2_bridge layout (``kinect2_layout:=true``) with real rclpy.

One mock server replaying the real synchronised captures of ``shared/data/rgbd`` (depth,
IR and colour of one sensor, colour sent at qhd) and one client node with the layout on,
that sensor's iai_kinect2 calibration files (``calib_path``) and ``streams:=[depth]``, are
shared by the module's end-to-end tests: what the layout publishes must be what
:py:class:`~streamkinect2.registration.Registration` makes of the recorded frames, and
the IR and colour it needs must be received only while its topics have subscribers.
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ros_helpers = pytest.importorskip('ros_helpers')  # sets the ROS environment first
rclpy = pytest.importorskip('rclpy')
diagnostic_msgs = pytest.importorskip('diagnostic_msgs.msg')

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile,  # noqa: E402
                       ReliabilityPolicy)
from sensor_msgs.msg import PointCloud2  # noqa: E402
from streamkinect2.calibration import Calibration, CameraModel  # noqa: E402
from streamkinect2.device import MOCK_CALIBRATION  # noqa: E402
from streamkinect2.registration import Registration  # noqa: E402
from streamkinect2_ros.conversions import fill_point_cloud  # noqa: E402
from streamkinect2_ros.kinect2_layout import (CalibrationSources, frame_ids,  # noqa: E402
                                              OUTPUTS, resolve_camera_info_url,
                                              static_transforms, streams_needed,
                                              tf2_msgs_missing)

LOOPBACK = ros_helpers.LOOPBACK
NODE_NAME = 'streamkinect2_client'
CLIENT_YAML = os.path.join(ros_helpers.CONFIG, 'client.yaml')
RGBD = os.path.join(os.path.dirname(ros_helpers.REPO), 'shared', 'data', 'rgbd')
RECORDING = os.path.join(RGBD, 'kinect2_sync_rgbd.npz')
#: The tests of the real sensor's calibration files and captures (../shared/data/rgbd).
needs_rgbd = pytest.mark.skipif(not os.path.exists(RECORDING), reason='no ' + RECORDING)
TF_WARNING = 'tf2_msgs is not importable'
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def stamp_ns(msg):
    """Return the header stamp of *msg* in nanoseconds."""
    return msg.header.stamp.sec * 1000000000 + msg.header.stamp.nanosec


def pixels(img):
    """Return the pixels of a 16UC1 or bgr8 Image as a numpy array."""
    if img.encoding == '16UC1':
        return np.frombuffer(bytes(img.data), np.uint16).reshape(img.height, img.width)
    return np.frombuffer(bytes(img.data), np.uint8).reshape(img.height, img.width, 3)


def cloud(msg):
    """Return a PointCloud2 of x, y, z, rgb float32 as a (height, width, 4) float32 array."""
    return np.frombuffer(bytes(msg.data), np.float32).reshape(msg.height, msg.width, 4)


# --- pure parts: no node ----------------------------------------------------------------

def test_static_transforms_are_the_calibrations_pose():
    calibration = Calibration.default()
    link, ir = static_transforms(calibration, 'cam', 1234567890123)
    assert (link.header.frame_id, link.child_frame_id) == ('cam_link', 'cam_rgb_optical_frame')
    assert (ir.header.frame_id, ir.child_frame_id) == ('cam_rgb_optical_frame',
                                                       'cam_ir_optical_frame')
    for msg in (link, ir):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1234, 567890123)
    t, q = link.transform.translation, link.transform.rotation
    assert (t.x, t.y, t.z, q.x, q.y, q.z, q.w) == (0, 0, 0, 0, 0, 0, 1)
    # The IR frame in the colour frame: a point p of the IR camera is R p + t in the
    # colour camera (MOCK_CALIBRATION is the rgbd sensor's calib_pose.yaml).
    t, q = ir.transform.translation, ir.transform.rotation
    pose = MOCK_CALIBRATION['ir_to_color']
    assert [t.x, t.y, t.z] == pytest.approx(pose['translation'], abs=1e-12)
    x, y, z, w = q.x, q.y, q.z, q.w
    assert x * x + y * y + z * z + w * w == pytest.approx(1.0)
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    assert rotation == pytest.approx(np.reshape(pose['rotation'], (3, 3)), abs=1e-6)
    assert frame_ids('cam') == {'sd': 'cam_ir_optical_frame', 'qhd': 'cam_rgb_optical_frame',
                                'hd': 'cam_rgb_optical_frame'}


def test_streams_needed_and_point_cloud_messages():
    assert streams_needed(set(), True) == set()
    assert streams_needed({'qhd/image_depth_rect', 'sd/camera_info'}, True) == {'depth'}
    assert streams_needed({'sd/image_ir_rect'}, True) == {'ir'}
    assert streams_needed({'hd/image_color'}, True) == {'color'}
    assert streams_needed({'sd/image_color_rect'}, True) == {'depth', 'color'}
    assert streams_needed({'qhd/points'}, True) == {'depth', 'color'}
    assert streams_needed({'qhd/points'}, False) == {'depth'}
    assert set(OUTPUTS) == {'{0}/{1}'.format(res, name) for res in ('sd', 'qhd', 'hd')
                            for name in ('image_depth_rect', 'image_color_rect',
                                         'camera_info', 'points')} | {
        'sd/image_ir_rect', 'qhd/image_color', 'hd/image_color'}
    # An organised XYZRGB cloud as Registration makes it: fields, steps, bytes.
    registration = Registration(Calibration.default())
    depth = np.full((424, 512), 1500, np.uint16)
    depth[0, 0] = 0
    color = np.zeros((424, 512, 3), np.uint8)
    color[1, 2] = (10, 20, 30)
    points = registration.points(depth, registration.sd, color=color)
    msg = fill_point_cloud(PointCloud2(), points, 'cam_ir_optical_frame', 5)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (424, 512, 16, 16 * 512)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1), ('rgb', 12, 7, 1)]
    assert not msg.is_dense and not msg.is_bigendian
    assert msg.header.frame_id == 'cam_ir_optical_frame'
    values = cloud(msg)
    assert np.isnan(values[0, 0, :3]).all() and values[1, 2, 2] == np.float32(1.5)
    assert values[1, 2, 3:].view(np.uint32)[0] == 0x1E140A  # 0x00RRGGBB
    with pytest.raises(ValueError):
        fill_point_cloud(PointCloud2(), np.zeros((2, 2), np.float32), 'f', 0)


def write_camera_info(path, fx=370.0, width=512, height=424):
    """Write a camera_info_manager YAML of a 512 x 424 camera with *fx*."""
    with open(path, 'w') as stream:
        stream.write(
            'image_width: {1}\nimage_height: {2}\ncamera_name: depth\n'
            'camera_matrix:\n  rows: 3\n  cols: 3\n'
            '  data: [{0}, 0, 256.5, 0, 371.0, 210.25, 0, 0, 1]\n'
            'distortion_model: plumb_bob\ndistortion_coefficients:\n  rows: 1\n'
            '  cols: 5\n  data: [0.1, -0.2, 0.001, 0.002, 0.05]\n'.format(fx, width, height))


@needs_rgbd
def test_calibration_sources(tmp_path):
    # A folder per device (kinect2_bridge's calib_path + sensor), found by device id or
    # its sanitised name; other devices keep their own values.
    shutil.copytree(RGBD, str(tmp_path / 'sensor_1'),
                    ignore=shutil.ignore_patterns('*.npz', '*.md'))
    write_camera_info(str(tmp_path / 'depth.yaml'))
    sources = CalibrationSources(str(tmp_path), '')
    assert sources.given('sensor-1') == sources.given('sensor_1') is not None
    assert sources.given('sensor-1').depth_shift_mm == pytest.approx(25.494991387182466)
    assert sources.given('other') is None
    assert sources.calibration('other', {}).source == 'device'
    assert sources.camera_fields('other', 'depth', 512, 424) is None
    color = sources.camera_fields('sensor-1', 'color', 960, 540)
    assert color['k'] == pytest.approx([MOCK_CALIBRATION['color_camera']['fx'] / 2, 0,
                                        MOCK_CALIBRATION['color_camera']['cx'] / 2, 0,
                                        MOCK_CALIBRATION['color_camera']['fy'] / 2,
                                        MOCK_CALIBRATION['color_camera']['cy'] / 2, 0, 0, 1])
    # camera_info_url: the depth camera of every device, for depth/, ir/ and sd/.
    url = 'file://' + str(tmp_path / 'depth.yaml')
    assert resolve_camera_info_url(url) == str(tmp_path / 'depth.yaml')
    sources = CalibrationSources('', url)
    fields = sources.camera_fields('any', 'ir', 512, 424)
    assert fields['k'] == [370.0, 0, 256.5, 0, 371.0, 210.25, 0, 0, 1]
    assert fields['d'] == [0.1, -0.2, 0.001, 0.002, 0.05]
    assert sources.camera_fields('any', 'color', 1920, 1080) is None
    calibration = sources.calibration('any', {'depth_camera': MOCK_CALIBRATION['depth_camera']})
    assert calibration.depth == CameraModel.from_values(512, 424, 370.0, 371.0, 256.5, 210.25,
                                                        [0.1, -0.2, 0.001, 0.002, 0.05])
    assert Registration(calibration).sd.camera_info_fields()['d'] == [0.0] * 5
    for url in ('http://example.org/depth.yaml', 'package://no_such_package_here/x.yaml'):
        with pytest.raises(ValueError, match='camera_info_url'):
            CalibrationSources('', url)
    with pytest.raises(ValueError, match='not a folder'):
        CalibrationSources(str(tmp_path / 'missing'), '')


def corrupt(path, old, new):
    """Replace *old* by *new* in the file at *path*."""
    with open(path) as stream:
        text = stream.read()
    assert old in text
    with open(path, 'w') as stream:
        stream.write(text.replace(old, new))


@needs_rgbd
@pytest.mark.parametrize('case', ['calib_pose', 'camera_info'])
def test_a_bad_calibration_file_stops_the_node_with_one_clear_error(tmp_path, case):
    if case == 'calib_pose':
        folder = tmp_path / 'calib'
        shutil.copytree(RGBD, str(folder), ignore=shutil.ignore_patterns('*.npz', '*.md'))
        corrupt(str(folder / 'calib_pose.yaml'), '9.9994077229087008e-01', '7.0')
        params = {'calib_path': str(folder)}
        names = ('calib_pose.yaml', 'rotation')
    else:
        write_camera_info(str(tmp_path / 'depth.yaml'), fx='.nan')
        params = {'camera_info_url': 'file://' + str(tmp_path / 'depth.yaml')}
        names = ('depth.yaml', 'camera_matrix')
    params.update({'kinect2_layout': 'true', 'server_endpoint': 'tcp://127.0.0.1:9'})
    out = ros_helpers.failed_start_output('client_node', params, 'calib ')
    errors = [line for line in out.splitlines() if 'CalibrationError' in line]
    assert len(errors) == 1, out
    for name in names:
        assert name in errors[0], out
    assert 'Traceback' not in out, out


def test_colour_is_registered_with_the_depth_of_its_own_capture():
    # The layout of one device fed directly (as the IOLoop thread does), published to a
    # real subscriber: colour made into sd/image_color_rect with the depth capture it was
    # paired with, also when it arrives first, and never with a capture of before a
    # restart that had the same sequence number.
    from streamkinect2.device import ColorFrame, DepthFrame
    from streamkinect2_ros.kinect2_layout import DeviceLayout

    with ros_helpers.TestSubscriber() as sub:
        got = []
        sub.node.create_subscription(OUTPUTS['sd/image_color_rect'], 'm/sd/image_color_rect',
                                     got.append, RELIABLE)
        layout = DeviceLayout(sub.node, 'dev', 'm', 'm', Calibration.default(), True,
                              RELIABLE)
        try:
            sub.spin_until(lambda: layout.wanted() == {'sd/image_color_rect'}, 10.0,
                           'the subscription matched')
            grey = np.full((540, 960, 3), 128, np.uint8)

            def depth(sequence, stamp, mm):
                layout.on_frame('depth', DepthFrame(np.full((424, 512), mm, np.uint16),
                                                    sequence=sequence, timestamp_ns=stamp),
                                stamp)

            def colour(sequence, stamp):
                layout.on_frame('color', ColorFrame(grey, sequence=sequence,
                                                    timestamp_ns=stamp, paired=True), stamp)

            def received(count):
                sub.spin_until(lambda: len(got) >= count, 10.0, 'image %d' % count)
                return stamp_ns(got[count - 1]), pixels(got[count - 1])

            depth(5, 5000, 1000)
            colour(5, 5000)
            stamp, image = received(1)
            assert stamp == 5000 and image.max() == 128
            colour(7, 7000)  # before its depth: it waits for it
            depth(6, 6000, 1000)
            depth(7, 7000, 1000)
            stamp, image = received(2)
            assert stamp == 7000 and image.max() == 128
            depth(1, 9000, 1000)  # the device started again
            colour(5, 9500)
            depth(5, 9900, 0)  # no depth anywhere: nothing seen in colour
            stamp, image = received(3)
            assert stamp == 9900 and image.max() == 0
            assert layout.figures()['sd/image_color_rect'] == 3
            assert layout.unmatched == 0
        finally:
            layout.close()


# --- end to end -------------------------------------------------------------------------

class LayoutRig(object):
    """A client node of the server at *endpoint*, the layout on, and a subscriber node.

    ``got`` collects the subscribed topics; ``values`` (``diagnostics``: None until then)
    the latest diagnostic values of device *device*, or of any device with layout figures
    when *device* is None; ``device`` is its id. *params* are the node's, over these.
    """

    def __init__(self, endpoint, prefix, device=None, **params):
        """Start the node and the subscriber."""
        self.namespace = '/' + ros_helpers.unique(prefix)
        self.base = self.namespace + '/kinect2/'
        values = {'server_endpoint': endpoint, 'kinect2_layout': 'true', 'streams': '[depth]',
                  'qos_reliability': 'reliable', 'diagnostics_period': 0.3}
        values.update(params)
        self.client = ros_helpers.NodeProcess('client_node', values, CLIENT_YAML,
                                              self.namespace)
        self.sub = ros_helpers.TestSubscriber()
        self.device = device
        self._any_device = device is None
        self.diagnostics = None
        self.values = {}
        self.got = {}
        self._subs = {}
        self.sub.node.create_subscription(diagnostic_msgs.DiagnosticArray, '/diagnostics',
                                          self._on_diagnostics, 10)

    def _on_diagnostics(self, msg):
        for status in msg.status:
            values = {value.key: value.value for value in status.values}
            if NODE_NAME in status.name and ('kinect2_jobs' in values if self._any_device
                                             else status.hardware_id == self.device):
                self.device = status.hardware_id
                self.diagnostics = self.values = values

    def figure(self, key):
        """Return one of the layout's figures from the latest diagnostics (int)."""
        return int(self.diagnostics['kinect2_' + key.replace('/', '_')])

    def value(self, key):
        """Return diagnostic value *key* as an int (0 until it is there)."""
        return int(self.values.get(key, 0))

    def subscribe(self, *topics):
        """Subscribe to layout outputs (``'qhd/points'``) or device topics (``'/…'``)."""
        from sensor_msgs.msg import Image
        for topic in topics:
            self.got[topic] = []
            if topic.startswith('/'):
                name, kind = '{0}/{1}{2}'.format(self.namespace, self.device, topic), Image
            else:
                name, kind = self.base + topic, OUTPUTS[topic]
            self._subs[topic] = self.sub.node.create_subscription(
                kind, name, self.got[topic].append, RELIABLE)

    def unsubscribe_all(self):
        """Destroy every subscription of :py:meth:`subscribe`."""
        for subscription in self._subs.values():
            self.sub.node.destroy_subscription(subscription)
        self._subs.clear()

    def spin(self, seconds):
        """Spin the subscriber for *seconds*."""
        deadline = time.monotonic() + seconds
        self.sub.spin_until(lambda: time.monotonic() > deadline, seconds + 1.0)

    def close(self):
        """Stop the node and the subscriber."""
        try:
            self.sub.close()
        finally:
            self.client.close()

    def __enter__(self):
        """Return the rig."""
        return self

    def __exit__(self, *exc):
        """Close the rig."""
        self.close()


class Rig(LayoutRig):
    """The module's mock server (replaying the rgbd captures) and layout client node."""

    def __init__(self):
        """Start the server, the client and a subscriber node."""
        port = ros_helpers.free_port()
        code = 'import sys; from streamkinect2.tools import mock_server_main; ' \
               'sys.exit(mock_server_main())'
        self.server = subprocess.Popen(
            [sys.executable, '-c', code, '--address', LOOPBACK, '--no-announce',
             '--name', ros_helpers.unique('layout '), '--control-port', str(port),
             '--fps', '10', '--replay', RECORDING, '--color-resolution', 'qhd'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ros_helpers.node_env())
        try:
            super().__init__('tcp://{0}:{1}'.format(LOOPBACK, port), 'k', calib_path=RGBD,
                             log_period=1.0, response_timeout=2.0, reconnect_period=0.5)
        except BaseException:
            self._stop_server()
            raise

    def _stop_server(self):
        self.server.terminate()
        try:
            self.server.wait(10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait(5)

    def close(self):
        """Stop everything."""
        try:
            super().close()
        finally:
            self._stop_server()


@pytest.fixture(scope='module')
def rig():
    rig = Rig()
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture(scope='module')
def recorded():
    """Return Registration with the calib_path calibration, and the recorded depth_rects."""
    calibration = Calibration.from_iai_kinect2(RGBD)
    registration = Registration(calibration, color_size=(960, 540))
    with np.load(RECORDING) as archive:
        depth, ir = archive['depth'], archive['ir']
    rects = [registration.depth_rect(frame) for frame in depth]
    return registration, rects, ir


@needs_rgbd
def test_nothing_is_computed_while_nobody_subscribes(rig):
    rig.sub.spin_until(lambda: rig.diagnostics is not None
                       and int(rig.diagnostics.get('published', 0)) >= 5, 60.0,
                       'depth frames published and the layout in /diagnostics')
    for key in ('jobs', 'depth_rect', 'registered_depth', 'color_to_depth', 'clouds',
                'skipped', 'sd/points', 'qhd/points'):
        assert rig.figure(key) == 0, rig.diagnostics
    # streams:=[depth]: IR and colour are not even received.
    assert rig.diagnostics['kinect2_receiving'] == 'depth'
    assert 'kinect2_calibration' in rig.diagnostics
    assert rig.diagnostics['kinect2_calibration'].startswith('iai_kinect2:')
    # Only sd/image_depth_rect: depth undistorted, nothing registered, no cloud.
    rig.subscribe('sd/image_depth_rect')
    rig.sub.spin_until(lambda: len(rig.got['sd/image_depth_rect']) >= 3, 30.0,
                       'sd/image_depth_rect')
    published = int(rig.diagnostics['published'])
    rig.sub.spin_until(lambda: int(rig.diagnostics['published']) >= published + 3, 30.0,
                       'diagnostics after the subscription')
    assert rig.figure('depth_rect') >= 3
    for key in ('registered_depth', 'color_to_depth', 'color_rect', 'clouds', 'ir_rect',
                'color_jobs', 'ir_jobs', 'qhd/image_depth_rect'):
        assert rig.figure(key) == 0, (key, rig.diagnostics)
    rig.unsubscribe_all()
    rig.client.wait_for_output('kinect2 layout under kinect2: ', 10.0)
    # TF: published where tf2_msgs is importable; here, said once, clearly.
    if tf2_msgs_missing() is not None:
        assert rig.client.output().count(TF_WARNING) == 1, rig.client.output()
        assert 'ros-' in rig.client.output() and 'tf2-msgs' in rig.client.output()
    else:  # a ROS distribution: the transforms are latched on /tf_static
        from tf2_msgs.msg import TFMessage
        got = []
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        rig.sub.node.create_subscription(TFMessage, '/tf_static', got.append, latched)
        rig.sub.spin_until(lambda: got, 10.0, '/tf_static')
        expected = static_transforms(Calibration.from_iai_kinect2(RGBD), 'kinect2', 0)
        transforms = {t.child_frame_id: t for t in got[-1].transforms}
        for want in expected:
            have = transforms[want.child_frame_id]
            assert have.header.frame_id == want.header.frame_id
            assert have.transform == want.transform
        assert TF_WARNING not in rig.client.output()
    assert 'Traceback' not in rig.client.output(), rig.client.output()


def check_info(info, width, height, camera, frame_id):
    """Assert *info* describes the rectified *camera* at *width* x *height*."""
    assert (info.width, info.height) == (width, height)
    assert info.header.frame_id == frame_id
    assert info.distortion_model == 'plumb_bob'
    assert list(info.d) == [0.0] * 5
    k = camera.K
    assert list(info.k) == pytest.approx(k.ravel().tolist())
    assert list(info.p) == pytest.approx(np.hstack([k, np.zeros((3, 1))]).ravel().tolist())
    assert list(info.r) == [1, 0, 0, 0, 1, 0, 0, 0, 1]


def recorded_index(rects, depth):
    """Return the index of the recorded capture whose depth_rect *depth* is."""
    for index, rect in enumerate(rects):
        if np.array_equal(rect, depth):
            return index
    raise AssertionError('a published depth_rect that no recorded capture makes')


@needs_rgbd
def test_sd_and_qhd_topics(rig, recorded):
    registration, rects, ir = recorded
    sd_frame, rgb_frame = 'kinect2_ir_optical_frame', 'kinect2_rgb_optical_frame'
    outputs = [output for output in OUTPUTS if not output.startswith('hd/')]
    rig.subscribe(*outputs)
    rig.sub.spin_until(lambda: all(len(rig.got[o]) >= 3 for o in outputs), 90.0,
                       'every sd and qhd topic')
    # The IR and colour the subscribed topics need are received now (streams:=[depth]);
    # /diagnostics comes once a second, so the last one may predate the topics' frames.
    rig.sub.spin_until(lambda: rig.diagnostics['kinect2_receiving'] == 'depth,ir,color',
                       10.0, 'diagnostics saying IR and colour are received')
    got = rig.got

    def shared(output):  # images of output made from a capture of sd/image_depth_rect
        stamps = {stamp_ns(img) for img in got['sd/image_depth_rect']}
        return {stamp_ns(img) for img in got[output]} & stamps
    for output in ('qhd/image_depth_rect', 'sd/image_ir_rect', 'sd/image_color_rect',
                   'sd/points', 'sd/camera_info'):
        rig.sub.spin_until(lambda: shared(output), 30.0, output + ' of a known capture')

    # Depth: byte for byte what Registration makes of a recorded capture.
    by_stamp = {}
    for img in got['sd/image_depth_rect']:
        assert (img.encoding, img.width, img.height, img.step) == ('16UC1', 512, 424, 1024)
        assert img.header.frame_id == sd_frame
        by_stamp[stamp_ns(img)] = recorded_index(rects, pixels(img))
    for img in got['qhd/image_depth_rect']:
        assert (img.encoding, img.width, img.height, img.step) == ('16UC1', 960, 540, 1920)
        assert img.header.frame_id == rgb_frame
        if stamp_ns(img) in by_stamp:
            index = by_stamp[stamp_ns(img)]
            assert np.array_equal(pixels(img), registration.register_depth(
                rects[index], registration.qhd))
    for img in got['sd/image_ir_rect']:
        assert (img.encoding, img.width, img.height) == ('16UC1', 512, 424)
        assert img.header.frame_id == sd_frame
        if stamp_ns(img) in by_stamp:
            assert np.array_equal(pixels(img),
                                  registration.ir_rect(ir[by_stamp[stamp_ns(img)]]))
    for img in got['sd/image_color_rect']:
        assert (img.encoding, img.width, img.height, img.step) == ('bgr8', 512, 424, 1536)
        assert img.header.frame_id == sd_frame
        # The chessboard scene is seen by the colour camera: most pixels with depth have
        # a colour, pixels without depth have none.
        colour = pixels(img).max(axis=2) > 0
        if stamp_ns(img) in by_stamp:
            rect = rects[by_stamp[stamp_ns(img)]]
            assert not colour[rect == 0].any()
            assert colour[rect > 0].mean() > 0.7
    for output in ('qhd/image_color_rect', 'qhd/image_color'):
        for img in got[output]:
            assert (img.encoding, img.width, img.height) == ('bgr8', 960, 540)
            assert img.header.frame_id == rgb_frame
            assert pixels(img).mean() > 20
    # CameraInfo: the rectified cameras, with the stamps of the images.
    for info in got['sd/camera_info']:
        check_info(info, 512, 424, registration.sd, sd_frame)
    for info in got['qhd/camera_info']:
        check_info(info, 960, 540, registration.qhd, rgb_frame)
    assert {stamp_ns(m) for m in got['qhd/camera_info']} & {
        stamp_ns(m) for m in got['qhd/image_color_rect']}

    # Clouds: organised, in their image's frame; each point projects with its
    # camera_info's K onto its own pixel, and its z is that pixel's depth.
    for res, frame_id, camera in (('sd', sd_frame, registration.sd),
                                  ('qhd', rgb_frame, registration.qhd)):
        for msg in got[res + '/points']:
            assert (msg.width, msg.height) == (camera.width, camera.height)
            assert msg.header.frame_id == frame_id
            assert msg.point_step == 16 and not msg.is_dense
            assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb']
            values = cloud(msg)
            z = values[:, :, 2]
            valid = np.isfinite(z)
            assert valid.mean() > 0.3
            v, u = np.nonzero(valid)
            k = camera.K
            assert np.abs(k[0, 0] * values[v, u, 0] / z[valid] + k[0, 2] - u).max() < 1e-2
            assert np.abs(k[1, 1] * values[v, u, 1] / z[valid] + k[1, 2] - v).max() < 1e-2
            if res == 'sd' and stamp_ns(msg) in by_stamp:
                rect = rects[by_stamp[stamp_ns(msg)]]
                assert np.array_equal(valid, rect > 0)
                assert np.abs(z[valid] * 1000 - rect[valid]).max() < 0.5
    # A cloud's colours are its image_color_rect of the same capture.
    sd_colour = {stamp_ns(img): pixels(img) for img in got['sd/image_color_rect']}
    rig.sub.spin_until(lambda: any(stamp_ns(m) in sd_colour for m in got['sd/points'])
                       or sd_colour.update({stamp_ns(i): pixels(i)
                                            for i in got['sd/image_color_rect']}),
                       30.0, 'sd/points and sd/image_color_rect of one capture')
    for msg in got['sd/points']:
        if stamp_ns(msg) in sd_colour:
            rgb = cloud(msg)[:, :, 3].copy().view(np.uint8).reshape(424, 512, 4)
            assert np.array_equal(rgb[:, :, :3], sd_colour[stamp_ns(msg)])
    rig.sub.spin_until(lambda: rig.figure('qhd/points') > 0 and rig.figure('clouds') > 0,
                       10.0, 'the clouds counted')
    for key in ('skipped', 'unmatched_color', 'color_skipped', 'failures'):
        assert 'kinect2_' + key in rig.diagnostics
    assert rig.figure('failures') == 0, rig.diagnostics
    # Nothing was made for hd: nobody subscribed to it.
    for output in ('hd/image_depth_rect', 'hd/image_color_rect', 'hd/image_color',
                   'hd/points'):
        assert rig.figure(output) == 0
    rig.unsubscribe_all()
    rig.sub.spin_until(lambda: rig.diagnostics['kinect2_receiving'] == 'depth', 10.0,
                       'IR and colour dropped with their last subscriber')
    assert 'Traceback' not in rig.client.output(), rig.client.output()


# --- colour from a hostile server ---------------------------------------------------------

class HostileRig(LayoutRig):
    """A client node with the layout on, fed by a :py:class:`FakeServer` in this process.

    The fake streams depth (the mock's frames) and colour of device ``dev``; the test
    sends any colour message through it.
    """

    def __init__(self, fake, **params):
        """Start the node (streams:=[depth] unless *params* say otherwise) and a subscriber."""
        values = {'log_period': 60.0, 'response_timeout': 1.0, 'reconnect_period': 0.2}
        values.update(params)
        self.fake = fake
        super().__init__(fake.endpoint, 'h', device='dev', **values)


def colour_message(sequence, jpeg, width, height, stamp_ns):
    """Return the parts of an unpaired colour message of *jpeg*, header *width* x *height*."""
    from test_client_hostile import color_parts
    return color_parts(sequence, jpeg, width=width, height=height, paired=False,
                       timestamp_ns=stamp_ns)


def test_colour_the_layout_cannot_use_is_refused_counted_and_said_once():
    # Sizes other than the calibration's hd and qhd (1280 x 720, 1 x 1, and a new size
    # every frame: each cost Registration 12 MiB of tables), damaged scan data, greyscale:
    # through a real socket and the node, while depth-only outputs go on.
    import psutil
    from streamkinect2 import codec
    from test_client_hostile import color_card, FakeServer, pillow_jpeg

    def jpeg_of(size):
        return codec.encode_jpeg(color_card(*size), 50)
    odd = [(1280, 720), (1, 1)] + [(80 * k, 45 * k) for k in range(1, 24) if k != 12]
    qhd = jpeg_of((960, 540))
    scan = qhd.index(b'\xff\xda')
    middle = (scan + len(qhd)) // 2
    damaged = qhd[:middle] + bytes(2000) + qhd[middle + 2000:]
    with FakeServer(streams=('depth', 'color'), frame_period=0.05) as fake, \
            HostileRig(fake, log_period=1.0) as rig:
        fake.paused.add('color')  # colour: what the test sends alone
        fake.streaming.set()
        rig.subscribe('sd/image_depth_rect', 'hd/image_color', 'hd/image_color_rect')
        stamps = iter(range(10 ** 18, 2 * 10 ** 18, 1000))
        sequences = iter(range(100000, 200000))

        def send(jpeg, size):
            stamp = next(stamps)
            fake.send('color', colour_message(next(sequences), jpeg, size[0], size[1], stamp))
            return stamp

        def made(jpeg, output, timeout=10.0):
            # Send until *output* has an image of one of the frames sent (the PUB drops
            # what it sends before the node's SUB has joined); return its stamp.
            sent = set()
            deadline = time.monotonic() + timeout
            while not sent & {stamp_ns(img) for img in rig.got[output]}:
                assert time.monotonic() < deadline, 'no {0} of the frames sent'.format(output)
                sent.add(send(jpeg, (960, 540)))
                rig.spin(0.3)
            return (sent & {stamp_ns(img) for img in rig.got[output]}).pop()

        # Colour is received once its layout topics have subscribers.
        rig.sub.spin_until(lambda: 'color' in rig.values.get('kinect2_receiving', ''), 30.0,
                           'colour received for the layout')
        made(qhd, 'hd/image_color')
        rig.sub.spin_until(lambda: len(rig.got['sd/image_depth_rect']) >= 3, 10.0,
                           'sd/image_depth_rect')
        process = psutil.Process(rig.client.pid)
        base = peak = process.memory_info().rss
        refused = set()
        began = time.monotonic()
        for size in odd:
            refused.add(send(jpeg_of(size), size))
            rig.spin(0.05)
            peak = max(peak, process.memory_info().rss)
        rig.sub.spin_until(lambda: rig.value('kinect2_color_refused') >= len(odd), 10.0,
                           'every colour frame of another size refused')
        assert rig.value('kinect2_color_refused') == len(odd)
        assert rig.value('kinect2_failures') == 0
        growth = (peak - base) / 2 ** 20
        assert growth < 64, 'the node grew by {0:.0f} MiB'.format(growth)
        # Said once (at most every 5 s), with what it takes.
        rig.client.wait_for_output('refused', 10.0)
        lines = [line for line in rig.client.output().splitlines()
                 if 'colour frames of' in line]
        assert 1 <= len(lines) <= 1 + (time.monotonic() - began) // 5, lines
        assert '1280x720 refused' in lines[0] and '(qhd)' in lines[0], lines
        # The node's periodic log line counts them as well.
        rig.client.wait_for_output("{0} refused (not the calibration's size".format(len(odd)),
                                   10.0)

        # Damaged scan data (a whole JPEG of the right size): lost at decoding, counted.
        began = time.monotonic()
        for _ in range(3):
            send(damaged, (960, 540))
            rig.spin(0.1)
        rig.sub.spin_until(lambda: rig.value('kinect2_failures') >= 3, 10.0,
                           'the damaged frames counted')
        lines = [line for line in rig.client.output().splitlines() if 'was lost' in line]
        assert 1 <= len(lines) <= 1 + (time.monotonic() - began) // 5, lines
        assert 'Corrupt JPEG' in lines[0], lines

        # Greyscale: registered as it is, grey in every channel.
        grey_stamp = made(pillow_jpeg('L'), 'hd/image_color')
        for output in ('hd/image_color', 'hd/image_color_rect'):
            rig.sub.spin_until(lambda: any(stamp_ns(img) == grey_stamp
                                           for img in rig.got[output]), 10.0, output)
            image = [pixels(img) for img in rig.got[output] if stamp_ns(img) == grey_stamp][0]
            assert image.shape == (1080, 1920, 3) and image.max() > 100
            assert (image == image[:, :, :1]).all()
        # Nothing was made of the refused frames; depth went on all along.
        for output in ('hd/image_color', 'hd/image_color_rect'):
            assert not {stamp_ns(img) for img in rig.got[output]} & refused
        count = len(rig.got['sd/image_depth_rect'])
        rig.sub.spin_until(lambda: len(rig.got['sd/image_depth_rect']) >= count + 3, 10.0,
                           'sd/image_depth_rect going on')
        assert rig.client.proc.poll() is None
        assert 'Traceback' not in rig.client.output(), rig.client.output()


def test_colour_bombs_are_refused_before_decoding_by_the_node_and_its_layout():
    # A JPEG header claiming 65500 x 65500 (in a frame header of 1920 x 1080, or both
    # claiming it), and a progressive JPEG of 60000 scans (720 KB: seconds of CPU per
    # decode, on the node's IOLoop thread for color/image_raw): refused unread, counted,
    # memory bounded (peak RSS of the node), the connection and every stream going on.
    import psutil
    from test_client_hostile import color_jpeg, FakeServer, progressive_jpeg

    card = color_jpeg()
    at = card.index(b'\xff\xc0')
    claiming = card[:at + 5] + (65500).to_bytes(2, 'big') * 2 + card[at + 9:]
    bombs = [(claiming, (1920, 1080)), (claiming, (65500, 65500)),
             (progressive_jpeg(60000), (960, 540))]
    with FakeServer(streams=('depth', 'color'), frame_period=0.1) as fake, \
            HostileRig(fake, streams='[depth,color]') as rig:
        fake.streaming.set()  # valid qhd colour too, every 0.1 s
        rig.subscribe('/color/image_raw', '/depth/image_raw', 'hd/image_color',
                      'sd/image_depth_rect')
        rig.sub.spin_until(lambda: all(len(got) >= 3 for got in rig.got.values()), 30.0,
                           'every subscribed topic')
        process = psutil.Process(rig.client.pid)
        base = peak = process.memory_info().rss
        decoded = rig.value('color_decoded')
        for turn in range(3):
            for sequence, (jpeg, size) in enumerate(bombs, 100000 + 10 * turn):
                fake.send('color', colour_message(sequence, jpeg, size[0], size[1],
                                                  time.time_ns()))
                rig.spin(0.1)
                peak = max(peak, process.memory_info().rss)
        rig.sub.spin_until(lambda: rig.value('color_invalid') >= 3 * len(bombs), 10.0,
                           'every bomb counted invalid')
        counts = {topic: len(got) for topic, got in rig.got.items()}
        rig.sub.spin_until(lambda: all(len(rig.got[t]) >= counts[t] + 3 for t in counts),
                           10.0, 'every topic going on')
        growth = (peak - base) / 2 ** 20
        assert growth < 64, 'the node grew by {0:.0f} MiB'.format(growth)
        assert rig.value('color_invalid') == 3 * len(bombs)
        assert rig.value('color_decoded') > decoded
        for img in rig.got['/color/image_raw']:
            assert (img.width, img.height) == (960, 540)
        assert rig.value('kinect2_failures') == rig.value('kinect2_color_refused') == 0
        # One connection all along: the IOLoop was never held up past response_timeout.
        assert rig.client.output().count('Connected to server') == 1, rig.client.output()
        assert 'Traceback' not in rig.client.output(), rig.client.output()


def test_a_bad_colour_record_is_said_once_whatever_the_sizes_of_the_frames():
    # A color_camera record that is no camera (fx < 0) and colour frames alternating
    # hd and qhd: the CameraInfo fields are made again at each size, the warning is
    # the record's and said once (it was said with every frame).
    from sensor_msgs.msg import CameraInfo
    from test_client_hostile import color_jpeg, FakeServer

    def reply(fake, frames):
        if frames[0] == b'\x01':
            return [b'\x02']
        return fake.me([{'id': 'dev', 'endpoints': dict(fake.stream_endpoints),
                         'color_camera': {'fx': -5.0, 'fy': 1081.0, 'cx': 959.5,
                                          'cy': 539.5}}])
    sizes = [(960, 540), (1920, 1080)]
    with FakeServer(reply, streams=('depth', 'color'), frame_period=0.05) as fake, \
            HostileRig(fake, streams='[color]', kinect2_layout='false') as rig:
        fake.paused.add('color')
        fake.streaming.set()
        infos = []
        rig.sub.node.create_subscription(CameraInfo, rig.namespace + '/dev/color/camera_info',
                                         infos.append, RELIABLE)
        rig.sub.spin_until(lambda: rig.sub.node.count_publishers(
            rig.namespace + '/dev/color/camera_info') > 0, 30.0, 'the colour topics')
        sequence = 100000
        while len({(info.width, info.height) for info in infos}) < 2 or len(infos) < 10:
            assert sequence < 100200, 'CameraInfos of both sizes'
            size = sizes[sequence % 2]
            fake.send('color', colour_message(sequence, color_jpeg(*size), size[0], size[1],
                                              time.time_ns()))
            sequence += 1
            rig.spin(0.1)
        assert {(info.width, info.height) for info in infos} == set(sizes)
        # The defaults, scaled to each size.
        for info in infos:
            assert info.k[0] > info.width / 2
        warnings = [line for line in rig.client.output().splitlines()
                    if 'color_camera record is not usable' in line]
        assert len(warnings) == 1, warnings


def test_a_device_without_colour_gets_depth_outputs_and_no_colour_work():
    # The server streams colour on an endpoint its `me` record does not name: the node
    # never subscribes to it, the layout makes XYZ clouds, and nothing is lost or failed.
    from test_client_hostile import FakeServer

    def reply(fake, frames):
        if frames[0] == b'\x01':
            return [b'\x02']
        return fake.me([{'id': 'dev', 'endpoints': {'depth': fake.depth_endpoint}}])
    with FakeServer(reply, streams=('depth', 'color'), frame_period=0.05) as fake, \
            HostileRig(fake) as rig:
        fake.streaming.set()
        rig.subscribe('hd/image_color', 'sd/points', 'sd/image_depth_rect')
        rig.sub.spin_until(lambda: len(rig.got['sd/points']) >= 3
                           and len(rig.got['sd/image_depth_rect']) >= 3, 30.0,
                           'sd/points and sd/image_depth_rect')
        published = rig.value('kinect2_sd_points')
        rig.sub.spin_until(lambda: rig.value('kinect2_sd_points') >= published + 3, 10.0,
                           'diagnostics of the clouds')
        assert [f.name for f in rig.got['sd/points'][-1].fields] == ['x', 'y', 'z']
        assert rig.values['kinect2_receiving'] == 'depth'
        assert not rig.got['hd/image_color']
        for key in ('kinect2_color_jobs', 'kinect2_failures', 'kinect2_color_refused',
                    'kinect2_unmatched_color'):
            assert rig.value(key) == 0, (key, rig.values)
        assert 'Traceback' not in rig.client.output(), rig.client.output()
