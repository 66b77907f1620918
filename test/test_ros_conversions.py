"""Unit tests of the message conversions and the device backend registry."""
import numpy as np
import pytest

from streamkinect2 import MockKinect
from streamkinect2_ros import backends, conversions

sensor_msgs = pytest.importorskip('sensor_msgs.msg')


@pytest.mark.parametrize('device_id,name', [
    ('mock-3f2a', 'mock_3f2a'), ('012345678', 'kinect2_012345678'), ('a--b..c', 'a_b_c'),
    ('_x_', 'x'), ('', 'kinect2'), ('ok_name', 'ok_name')])
def test_sanitise_name(device_id, name):
    assert conversions.sanitise_name(device_id) == name


def test_frame_id_substitution():
    template = 'kinect2_{device}_depth_optical_frame'
    assert conversions.frame_id_for(template, 'mock0') == 'kinect2_mock0_depth_optical_frame'
    assert conversions.frame_id_for('fixed_frame', 'mock0') == 'fixed_frame'


def test_fill_image_is_byte_exact_16uc1():
    pixels = MockKinect.render_frame(1234)
    msg = conversions.fill_image(sensor_msgs.Image(), pixels, 'f', 1700000000123456789)
    assert (msg.width, msg.height, msg.step, msg.encoding) == (512, 424, 1024, '16UC1')
    assert msg.header.stamp.sec == 1700000000 and msg.header.stamp.nanosec == 123456789
    assert bytes(msg.data) == pixels.tobytes()
    assert msg.is_bigendian is False or np.little_endian is False
    swapped = conversions.fill_image(sensor_msgs.Image(), pixels.astype('>u2'), 'f', 0)
    assert swapped.is_bigendian is True
    assert bytes(swapped.data) == pixels.astype('>u2').tobytes()
    with pytest.raises(ValueError):
        conversions.fill_image(sensor_msgs.Image(), pixels.astype(np.float32), 'f', 0)


def test_camera_info_defaults_and_device_record():
    fields = conversions.camera_info_fields(512, 424)
    msg = conversions.fill_camera_info(sensor_msgs.CameraInfo(), fields, 'f', 5)
    d = conversions.DEFAULT_DEPTH_INTRINSICS
    assert msg.distortion_model == 'plumb_bob'
    assert list(msg.k) == pytest.approx([d['fx'], 0, d['cx'], 0, d['fy'], d['cy'], 0, 0, 1])
    own = conversions.camera_info_fields(512, 424, {'fx': 360.0, 'cy': 200, 'k1': 'bad'})
    assert own['k'][0] == 360.0 and own['k'][5] == 200.0 and own['d'][0] == d['k1']
    assert own['p'][0] == 360.0


def test_backend_registry():
    devices = backends.create_devices('mock', {'mock_count': 2, 'mock_fps': 5.0,
                                               'mock_ids': ['a']})
    assert devices[0].unique_kinect_id == 'a' and devices[1].unique_kinect_id != 'a'
    assert 'mock' in backends.available_backends()
    with pytest.raises(backends.BackendError):
        backends.create_devices('nonesuch', {})
    with pytest.raises(backends.BackendError):
        backends.create_devices('mock', {'mock_count': 1, 'mock_ids': ['a', 'b']})
    with pytest.raises(backends.BackendError):
        backends.create_devices('freenect2', {})
