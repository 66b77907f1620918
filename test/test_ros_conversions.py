"""Unit tests of the message conversions and the device backend registry."""
import math
import re

from hypothesis import given, HealthCheck, settings, strategies as st
import numpy as np
import pytest

from streamkinect2 import MockKinect
from streamkinect2.codec import encode_jpeg, halve_bgrx
from streamkinect2.device import (ColorFrame, INTRINSIC_KEYS, IrFrame,
                                  KINECT2_DEFAULT_DEPTH_CAMERA, MOCK_CALIBRATION)
from streamkinect2.protocol import decode_control
from streamkinect2_ros import backends, conversions

sensor_msgs = pytest.importorskip('sensor_msgs.msg')
builtin_interfaces = pytest.importorskip('builtin_interfaces.msg')
rclpy = pytest.importorskip('rclpy')
serialization = pytest.importorskip('rclpy.serialization')
validate_full_topic_name = pytest.importorskip(
    'rclpy.validate_full_topic_name').validate_full_topic_name
validate_namespace = pytest.importorskip('rclpy.validate_namespace').validate_namespace

#: What a token must look like: a letter, then letters, digits and single underscores.
_TOKEN = re.compile('[A-Za-z](?:_?[A-Za-z0-9])*')


@pytest.mark.parametrize('device_id,name', [
    ('mock-3f2a', 'mock_3f2a'), ('012345678', 'kinect2_012345678'), ('a--b..c', 'a_b_c'),
    ('_x_', 'x'), ('', 'kinect2'), ('ok_name', 'ok_name')])
def test_sanitise_name(device_id, name):
    assert conversions.sanitise_name(device_id) == name


def _device_topic(namespace, device_id):
    return '{0}/{1}/depth/camera_info'.format(namespace, conversions.sanitise_name(device_id))


def test_sanitise_name_shortens_long_ids_uniquely():
    # rmw refuses a topic name over 247 characters (RMW_TOPIC_MAX_NAME_LENGTH): a
    # 300-character serial number must still give a topic, with room for a namespace.
    long_a, long_b = 'A' * 299 + 'a', 'A' * 299 + 'b'
    token_a, token_b = conversions.sanitise_name(long_a), conversions.sanitise_name(long_b)
    assert len(token_a) <= conversions.MAX_NAME_LENGTH and _TOKEN.fullmatch(token_a)
    assert token_a != token_b
    assert token_a == conversions.sanitise_name(long_a)  # deterministic
    assert token_a.startswith('A' * 20)  # still recognisably the device
    # Ids that sanitise to the same long token stay apart too.
    assert conversions.sanitise_name('x-' * 100) != conversions.sanitise_name('x.' * 100)
    # Short ids are unchanged; one exactly at the limit too.
    at_limit = 'k' * conversions.MAX_NAME_LENGTH
    assert conversions.sanitise_name(at_limit) == at_limit
    # A lone surrogate (JSON '\\ud800' decodes to one) does not break the hash.
    assert _TOKEN.fullmatch(conversions.sanitise_name('\ud800' * 100 + 'x' * 100))


def test_long_device_id_gets_a_real_publisher():
    from rclpy.exceptions import InvalidTopicNameException
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('long_id_probe', namespace='/n' + 'n' * 99, context=context)
        try:
            device_id = 'serial-' + '0123456789' * 30
            with pytest.raises(InvalidTopicNameException):  # the limit is real
                node.create_publisher(sensor_msgs.CameraInfo,
                                      device_id.replace('-', '_') + '/depth/camera_info', 1)
            name = conversions.sanitise_name(device_id)
            pub = node.create_publisher(sensor_msgs.CameraInfo, name + '/depth/camera_info', 1)
            assert pub.topic_name == '/n{0}/{1}/depth/camera_info'.format('n' * 99, name)
            node.destroy_publisher(pub)
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.text(alphabet='a-_.0', min_size=200, max_size=400),
                 st.integers(), st.binary()))
def test_sanitise_name_is_always_a_valid_token(device_id):
    name = conversions.sanitise_name(device_id)
    assert _TOKEN.fullmatch(name) and len(name) <= conversions.MAX_NAME_LENGTH
    # Valid in <ns>/<token>/depth/image_raw with a 150-character namespace to spare.
    validate_full_topic_name(_device_topic('/' + 'n' * 150, device_id))
    validate_namespace('/' + name)
    assert name == conversions.sanitise_name(device_id)


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


def _colour_pixels(width=1920, height=1080, channels=4):
    """Return smooth BGRX (or BGR) test pixels: JPEG keeps them within a few levels."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, channels), np.uint8)
    pixels[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    pixels[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    pixels[..., 2] = 128
    if channels == 4:
        pixels[..., 3] = 255
    return pixels


def test_fill_image_bgr8_from_a_colour_frame():
    bgrx = _colour_pixels(64, 48)
    frame = ColorFrame(pixels=bgrx)
    view = frame.array  # the BGR view of BGRX pixels: not C-contiguous
    assert not view.flags.c_contiguous
    msg = conversions.fill_image(sensor_msgs.Image(), view, 'rgb', 1700000000000000001)
    assert (msg.width, msg.height, msg.step, msg.encoding) == (64, 48, 64 * 3, 'bgr8')
    assert msg.is_bigendian is False
    assert bytes(msg.data) == np.ascontiguousarray(bgrx[:, :, :3]).tobytes()
    assert msg.header.frame_id == 'rgb' and msg.header.stamp.nanosec == 1
    back = _round_trip(msg)
    assert bytes(back.data) == bytes(msg.data) and back.encoding == 'bgr8'
    # Decoded from JPEG (what a client has): within JPEG tolerance of the pixels.
    decoded = ColorFrame(jpeg=encode_jpeg(bgrx, 90), shape=(64, 48)).array
    msg = conversions.fill_image(sensor_msgs.Image(), decoded, 'rgb', 0)
    pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 64, 3)
    error = np.abs(pixels.astype(int) - bgrx[:, :, :3].astype(int))
    assert error.mean() < 2.0 and error.max() < 24
    for bad in (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.uint16),
                np.zeros((4, 4, 3), np.int8), np.zeros((4, 4), np.uint8)):
        with pytest.raises(ValueError):
            conversions.fill_image(sensor_msgs.Image(), bad, 'f', 0)


def test_fill_image_ir_is_byte_exact_16uc1():
    rng = np.random.default_rng(7)
    amplitude = rng.integers(0, 65536, size=(424, 512), dtype=np.uint16)
    frame = IrFrame(amplitude, sequence=3, timestamp_ns=5)
    msg = conversions.fill_image(sensor_msgs.Image(), frame.array, 'ir', frame.timestamp_ns)
    assert (msg.width, msg.height, msg.step, msg.encoding) == (512, 424, 1024, '16UC1')
    assert bytes(_round_trip(msg).data) == amplitude.tobytes()


def test_fill_compressed_image_forwards_the_jpeg_bytes():
    jpeg = encode_jpeg(_colour_pixels(160, 90), 80)
    msg = conversions.fill_compressed_image(sensor_msgs.CompressedImage(), jpeg, 'rgb',
                                            1700000000123456789)
    # Exactly what image_transport's compressed publisher writes for a bgr8 image.
    assert msg.format == 'bgr8; jpeg compressed bgr8'
    assert msg.header.frame_id == 'rgb'
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1700000000, 123456789)
    back = _round_trip(msg)
    assert bytes(back.data) == jpeg
    # Any buffer: a received frame's bytes may be a memoryview of a zmq frame.
    again = conversions.fill_compressed_image(sensor_msgs.CompressedImage(),
                                              memoryview(jpeg), 'rgb', 0)
    assert bytes(again.data) == jpeg
    with pytest.raises(ValueError, match='builtin_interfaces/Time'):
        conversions.fill_compressed_image(sensor_msgs.CompressedImage(), jpeg, 'f', -1)


def test_colour_camera_info_matches_the_image_at_hd_and_qhd():
    record = MOCK_CALIBRATION['color_camera']
    assert conversions.DEFAULT_COLOR_INTRINSICS is record  # one table, in device
    hd = conversions.camera_info_fields(1920, 1080, record,
                                        conversions.DEFAULT_COLOR_INTRINSICS)
    assert conversions.intrinsics_problems(record, 1920, 1080,
                                           conversions.DEFAULT_COLOR_INTRINSICS) == []
    assert (hd['width'], hd['height']) == (1920, 1080)
    assert hd['k'] == pytest.approx(_k(record))
    assert hd['d'] == pytest.approx([record['k1'], record['k2'], record['p1'], record['p2'],
                                     record['k3']])
    _assert_sane(hd, 1920, 1080)
    # qhd: the size of the halved pixels, the 1920 x 1080 record scaled to it.
    qhd_pixels = halve_bgrx(_colour_pixels(1920, 1080))
    height, width = qhd_pixels.shape[:2]
    qhd = conversions.camera_info_fields(width, height, record,
                                         conversions.DEFAULT_COLOR_INTRINSICS)
    assert (qhd['width'], qhd['height']) == (960, 540)
    assert qhd['k'] == pytest.approx(_k({key: record[key] / 2 for key in
                                         ('fx', 'fy', 'cx', 'cy')}))
    assert qhd['p'][:3] == pytest.approx([record['fx'] / 2, 0, record['cx'] / 2])
    assert qhd['d'] == hd['d']  # distortion does not change with the scale
    _assert_sane(qhd, 960, 540)
    # No record, or one that is not a camera: the colour defaults, not the depth ones.
    colour_defaults = conversions.camera_info_fields(960, 540, None,
                                                     conversions.DEFAULT_COLOR_INTRINSICS)
    assert colour_defaults == qhd
    hostile = dict(record, fx=float('inf'))
    assert conversions.camera_info_fields(
        960, 540, hostile, conversions.DEFAULT_COLOR_INTRINSICS) == qhd
    assert 'fx' in conversions.intrinsics_problems(
        hostile, 960, 540, conversions.DEFAULT_COLOR_INTRINSICS)[0]
    # libfreenect2's colour parameters have no distortion: zeros are taken as they are;
    # a record without them gets the colour defaults' distortion.
    no_distortion = {key: record[key] for key in ('width', 'height', 'fx', 'fy', 'cx',
                                                  'cy')}
    fields = conversions.camera_info_fields(1920, 1080, dict(
        no_distortion, k1=0.0, k2=0.0, k3=0.0, p1=0.0, p2=0.0),
        conversions.DEFAULT_COLOR_INTRINSICS)
    assert fields['d'] == [0.0] * 5
    fields = conversions.camera_info_fields(1920, 1080, no_distortion,
                                            conversions.DEFAULT_COLOR_INTRINSICS)
    assert fields['d'] == hd['d']


def _round_trip(msg):
    """Return *msg* as a subscriber gets it: serialized as for the wire, and back."""
    return serialization.deserialize_message(serialization.serialize_message(msg), type(msg))


def test_stamp_from_ns_fills_the_whole_time_range():
    last = (2 ** 31 - 1) * 10 ** 9 + 999999999  # 2038-01-19T03:14:07.999999999Z
    for time_ns in (0, 1700000000123456789, last):
        stamp = conversions.stamp_from_ns(builtin_interfaces.Time(check_fields=True), time_ns)
        back = _round_trip(stamp)
        assert back.sec * 10 ** 9 + back.nanosec == time_ns


@pytest.mark.parametrize('time_ns', [2 ** 31 * 10 ** 9, 2 ** 32 * 10 ** 9 + 5, 2 ** 63 - 1,
                                     -1, -2 ** 63, float('inf'), float('-inf')])
def test_stamp_outside_builtin_time_is_refused(time_ns):
    # Unchecked (ROS_PYTHON_CHECK_FIELDS unset), rclpy would take sec = 2**31 and publish
    # it wrapped to -2**31 (1901); checked, it raises AssertionError. Neither is wanted.
    with pytest.raises(ValueError, match='builtin_interfaces/Time'):
        conversions.stamp_from_ns(builtin_interfaces.Time(), time_ns)
    pixels = MockKinect.render_frame(1)
    with pytest.raises(ValueError, match='builtin_interfaces/Time'):
        conversions.fill_image(sensor_msgs.Image(), pixels, 'f', time_ns)
    fields = conversions.camera_info_fields(512, 424)
    with pytest.raises(ValueError, match='builtin_interfaces/Time'):
        conversions.fill_camera_info(sensor_msgs.CameraInfo(), fields, 'f', time_ns)


def _k(record):
    return [record['fx'], 0, record['cx'], 0, record['fy'], record['cy'], 0, 0, 1]


def _assert_sane(fields, width=512, height=424):
    values = fields['k'] + fields['p'] + fields['d'] + fields['r']
    assert all(type(v) is float and math.isfinite(v) for v in values)
    fx, cx, fy, cy = fields['k'][0], fields['k'][2], fields['k'][4], fields['k'][5]
    assert fx > 0 and fy > 0 and 0 <= cx <= width and 0 <= cy <= height
    msg = sensor_msgs.CameraInfo(check_fields=True)
    conversions.fill_camera_info(msg, fields, 'f', 5)
    back = _round_trip(msg)
    assert list(back.k) == fields['k'] and list(back.d) == fields['d']


def test_camera_info_defaults_and_device_record():
    fields = conversions.camera_info_fields(512, 424)
    msg = conversions.fill_camera_info(sensor_msgs.CameraInfo(), fields, 'f', 5)
    d = conversions.DEFAULT_DEPTH_INTRINSICS
    assert d is KINECT2_DEFAULT_DEPTH_CAMERA  # one table, in streamkinect2.device
    assert msg.distortion_model == 'plumb_bob'
    assert list(msg.k) == pytest.approx(_k(d))
    assert conversions.intrinsics_problems(None, 512, 424) == []
    own_record = {'width': 512, 'height': 424, 'fx': 366.1, 'fy': 366.2, 'cx': 258.3,
                  'cy': 204.9, 'k1': 0.09, 'k2': -0.27, 'k3': 0.1, 'p1': 0.001, 'p2': -0.0007}
    own = conversions.camera_info_fields(512, 424, own_record)
    assert conversions.intrinsics_problems(own_record, 512, 424) == []
    assert own['k'] == _k(own_record)
    assert own['p'] == [366.1, 0, 258.3, 0, 0, 366.2, 204.9, 0, 0, 0, 1, 0]
    assert own['d'] == [0.09, -0.27, 0.001, -0.0007, 0.1]
    _assert_sane(own)
    # Without distortion (and without width/height): the camera's own fx..cy, and the
    # defaults' distortion for a Kinect v2 lens.
    core = {'fx': 360, 'fy': 361, 'cx': 250, 'cy': 200}
    assert conversions.intrinsics_problems(core, 512, 424) == []
    fields = conversions.camera_info_fields(512, 424, core)
    assert fields['k'] == _k(core) and fields['d'][0] == d['k1']


def test_camera_info_scales_a_record_for_another_image_size():
    record = dict(KINECT2_DEFAULT_DEPTH_CAMERA)
    fields = conversions.camera_info_fields(256, 212, record)
    assert fields['k'] == pytest.approx(_k({key: record[key] / 2 for key in record}))
    assert conversions.camera_info_fields(256, 212)['k'] == fields['k']
    _assert_sane(fields, 256, 212)


def _junk_records():
    d = KINECT2_DEFAULT_DEPTH_CAMERA
    good = {key: d[key] for key in ('fx', 'fy', 'cx', 'cy')}
    return [
        (dict(good, fx=float('inf')), 'fx'), (dict(good, fx=float('nan')), 'fx'),
        (dict(good, fy=10 ** 400), 'fy'), (dict(good, fx=0), 'fx'), (dict(good, fy=-365.0), 'fy'),
        (dict(good, fx=1e-300), 'fx'), (dict(good, fx=1e300), 'fx'),
        (dict(good, cx=1e300), 'cx'), (dict(good, cy=-5.0), 'cy'), (dict(good, cx=513), 'cx'),
        (dict(good, fx='365.456'), 'fx'), (dict(good, fx=True), 'fx'),
        (dict(good, cy={'nested': [1, 2]}), 'cy'), (dict(good, cx=[254.8]), 'cx'),
        (dict(good, fx=None), 'fx'), ({'fx': 360.0, 'cy': 200}, 'fy'),
        (dict(good, k1='bad'), 'k1'), (dict(good, k2=float('-inf')), 'k2'),
        (dict(good, p1=1e200), 'p1'), (dict(good, k3=False), 'k3'),
        (dict(good, width=0), 'width'), (dict(good, width='512'), 'width'),
        (dict(good, height=1), 'cy'), (dict(good, width=10 ** 400), 'width'),
        ([365.456, 365.456], 'record'), ('fx=365', 'record'), (17, 'record'), ({}, 'fx'),
    ]


@pytest.mark.parametrize('record,key', _junk_records())
def test_camera_info_never_lies_about_a_hostile_record(record, key):
    fields = conversions.camera_info_fields(512, 424, record)
    assert fields == conversions.camera_info_fields(512, 424)  # the defaults, whole
    problems = conversions.intrinsics_problems(record, 512, 424)
    assert any(key in problem for problem in problems), problems
    _assert_sane(fields)


def test_camera_info_from_hostile_json_on_the_wire():
    # What a server's ``me`` payload can hold and Python's json accepts: 1e400 is inf,
    # a 401-digit integer overflows float(), NaN and -Infinity are literals.
    for literal in ('1e400', '1' + '0' * 400, 'NaN', '-Infinity', '"365"', 'true', '[]'):
        raw = '{{"id":"a","depth_camera":{{"fx":{0},"fy":365,"cx":254,"cy":205}}}}'.format(
            literal)
        _, record = decode_control([b'\x04', raw.encode()])
        camera = record['depth_camera']
        fields = conversions.camera_info_fields(512, 424, camera)
        assert fields == conversions.camera_info_fields(512, 424), literal
        assert 'fx' in conversions.intrinsics_problems(camera, 512, 424)[0]
        _assert_sane(fields)


_VALUES = st.one_of(
    st.floats(), st.integers(), st.integers(min_value=10 ** 300, max_value=10 ** 400),
    st.floats(min_value=-600, max_value=600), st.floats(min_value=1e-3, max_value=1e7),
    st.booleans(), st.none(), st.text(max_size=5), st.lists(st.floats(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


_PLAUSIBLE = st.fixed_dictionaries(
    {key: st.floats(min_value=-10, max_value=2000) for key in ('fx', 'fy', 'cx', 'cy')},
    optional=dict({key: st.floats(-2, 2) for key in INTRINSIC_KEYS[4:]},
                  width=st.integers(-1, 2000), height=st.integers(-1, 2000)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), _VALUES, _PLAUSIBLE, st.dictionaries(
    st.sampled_from(('width', 'height') + INTRINSIC_KEYS), _VALUES)),
    st.one_of(st.just(512), st.integers(1, 4096)), st.one_of(st.just(424), st.integers(1, 4096)))
def test_camera_info_never_raises_and_is_always_finite(record, width, height):
    fields = conversions.camera_info_fields(width, height, record)
    problems = conversions.intrinsics_problems(record, width, height)
    _assert_sane(fields, width, height)
    assert (width, height) == (fields['width'], fields['height'])
    if problems:
        assert fields == conversions.camera_info_fields(width, height)
    elif record is not None and 'width' not in record and 'height' not in record:
        assert fields['k'] == [float(v) for v in _k(record)]


def test_backend_registry():
    devices = backends.create_devices('mock', {'mock_count': 2, 'mock_fps': 5.0,
                                               'mock_ids': ['a']})
    assert [d.unique_kinect_id for d in devices] == ['a', 'mock1']
    # Issue 12 point 6: generated ids are the same on every run (they used to be random),
    # and never one given to another device.
    options = {'mock_count': 4, 'mock_ids': ['mock1', 'x']}
    for _ in range(2):
        assert [d.unique_kinect_id for d in backends.create_devices('mock', options)] == [
            'mock1', 'x', 'mock2', 'mock3']
    assert 'mock' in backends.available_backends()
    with pytest.raises(backends.BackendError):
        backends.create_devices('nonesuch', {})
    with pytest.raises(backends.BackendError):
        backends.create_devices('mock', {'mock_count': 1, 'mock_ids': ['a', 'b']})
    with pytest.raises(backends.BackendError):
        backends.create_devices('freenect2', {})
