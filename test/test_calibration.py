"""Tests of streamkinect2.calibration: the files, the device record, the camera models, TF.

Real calibrations: the sensor of ``shared/data/rgbd`` (with its synchronised captures and
chessboard corners) and the two sensors in iai_kinect2's repository. OpenCV's own
``FileStorage`` is the independent reader (and writer) the strict reader is checked
against. Hostile files are written to ``tmp_path``.
"""
import json
import math
import os
import shutil
import subprocess
import threading

from hypothesis import given, HealthCheck, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from streamkinect2.calibration import (Calibration, CalibrationError, CameraModel,
                                       IAI_KINECT2_FILES, intrinsics_problems,
                                       MAX_FILE_BYTES, quaternion_from_rotation,
                                       read_camera_info_yaml)
from streamkinect2.device import INTRINSIC_KEYS, MOCK_CALIBRATION
from streamkinect2.mock import MockKinect
from streamkinect2.server import Server

cv2 = pytest.importorskip('cv2')

HERE = os.path.dirname(os.path.abspath(__file__))
RGBD = os.path.join(os.path.dirname(os.path.dirname(HERE)), 'shared', 'data', 'rgbd')
if not os.path.isdir(RGBD):
    RGBD = '/work/shared/data/rgbd'
IAI_MIRROR = '/work/.mirror/code-iai+iai_kinect2/repo'
IAI_SENSORS = ('196605135147', '299150235147')  # the second has no calib_depth.yaml

#: libfreenect2's factory values of one Kinect v2 (docs/protocol.md's example, the
#: stand-in sensor's), on libfreenect2's mirrored images.
FACTORY_DEPTH = {'width': 512, 'height': 424, 'fx': 365.456, 'fy': 365.456, 'cx': 254.878,
                 'cy': 205.395, 'k1': 0.0905474, 'k2': -0.26819, 'k3': 0.0950862,
                 'p1': 0.0012, 'p2': -0.0007}
FACTORY_COLOR = {
    'width': 1920, 'height': 1080, 'fx': 1081.37, 'fy': 1081.37, 'cx': 959.5, 'cy': 539.5,
    'k1': 0.0, 'k2': 0.0, 'k3': 0.0, 'p1': 0.0, 'p2': 0.0, 'shift_d': 863.0, 'shift_m': 52.0,
    'mx_x3y0': 0.000449, 'mx_x0y3': 1.91e-05, 'mx_x2y1': 4.28e-05, 'mx_x1y2': 0.000243,
    'mx_x2y0': -0.00129, 'mx_x0y2': 0.000337, 'mx_x1y1': 0.00144, 'mx_x1y0': 0.640,
    'mx_x0y1': 0.00473, 'mx_x0y0': 0.132, 'my_x3y0': 4.5e-05, 'my_x0y3': 0.000727,
    'my_x2y1': 0.000168, 'my_x1y2': 5.84e-05, 'my_x2y0': 0.000323, 'my_x0y2': -0.00175,
    'my_x1y1': 0.000671, 'my_x1y0': -0.00455, 'my_x0y1': 0.640, 'my_x0y0': 0.0142}


def _cv_read(path, key):
    """Read *key* of *path* with OpenCV's FileStorage (the reference reader)."""
    storage = cv2.FileStorage(path, cv2.FILE_STORAGE_READ)
    try:
        node = storage.getNode(key)
        return node.real() if node.isReal() else node.mat()
    finally:
        storage.release()


def _copy_rgbd(tmp_path, name='sensor'):
    folder = tmp_path / name
    folder.mkdir()
    for file_name in IAI_KINECT2_FILES:
        shutil.copy(os.path.join(RGBD, file_name), str(folder / file_name))
    return folder


def _assert_like_opencv(calibration, folder):
    folder = str(folder)
    for model, name in ((calibration.color, 'calib_color.yaml'),
                        (calibration.depth, 'calib_ir.yaml')):
        path = os.path.join(folder, name)
        assert np.array_equal(model.K, _cv_read(path, 'cameraMatrix'))
        assert np.array_equal(model.D, _cv_read(path, 'distortionCoefficients').reshape(-1))
    path = os.path.join(folder, 'calib_pose.yaml')
    assert np.array_equal(calibration.rotation, _cv_read(path, 'rotation'))
    assert np.array_equal(calibration.translation, _cv_read(path, 'translation').reshape(-1))
    path = os.path.join(folder, 'calib_depth.yaml')
    if os.path.exists(path):
        assert calibration.depth_shift_mm == _cv_read(path, 'depthShift')


# --- iai_kinect2 folders -------------------------------------------------------------

def test_the_rgbd_sensor_reads_as_opencv_reads_it_and_is_the_mock_calibration():
    calibration = Calibration.from_iai_kinect2(RGBD)
    _assert_like_opencv(calibration, RGBD)
    assert calibration.warnings == ()
    assert calibration.source == 'iai_kinect2:' + RGBD
    assert calibration.factory is None and calibration.factory_depth is None
    assert calibration.depth.size == (512, 424) and calibration.color.size == (1920, 1080)
    assert calibration.depth_shift_mm == pytest.approx(25.494991387182466, abs=0)
    # MOCK_CALIBRATION is this sensor's (the mock reports it): the same numbers.
    default = Calibration.default()
    assert default.source == 'default'
    assert default.depth == calibration.depth and default.color == calibration.color
    assert np.array_equal(default.rotation, calibration.rotation)
    assert np.array_equal(default.translation, calibration.translation)
    assert default.depth_shift_mm == calibration.depth_shift_mm
    assert default != calibration  # the source differs
    assert Calibration.from_iai_kinect2(RGBD) == calibration


@pytest.mark.parametrize('sensor', IAI_SENSORS)
def test_the_sensors_of_iai_kinect2_read_as_opencv_reads_them(tmp_path, sensor):
    if not os.path.isdir(IAI_MIRROR):
        pytest.skip('no mirror of iai_kinect2 at ' + IAI_MIRROR)
    folder = tmp_path / sensor
    folder.mkdir()
    names = subprocess.run(
        ['git', '-C', IAI_MIRROR, 'ls-tree', '--name-only', 'HEAD',
         'kinect2_bridge/data/{0}/'.format(sensor)], capture_output=True, text=True,
        check=True, timeout=60).stdout.split()
    assert names
    for name in names:
        content = subprocess.run(['git', '-C', IAI_MIRROR, 'show', 'HEAD:' + name],
                                 capture_output=True, check=True, timeout=60).stdout
        (folder / os.path.basename(name)).write_bytes(content)
    calibration = Calibration.from_iai_kinect2(str(folder))
    _assert_like_opencv(calibration, folder)
    if (folder / 'calib_depth.yaml').exists():
        assert calibration.warnings == ()
        assert calibration.depth_shift_mm == pytest.approx(-13.354238655403018, abs=0)
    else:  # as kinect2_bridge: no depth shift, and a warning saying so
        assert calibration.depth_shift_mm == 0.0
        (warning,) = calibration.warnings
        assert str(folder / 'calib_depth.yaml') in warning and 'missing' in warning
    # A sensor whose colour camera sits ~5 cm from its IR camera, along x.
    assert 0.04 < -calibration.translation[0] < 0.06


def _write_opencv(path, **values):
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    try:
        for key, value in values.items():
            storage.write(key, value)
    finally:
        storage.release()


@pytest.mark.parametrize('seed', range(5))
def test_files_written_by_opencv_read_back_exactly(tmp_path, seed):
    rng = np.random.default_rng(seed)

    def camera(width, height):
        k = np.array([[rng.uniform(0.4, 1.2) * width, 0, rng.uniform(0.4, 0.6) * width],
                      [0, rng.uniform(0.4, 1.2) * width, rng.uniform(0.4, 0.6) * height],
                      [0, 0, 1.0]])
        return k, rng.normal(0, 0.1, (1, 5))

    color_k, color_d = camera(1920, 1080)
    ir_k, ir_d = camera(512, 424)
    rotation = cv2.Rodrigues(rng.normal(0, 0.05, 3))[0]
    translation = rng.normal(0, 0.03, (3, 1))
    shift = float(rng.uniform(-40, 40))
    _write_opencv(tmp_path / 'calib_color.yaml', cameraMatrix=color_k,
                  distortionCoefficients=color_d, rotation=np.eye(3))
    _write_opencv(tmp_path / 'calib_ir.yaml', cameraMatrix=ir_k, distortionCoefficients=ir_d)
    _write_opencv(tmp_path / 'calib_pose.yaml', rotation=rotation, translation=translation,
                  essential=np.eye(3))
    _write_opencv(tmp_path / 'calib_depth.yaml', depthShift=shift)
    calibration = Calibration.from_iai_kinect2(tmp_path)
    assert np.array_equal(calibration.color.K, color_k)
    assert np.array_equal(calibration.color.D, color_d.reshape(-1))
    assert np.array_equal(calibration.depth.K, ir_k)
    assert np.array_equal(calibration.depth.D, ir_d.reshape(-1))
    assert np.array_equal(calibration.rotation, rotation)
    assert np.array_equal(calibration.translation, translation.reshape(-1))
    assert calibration.depth_shift_mm == shift
    # And the intrinsics records round-trip too.
    for model in (calibration.color, calibration.depth):
        assert CameraModel.from_intrinsics(model.intrinsics()) == model
        assert list(model.intrinsics()) == ['width', 'height'] + list(INTRINSIC_KEYS)


def test_yaml_variants_the_reader_takes(tmp_path):
    # No "---" (older OpenCV), comments, CRLF, a byte-order mark, a trailing comma,
    # block sequences, quoted keys, "..." at the end, a 5 x 1 distortion column.
    text = (u'\ufeff%YAML:1.0\r\n# written by hand\r\ncameraMatrix: !!opencv-matrix  # K\r\n'
            '   rows: 3\r\n   cols: 3\r\n   dt: d\r\n'
            '   data:\r\n      [ 1000., 0., 960.,   # fx, skew, cx\r\n'
            '           0., 1001., 540.,\r\n           0., 0., 1., ]\r\n'
            '"distortionCoefficients": !!opencv-matrix\r\n   rows: 5\r\n   cols: 1\r\n'
            '   dt: f\r\n   data:\r\n   - 0.1\r\n   - -0.2\r\n   - 1e-3\r\n   - -1E-3\r\n'
            '   - .5\r\n' "name: 'a # not a comment'\r\n...\r\nignored: [\r\n")
    path = tmp_path / 'calib_color.yaml'
    path.write_bytes(text.encode('utf-8'))
    folder = _copy_rgbd(tmp_path)
    shutil.copy(str(path), str(folder / 'calib_color.yaml'))
    color = Calibration.from_iai_kinect2(folder).color
    assert color.K.tolist() == [[1000.0, 0.0, 960.0], [0.0, 1001.0, 540.0], [0.0, 0.0, 1.0]]
    assert color.D.tolist() == [0.1, -0.2, 1e-3, -1e-3, 0.5]


# --- hostile iai_kinect2 files --------------------------------------------------------

def _matrix(rows, cols, data, dt='d'):
    return ('!!opencv-matrix\n   rows: {0}\n   cols: {1}\n   dt: {2}\n   data: [ {3} ]\n'
            .format(rows, cols, dt, ', '.join(str(v) for v in data)))


def _camera_file(k, d=(0.1, -0.2, 0.0, 0.0, 0.05)):
    return '%YAML:1.0\n---\ncameraMatrix: {0}distortionCoefficients: {1}'.format(
        _matrix(3, 3, k), _matrix(1, len(d), d))


def _pose_file(rotation, translation, shape=(3, 3)):
    return '%YAML:1.0\n---\nrotation: {0}translation: {1}'.format(
        _matrix(shape[0], shape[1], rotation), _matrix(3, 1, translation))


_K = [1067.0, 0, 983.0, 0, 1069.0, 531.0, 0, 0, 1]
_R = [1.0, 0, 0, 0, 1, 0, 0, 0, 1]
_T = [-0.052, 0.0037, -0.028]

HOSTILE = [
    # (file, content, words the message must hold besides the file's path)
    ('calib_color.yaml', None, ['no such file']),
    ('calib_ir.yaml', None, ['no such file']),
    ('calib_pose.yaml', None, ['no such file']),
    ('calib_color.yaml', b'', ['empty']),
    ('calib_ir.yaml', b'   \n\n  \n', ['empty']),
    ('calib_pose.yaml', bytes(range(256)) * 4, ['not UTF-8']),
    ('calib_pose.yaml', b'rotation: [1, 2\x00]', ['NUL']),
    ('calib_pose.yaml', b'hello world\n', ['key: value']),
    ('calib_pose.yaml', b'{"rotation": 5', ['flow mappings']),
    ('calib_pose.yaml', b'[rotation]: 5', ['not a plain key']),
    ('calib_pose.yaml', b'- 1\n- 2\n', ['sequence']),
    ('calib_pose.yaml', b'rotation: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n', ['nested']),
    ('calib_pose.yaml', b'rotation: {rows: 3}\n', ['flow mappings']),
    ('calib_pose.yaml', b'rotation: &a [1]\ntranslation: *a\n', ['anchors']),
    ('calib_pose.yaml', b'rotation: !!python/object:os.system [1]\n', ['tag']),
    ('calib_pose.yaml', b'rotation:\n\t rows: 3\n', ['tab']),
    ('calib_pose.yaml', b'rotation: 1\nrotation: 2\n', ['second time']),
    ('calib_pose.yaml', b'%YAML:1.0\n---\nrotation: [1, 2,\n', ['without its']),
    ('calib_pose.yaml', b'%YAML:1.0\n---\na: 1\n---\nb: 2\n', ['second document']),
    ('calib_pose.yaml', _pose_file([1, 0, 0, 0, 1, 0], _T, (2, 3)).encode(),
     ['rotation: expected a 3 x 3 matrix, got 2 x 3']),
    ('calib_pose.yaml', _pose_file(_R[:8], _T).encode(), ['rotation: data', '8 numbers']),
    ('calib_pose.yaml', _pose_file(_R, _T[:2] + ['1e400']).encode(),
     ['translation: data[2]', 'not a finite number']),
    ('calib_pose.yaml', _pose_file(_R, _T).replace('rows: 3', 'rows: 100000000000000', 1)
     .encode(), ['rotation: rows', 'whole number']),
    ('calib_pose.yaml', _pose_file(_R, [-52.5, 3.7, -28.1]).encode(),
     ['translation', 'metres expected']),
    ('calib_pose.yaml', _pose_file([1, 0.2, 0, 0, 1, 0, 0, 0, 1], _T).encode(),
     ['rotation', 'not a rotation']),
    ('calib_pose.yaml', _pose_file([1, 0, 0, 0, 1, 0, 0, 0, -1], _T).encode(),
     ['rotation', 'reflection']),
    ('calib_pose.yaml', _pose_file(_R, _T).replace('translation', 'translate').encode(),
     ['translation: missing']),
    ('calib_pose.yaml', _pose_file(_R, _T).replace('dt: d', 'dt: 3d', 1).encode(),
     ['rotation: dt']),
    ('calib_pose.yaml', ('rotation: ' + _matrix(1, 100000, [0] * 100000)).encode(),
     ['more than 1024 items']),
    ('calib_color.yaml', _camera_file(['.nan'] + _K[1:]).encode(),
     ['cameraMatrix: data[0]', 'not a finite number']),
    ('calib_color.yaml', _camera_file(['.inf'] + _K[1:]).encode(),
     ['cameraMatrix: data[0]', 'not a finite number']),
    ('calib_color.yaml', _camera_file(['1' * 500] + _K[1:]).encode(),
     ['cameraMatrix: data[0]', 'not a finite number']),
    ('calib_color.yaml', _camera_file([1e300] + _K[1:]).encode(),
     ['cameraMatrix: fx', 'not a focal length']),
    ('calib_color.yaml', _camera_file([0.0] + _K[1:]).encode(),
     ['cameraMatrix: fx', 'not a focal length']),
    ('calib_ir.yaml', _camera_file(_K[:4] + [-383.0] + _K[5:]).encode(),
     ['cameraMatrix: fy', 'not a focal length']),
    ('calib_ir.yaml', _camera_file([378.0, 0, 5000.0, 0, 383.0, 190.0, 0, 0, 1]).encode(),
     ['cameraMatrix: cx', 'principal point']),
    ('calib_color.yaml', _camera_file(_K[:8] + [2.0]).encode(), ['cameraMatrix', '[0, 0, 1]']),
    ('calib_color.yaml', _camera_file(_K[:1] + [3.0] + _K[2:]).encode(),
     ['cameraMatrix', 'skew']),
    ('calib_color.yaml', _camera_file(['"1067.0"'] + _K[1:]).encode(),
     ['cameraMatrix: data[0]', 'expected a number, got the string']),
    ('calib_color.yaml', _camera_file(['abc'] + _K[1:]).encode(),
     ['cameraMatrix: data[0]', 'expected a number']),
    ('calib_color.yaml', _camera_file(_K, d=(0.1, -0.2, 0.0)).encode(),
     ['distortionCoefficients', 'expected 0 or 4 or 5 or 8 or 12 or 14 numbers, got 3']),
    ('calib_color.yaml', _camera_file(_K, d=(0.1, -0.2, 0, 0, 0.05, 0.3, 0, 0)).encode(),
     ['distortionCoefficients', 'plumb_bob']),
    ('calib_color.yaml', _camera_file(_K, d=(0.1, -0.2, 0, 0, 1e9)).encode(),
     ['distortionCoefficients: k3', 'not a distortion coefficient']),
    ('calib_color.yaml', b'%YAML:1.0\ncameraMatrix: 5\n', ['cameraMatrix', 'expected a matrix']),
    ('calib_depth.yaml', b'%YAML:1.0\ndepthShift: abc\n', ['depthShift', 'expected a number']),
    ('calib_depth.yaml', b'%YAML:1.0\ndepthShift: .nan\n', ['depthShift', 'not a finite']),
    ('calib_depth.yaml', b'%YAML:1.0\ndepthShift: 1e6\n', ['depthShift', 'not a depth shift']),
    ('calib_depth.yaml', b'%YAML:1.0\ndepth_shift: 25\n', ['depthShift: missing']),
    ('calib_depth.yaml', b'%YAML:1.0\ndepthShift: [25]\n', ['depthShift', 'expected a number']),
    ('calib_depth.yaml', b'%YAML:2.0\ndepthShift: 25\n', ['directive']),
]


@pytest.mark.parametrize('name,content,words', HOSTILE)
def test_a_bad_file_gives_one_error_naming_the_file_and_the_field(tmp_path, capfd, name,
                                                                  content, words):
    folder = _copy_rgbd(tmp_path)
    path = folder / name
    path.unlink()
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CalibrationError) as raised:
        Calibration.from_iai_kinect2(folder)
    message = str(raised.value)
    assert message.startswith(str(path) + ': '), message
    for word in words:
        assert word in message, message
    assert len(message) < 2000 and '\n' not in message
    assert capfd.readouterr() == ('', '')  # nothing printed (as OpenCV's reader would)


def test_a_missing_folder_or_a_file_that_is_not_a_file(tmp_path):
    with pytest.raises(CalibrationError, match='not a folder'):
        Calibration.from_iai_kinect2(tmp_path / 'nowhere')
    folder = _copy_rgbd(tmp_path)
    (folder / 'calib_ir.yaml').unlink()
    (folder / 'calib_ir.yaml').mkdir()
    with pytest.raises(CalibrationError, match='calib_ir.yaml: (not a regular file|cannot)'):
        Calibration.from_iai_kinect2(folder)


def test_a_fifo_in_place_of_a_file_is_refused_without_waiting(tmp_path):
    folder = _copy_rgbd(tmp_path)
    path = folder / 'calib_pose.yaml'
    path.unlink()
    os.mkfifo(str(path))
    outcome = []

    def read():
        try:
            Calibration.from_iai_kinect2(folder)
        except CalibrationError as err:
            outcome.append(str(err))

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # blocked in open(): a writer lets it go, then fail
        with open(str(path), 'wb'):
            pass
        thread.join(20)
        pytest.fail('reading a FIFO blocked')
    assert outcome and 'not a regular file' in outcome[0], outcome


def test_a_1_gib_file_is_refused_without_reading_it(tmp_path):
    psutil = pytest.importorskip('psutil')
    folder = _copy_rgbd(tmp_path)
    path = folder / 'calib_color.yaml'
    with open(str(path), 'r+b') as stream:
        stream.truncate(1 << 30)  # sparse: no disk, a real calibration file in front
    process = psutil.Process()
    before = process.memory_info().rss
    with pytest.raises(CalibrationError, match=r'calib_color.yaml: 1073741824 bytes, more '
                                               r'than the 1048576'):
        Calibration.from_iai_kinect2(folder)
    assert process.memory_info().rss - before < 32 << 20
    # Just over the limit is refused, just under it read (and found not to be YAML).
    path.write_bytes(b'#' * (MAX_FILE_BYTES + 1))
    with pytest.raises(CalibrationError, match='more than'):
        Calibration.from_iai_kinect2(folder)
    path.write_bytes(b'#' * MAX_FILE_BYTES)
    with pytest.raises(CalibrationError, match='calib_color.yaml: not the YAML'):
        Calibration.from_iai_kinect2(folder)


def _read_bytes(path):
    if not os.path.exists(path):
        return b''
    with open(path, 'rb') as stream:
        return stream.read()


_LINES = _read_bytes(os.path.join(RGBD, 'calib_pose.yaml'))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode('utf-8', 'replace')),
    st.tuples(st.integers(0, len(_LINES)), st.integers(0, 40), st.binary(max_size=8)).map(
        lambda c: _LINES[:c[0]] + c[2] + _LINES[c[0] + c[1]:])))
def test_any_file_content_reads_or_gives_a_calibration_error(tmp_path, content):
    path = tmp_path / 'calib_pose.yaml'
    folder = tmp_path / 'fuzz'
    if not folder.exists():
        folder = _copy_rgbd(tmp_path, 'fuzz')
    (folder / 'calib_pose.yaml').write_bytes(content)
    try:
        calibration = Calibration.from_iai_kinect2(folder)
    except CalibrationError as err:
        assert str(err).startswith(str(folder / 'calib_pose.yaml') + ': ')
    else:
        assert calibration.rotation.shape == (3, 3) and np.all(np.isfinite(
            calibration.translation))
    del path


# --- camera_info_manager YAML -----------------------------------------------------------

CAMERA_INFO = """\
image_width: 512
image_height: 424
camera_name: kinect2_ir
camera_matrix:
  rows: 3
  cols: 3
  data: [366.1, 0.     , 258.3,
         0.     , 366.2, 204.9,
         0.     ,    0.     ,    1.     ]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.09, -0.27, 0.001, -0.0007, 0.1]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [360.0, 0, 258.0, 0, 0, 361.0, 205.0, 0, 0, 0, 1, 0]
"""
CAMERA_INFO_MODEL = CameraModel.from_values(512, 424, 366.1, 366.2, 258.3, 204.9,
                                            [0.09, -0.27, 0.001, -0.0007, 0.1])


def test_camera_info_yaml_by_path_and_file_url(tmp_path):
    folder = tmp_path / 'with space'
    folder.mkdir()
    path = folder / 'ir.yaml'
    path.write_text(CAMERA_INFO)
    assert read_camera_info_yaml(str(path)) == CAMERA_INFO_MODEL
    assert read_camera_info_yaml(path) == CAMERA_INFO_MODEL
    assert read_camera_info_yaml(path.as_uri()) == CAMERA_INFO_MODEL  # %20 in it
    assert '%20' in path.as_uri()
    assert read_camera_info_yaml('file://localhost' + str(path)) == CAMERA_INFO_MODEL
    assert read_camera_info_yaml(path, size=(512, 424)) == CAMERA_INFO_MODEL
    with pytest.raises(CalibrationError, match='image_width, image_height: the file is for '
                                               'a 512x424 image, these images are 640x480'):
        read_camera_info_yaml(path, size=(640, 480))
    for url, words in (('package://kinect2/ir.yaml', 'resolved by the ROS node'),
                       ('http://example.org/ir.yaml', 'only a path or a file://'),
                       ('file://otherhost/ir.yaml', 'another host'),
                       ('file://', 'no path'), ('', 'empty path')):
        with pytest.raises(CalibrationError, match=words):
            read_camera_info_yaml(url)


def test_camera_info_yaml_as_pyyaml_writes_it(tmp_path):
    yaml = pytest.importorskip('yaml')
    document = {
        'image_width': 512, 'image_height': 424, 'camera_name': 'ir: "quoted" #1',
        'camera_matrix': {'rows': 3, 'cols': 3, 'data': CAMERA_INFO_MODEL.K.reshape(-1).tolist()},
        'distortion_model': 'plumb_bob',
        'distortion_coefficients': {'rows': 1, 'cols': 5, 'data': CAMERA_INFO_MODEL.D.tolist()},
        'rectification_matrix': {'rows': 3, 'cols': 3, 'data': np.eye(3).reshape(-1).tolist()},
        'projection_matrix': {'rows': 3, 'cols': 4, 'data': [0.0] * 12}}
    for style in (None, False, True):
        path = tmp_path / 'ir_{0}.yaml'.format(style)
        path.write_text(yaml.safe_dump(document, default_flow_style=style))
        if style:  # one flow mapping: not what camera_calibration writes; refused clearly
            with pytest.raises(CalibrationError, match='flow mappings'):
                read_camera_info_yaml(path)
        else:
            assert read_camera_info_yaml(path) == CAMERA_INFO_MODEL, path.read_text()


@pytest.mark.parametrize('old,new,words', [
    ('distortion_model: plumb_bob', 'distortion_model: rational_polynomial',
     ['distortion_model', 'only plumb_bob']),
    ('distortion_model: plumb_bob', 'distortion_model: equidistant', ['only plumb_bob']),
    ('  cols: 5\n  data: [0.09, -0.27, 0.001, -0.0007, 0.1]',
     '  cols: 8\n  data: [0.09, -0.27, 0.001, -0.0007, 0.1, 0.2, 0, 0]',
     ['distortion_coefficients', 'only plumb_bob']),
    ('image_width: 512', 'image_width: wide', ['image_width', 'whole number']),
    ('image_width: 512', 'image_width: 99999999999', ['image_width', 'whole number']),
    ('image_height: 424\n', '', ['image_height: missing']),
    ('camera_matrix:', 'camera_matrics:', ['camera_matrix: missing']),
    ('366.1', '.nan', ['camera_matrix: data[0]', 'not a finite number']),
    ('366.1', '-366.1', ['camera_matrix: fx', 'not a focal length']),
    ('258.3', '1e9', ['camera_matrix: cx', 'principal point']),
    ('[0.09, -0.27,', '["0.09", -0.27,', ['distortion_coefficients: data[0]', 'string']),
    ('  rows: 3\n  cols: 4', '  rows: 4\n  cols: 3',
     ['projection_matrix', 'expected a 3 x 4 matrix, got 4 x 3']),
    ('[1, 0, 0, 0, 1, 0, 0, 0, 1]', '[1, 0, 0, 0, 1, 0, 0, 0]',
     ['rectification_matrix', '8 numbers']),
])
def test_a_bad_camera_info_yaml_names_the_file_and_the_field(tmp_path, old, new, words):
    assert old in CAMERA_INFO
    path = tmp_path / 'ir.yaml'
    path.write_text(CAMERA_INFO.replace(old, new, 1))
    with pytest.raises(CalibrationError) as raised:
        read_camera_info_yaml(path)
    message = str(raised.value)
    assert message.startswith(str(path) + ': '), message
    for word in words:
        assert word in message, message


def test_camera_info_yaml_defaults_as_camera_calibration_parsers(tmp_path):
    # No distortion_model (older files): plumb_bob. No distortion coefficients, or an
    # empty list of them: none. No R, no P: fine.
    text = CAMERA_INFO.split('distortion_model')[0]
    path = tmp_path / 'ir.yaml'
    path.write_text(text)
    assert read_camera_info_yaml(path) == CAMERA_INFO_MODEL.rectified()
    path.write_text(text + 'distortion_coefficients:\n  rows: 1\n  cols: 0\n  data: []\n')
    assert read_camera_info_yaml(path) == CAMERA_INFO_MODEL.rectified()


def test_with_depth_camera_replaces_the_ir_camera_and_drops_libfreenect2s_model(tmp_path):
    path = tmp_path / 'ir.yaml'
    path.write_text(CAMERA_INFO)
    factory = Calibration.from_device_record({'depth_camera': FACTORY_DEPTH,
                                              'color_camera': FACTORY_COLOR})
    assert factory.factory is not None
    calibration = factory.with_depth_camera(read_camera_info_yaml(path, size=(512, 424)))
    assert calibration.depth == CAMERA_INFO_MODEL
    assert calibration.factory is None and calibration.factory_depth is None
    assert calibration.factory_model() is None
    assert calibration.color == factory.color
    assert np.array_equal(calibration.rotation, factory.rotation)
    assert calibration.source == 'factory+camera_info'
    with pytest.raises(CalibrationError, match='a 960x540 camera, the depth images are '
                                               '512x424'):
        calibration.with_depth_camera(factory.color.scaled(960, 540))


# --- camera models ----------------------------------------------------------------------

def test_camera_info_fields_raw_rectified_and_scaled_to_qhd():
    color = Calibration.default().color
    raw = color.camera_info_fields()
    k = color.K.reshape(-1).tolist()
    assert raw == {'width': 1920, 'height': 1080, 'distortion_model': 'plumb_bob',
                   'd': color.D.tolist(), 'k': k, 'r': np.eye(3).reshape(-1).tolist(),
                   'p': k[0:3] + [0.0] + k[3:6] + [0.0] + k[6:9] + [0.0]}
    assert raw['d'] != [0.0] * 5
    rect = color.rectified().camera_info_fields()
    assert rect == dict(raw, d=[0.0] * 5)
    assert color.rectified().is_rectified and not color.is_rectified
    assert color.rectified().rectified() == color.rectified()
    qhd = color.scaled(960, 540)
    fields = qhd.camera_info_fields()
    assert (fields['width'], fields['height']) == (960, 540)
    assert fields['k'] == [color.fx / 2, 0.0, color.cx / 2, 0.0, color.fy / 2, color.cy / 2,
                           0.0, 0.0, 1.0]  # kinect2_bridge's cameraMatrixLowRes
    assert fields['p'] == [color.fx / 2, 0.0, color.cx / 2, 0.0, 0.0, color.fy / 2,
                           color.cy / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert fields['d'] == raw['d']
    assert qhd.rectified().camera_info_fields()['d'] == [0.0] * 5
    for values in (raw, rect, fields):
        assert all(type(v) is float for key in 'dkrp' for v in values[key])
    # The same numbers as the ROS layer's CameraInfo of a device record.
    conversions = pytest.importorskip('streamkinect2_ros.conversions')
    record = MOCK_CALIBRATION['color_camera']
    assert CameraModel.from_intrinsics(record).camera_info_fields() == \
        conversions.camera_info_fields(1920, 1080, record, record)
    assert CameraModel.from_intrinsics(record, 960, 540).camera_info_fields() == \
        conversions.camera_info_fields(960, 540, record, record) == fields


def test_camera_models_are_checked_and_immutable():
    k = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    d = np.array([0.1, 0.0, 0.0, 0.0, 0.0])
    model = CameraModel(640, 480, k, d)
    k[0, 0] = 1.0  # the model has its own copy
    assert model.fx == 500.0 and model.size == (640, 480)
    with pytest.raises(ValueError):
        model.K[0, 0] = 2.0
    with pytest.raises(AttributeError):
        model.width = 5
    for args, words in (
            ((0, 480, k, d), 'width'), ((640, 10 ** 9, k, d), 'height'),
            ((640.5, 480, k, d), 'width'), ((True, 480, k, d), 'width'),
            ((640, 480, np.eye(3), d), 'K: fx'), ((640, 480, k[:2], d), 'K: expected'),
            ((640, 480, [[500, 0, 320], [0, 500, 240], [0, 0, 'x']], d), 'K: not every'),
            ((640, 480, np.diag([500.0, 500.0, math.nan]), d), 'K: not every'),
            ((640, 480, [[500, 0, 320], [0, 500, 240], [0, 0, 1]], d[:4]), 'D: expected 5'),
            ((640, 480, [[500, 0, 320], [0, 500, 240], [0, 0, 1]], [math.inf] * 5), 'D: k1')):
        with pytest.raises(CalibrationError, match=words):
            CameraModel(*args)
    with pytest.raises(CalibrationError, match='fx: missing'):
        CameraModel.from_intrinsics({'width': 512, 'height': 424, 'fy': 1.0})
    with pytest.raises(CalibrationError, match='width: missing'):
        CameraModel.from_intrinsics({'fx': 365.0, 'fy': 365.0, 'cx': 256.0, 'cy': 212.0})
    assert CameraModel.from_intrinsics({'fx': 365.0, 'fy': 365.0, 'cx': 256.0, 'cy': 212.0},
                                       512, 424).is_rectified


def test_intrinsics_problems_live_here_for_every_layer():
    record = dict(MOCK_CALIBRATION['depth_camera'], fx=float('nan'), cy='190')
    problems = intrinsics_problems(record, 512, 424)
    assert [p.split(':')[0] for p in problems] == ['fx', 'cy']
    assert intrinsics_problems(MOCK_CALIBRATION['depth_camera'], 512, 424) == []
    assert intrinsics_problems(None, 512, 424) == []


# --- the device record ------------------------------------------------------------------

def _mock_record():
    """Return the mock's device record as a client gets it: from a real server's ``me``."""
    with Server(address='127.0.0.1', announce=False) as server:
        server.add_kinect(MockKinect())
        payload = server.me_payload()
    (record,) = json.loads(json.dumps(payload))['devices']
    return record


def test_the_mocks_record_is_the_default_calibration_as_sent():
    record = _mock_record()
    calibration = Calibration.from_device_record(record)
    default = Calibration.default()
    assert calibration.warnings == ()
    assert calibration.source == 'device' and calibration.factory is None
    assert calibration.depth == default.depth and calibration.color == default.color
    assert np.array_equal(calibration.rotation, default.rotation)
    assert np.array_equal(calibration.translation, default.translation)
    assert calibration.depth_shift_mm == default.depth_shift_mm > 0  # the mock sends it
    record['depth_shift_mm'] = MOCK_CALIBRATION['depth_shift_mm']
    assert Calibration.from_device_record(record).depth_shift_mm == \
        MOCK_CALIBRATION['depth_shift_mm']
    # A depth-only record of 2014: the defaults, silently.
    legacy = Calibration.from_device_record({'id': 'old', 'endpoints': {'depth': 'tcp://x'}})
    assert legacy.warnings == () and legacy.depth == default.depth


def _broken(record, key, **changes):
    record = json.loads(json.dumps(record))
    record[key] = dict(record[key], **changes) if isinstance(record[key], dict) else changes
    return record


@pytest.mark.parametrize('key,changes,words,broken', [
    ('depth_camera', {'fx': float('nan')}, ['depth_camera: fx'], 'depth'),
    ('depth_camera', {'cy': '190'}, ['depth_camera: cy'], 'depth'),
    ('depth_camera', {'k1': 1e300}, ['depth_camera: k1'], 'depth'),
    ('depth_camera', {'width': -1}, ['depth_camera: width'], 'depth'),
    ('depth_camera', {'fx': 10 ** 400}, ['depth_camera: fx'], 'depth'),
    ('color_camera', {'fx': True}, ['color_camera: fx'], 'color'),
    ('color_camera', {'cx': [1.0]}, ['color_camera: cx'], 'color'),
    ('color_camera', {'fy': 1e-300}, ['color_camera: fy', 'focal length'], 'color'),
    ('ir_to_color', {'rotation': [1.0] * 8}, ['ir_to_color: rotation', 'list of 9'], 'pose'),
    ('ir_to_color', {'rotation': [2.0, 0, 0, 0, 1, 0, 0, 0, 1]},
     ['ir_to_color: rotation', 'not a rotation'], 'pose'),
    ('ir_to_color', {'translation': [1e300, 0, 0]}, ['ir_to_color: translation'], 'pose'),
    ('ir_to_color', {'translation': ['a', 0, 0]}, ['ir_to_color: translation'], 'pose'),
    ('ir_to_color', {'translation': None}, ['ir_to_color: translation'], 'pose'),
])
def test_a_broken_part_of_a_device_record_gives_way_to_the_default(key, changes, words,
                                                                   broken):
    good = _mock_record()
    mixed = dict(good, depth_camera=dict(good['depth_camera'], fx=370.0),
                 color_camera=dict(good['color_camera'], fx=1070.0),
                 ir_to_color=dict(good['ir_to_color'], translation=[-0.05, 0.0, 0.0]))
    given = Calibration.from_device_record(mixed)
    assert given.warnings == ()
    default = Calibration.default()
    calibration = Calibration.from_device_record(_broken(mixed, key, **changes))
    (warning,) = calibration.warnings
    for word in words:
        assert word in warning, warning
    assert 'default' in warning
    expected = {'depth': given.depth, 'color': given.color, 'pose': given.translation}
    expected[broken] = {'depth': default.depth, 'color': default.color,
                        'pose': default.translation}[broken]
    assert calibration.depth == expected['depth']
    assert calibration.color == expected['color']
    assert np.array_equal(calibration.translation, expected['pose'])


def test_records_that_are_not_objects_and_a_bad_depth_shift(caplog):
    with caplog.at_level('WARNING', logger='streamkinect2.calibration'):
        calibration = Calibration.from_device_record({'depth_camera': {'fx': 'x'}})
    (warning,) = calibration.warnings
    assert [r.getMessage() for r in caplog.records] == ['device calibration: ' + warning]
    for record in (None, [], 'abc', 17, [{'depth_camera': {}}]):
        calibration = Calibration.from_device_record(record)
        assert 'not a JSON object' in calibration.warnings[0]
        assert calibration.depth == Calibration.default().depth
    for shift in (float('nan'), 'x', 1e9, None, [25]):
        calibration = Calibration.from_device_record({'depth_shift_mm': shift})
        assert calibration.depth_shift_mm == 0.0
        assert any('depth_shift_mm' in w for w in calibration.warnings)
    calibration = Calibration.from_device_record({'color_camera': MOCK_CALIBRATION[
        'color_camera']})
    assert calibration.warnings == ('ir_to_color: missing: using the default pose between '
                                    'the cameras',)


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4)
    | st.integers(10 ** 300, 10 ** 400),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=4), max_leaves=12)
_NUMBERS = st.one_of(st.floats(), st.floats(-2000, 2000), st.integers(-3000, 3000))


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    'depth_camera': st.one_of(_JSON, st.fixed_dictionaries(
        {k: _NUMBERS for k in ('fx', 'fy', 'cx', 'cy')}, optional={
            k: _NUMBERS for k in ('width', 'height') + INTRINSIC_KEYS[4:]})),
    'color_camera': st.one_of(_JSON, st.fixed_dictionaries(
        {k: _NUMBERS for k in FACTORY_COLOR}), st.just(FACTORY_COLOR)),
    'ir_to_color': st.one_of(_JSON, st.fixed_dictionaries(
        {'rotation': st.lists(_NUMBERS, min_size=9, max_size=9),
         'translation': st.lists(_NUMBERS, min_size=3, max_size=3)})),
    'depth_shift_mm': _JSON}))
def test_any_device_record_gives_a_usable_calibration(record):
    calibration = Calibration.from_device_record(record)
    assert isinstance(calibration, Calibration)
    assert all(isinstance(w, str) for w in calibration.warnings)
    assert calibration.depth.size == (512, 424) and calibration.color.size == (1920, 1080)
    for array in (calibration.depth.K, calibration.color.K, calibration.rotation,
                  calibration.translation):
        assert np.all(np.isfinite(array))
    xyz, quaternion = calibration.ir_in_color()
    assert abs(np.linalg.norm(quaternion) - 1.0) < 1e-12


# --- libfreenect2's factory values ------------------------------------------------------

def test_a_record_with_libfreenect2s_terms_selects_its_model():
    factory_model = pytest.importorskip('streamkinect2.factory_model')
    # As the freenect2 backend sends them: intrinsics of the un-mirrored frames (cx and p2
    # taken over from libfreenect2's), mapping terms libfreenect2's own.
    record = {'depth_camera': factory_model.mirror_intrinsics(FACTORY_DEPTH, 512),
              'color_camera': factory_model.mirror_intrinsics(FACTORY_COLOR, 1920),
              'ir_to_color': MOCK_CALIBRATION['ir_to_color']}
    calibration = Calibration.from_device_record(record)
    assert calibration.warnings == ()
    assert calibration.source == 'factory'
    assert calibration.factory == {key: FACTORY_COLOR[key] for key in calibration.factory}
    assert set(calibration.factory) == {'fx', 'fy', 'cx', 'cy', 'shift_d', 'shift_m'} | {
        key for key in FACTORY_COLOR if key.startswith(('mx_', 'my_'))}
    assert calibration.factory_depth == {key: FACTORY_DEPTH[key] for key in INTRINSIC_KEYS}
    model = calibration.factory_model()
    assert isinstance(model, factory_model.Freenect2Model)
    assert calibration.factory_model() is model  # built once
    # The depth camera is the frames' (the record's: cx about the centre line, p2
    # negated); the colour camera and pose the pinhole pair fitted to libfreenect2's model.
    assert calibration.depth.cx == pytest.approx(511 - FACTORY_DEPTH['cx'])
    assert calibration.depth.D[3] == pytest.approx(-FACTORY_DEPTH['p2'])
    assert calibration.depth.D[2] == pytest.approx(FACTORY_DEPTH['p1'])
    sent = CameraModel.from_intrinsics(record['depth_camera'])
    assert np.allclose(calibration.depth.K, sent.K, rtol=0, atol=1e-9)
    assert np.allclose(calibration.depth.D, sent.D, rtol=0, atol=1e-12)
    assert calibration.color == CameraModel.from_intrinsics(model.equivalent_color_camera())
    rotation, translation = model.equivalent_pose()
    assert np.array_equal(calibration.rotation, rotation)
    assert np.array_equal(calibration.translation, translation)
    assert not np.allclose(translation, MOCK_CALIBRATION['ir_to_color']['translation'])
    # Broken or partial terms: not libfreenect2's model, and ir_to_color is used.
    for changes, words in (({'shift_m': float('nan')}, 'shift_m'),
                           ({'shift_d': 0.0}, 'shift_d'),
                           ({'mx_x3y0': 'x'}, 'mx_x3y0'),
                           ({'width': 960}, 'width')):
        broken = dict(record, color_camera=dict(record['color_camera'], **changes))
        calibration = Calibration.from_device_record(broken)
        assert calibration.factory is None and calibration.source == 'device'
        (warning,) = [w for w in calibration.warnings if 'libfreenect2' in w]
        assert words in warning, warning
        assert np.array_equal(calibration.translation,
                              MOCK_CALIBRATION['ir_to_color']['translation'])
    partial = dict(FACTORY_COLOR)
    del partial['my_x0y0']
    calibration = Calibration.from_device_record(dict(record, color_camera=partial))
    assert calibration.factory is None
    assert any('missing my_x0y0' in w for w in calibration.warnings)
    # Terms without the sensor's own depth camera are not used either.
    calibration = Calibration.from_device_record({'color_camera': FACTORY_COLOR})
    assert calibration.factory is None
    assert any("need the sensor's own depth_camera" in w or "sensor's own depth_camera" in w
               for w in calibration.warnings)


def test_factory_and_factory_depth_go_together():
    default = Calibration.default()
    with pytest.raises(CalibrationError, match='give both or neither'):
        Calibration(default.depth, default.color, default.rotation, default.translation,
                    factory={key: FACTORY_COLOR[key] for key in FACTORY_COLOR})
    with pytest.raises(CalibrationError, match='factory: shift_m'):
        Calibration(default.depth, default.color, default.rotation, default.translation,
                    factory=dict(FACTORY_COLOR, shift_m=math.inf), factory_depth=FACTORY_DEPTH)


# --- TF ---------------------------------------------------------------------------------

def _tf_apply(pose, point):
    """Map *point* from a TF child frame to its parent: what tf2 does with the pose."""
    (x, y, z), (qx, qy, qz, qw) = pose
    u, v = np.array([qx, qy, qz]), np.asarray(point, dtype=np.float64)
    return v + 2.0 * qw * np.cross(u, v) + 2.0 * np.cross(u, np.cross(u, v)) + [x, y, z]


def test_ir_in_color_maps_an_ir_point_to_where_the_colour_camera_sees_it():
    calibration = Calibration.default()
    assert calibration.color_in_link() == ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    pose = calibration.ir_in_color()
    point_ir = np.array([0.3, -0.2, 1.5])
    expected = calibration.rotation @ point_ir + calibration.translation  # calib_pose
    assert np.allclose(_tf_apply(pose, point_ir), expected, atol=1e-12)
    assert np.allclose(pose[0], calibration.translation)
    # The other direction would be wrong by the 5 cm between the cameras.
    inverse = calibration.rotation.T @ (point_ir - calibration.translation)
    assert np.linalg.norm(_tf_apply(pose, point_ir) - inverse) > 0.05


def test_ir_in_color_registers_the_real_chessboard_corners():
    """IR corners, lifted with their depth and moved by the TF pose, land on the colour ones."""
    captures = np.load(os.path.join(RGBD, 'kinect2_sync_rgbd.npz'))
    calibration = Calibration.from_iai_kinect2(RGBD)
    pose = calibration.ir_in_color()
    medians, wrong_way = [], []
    for n in range(len(captures['depth'])):
        ir = captures['ir_points'][n].astype(np.float64)
        rows, cols = np.round(ir[:, 1]).astype(int), np.round(ir[:, 0]).astype(int)
        depth = captures['depth'][n][rows, cols].astype(np.float64)
        assert np.all(depth > 0)
        z = (depth + calibration.depth_shift_mm) / 1000.0
        rays = cv2.undistortPoints(ir.reshape(-1, 1, 2), calibration.depth.K,
                                   calibration.depth.D).reshape(-1, 2)
        points_ir = np.column_stack([rays * z[:, None], z])
        for points, out in (([_tf_apply(pose, p) for p in points_ir], medians),
                            ((points_ir - calibration.translation) @ calibration.rotation,
                             wrong_way)):
            pixels, _ = cv2.projectPoints(np.asarray(points), np.zeros(3), np.zeros(3),
                                          calibration.color.K, calibration.color.D)
            errors = np.linalg.norm(pixels.reshape(-1, 2) - captures['color_points'][n],
                                    axis=1)
            out.append(float(np.median(errors)))
    # MANIFEST.md: 0.7 to 2.5 px per capture, about 1.1 px median of medians.
    assert max(medians) <= 2.6 and np.median(medians) <= 1.5, medians
    assert min(wrong_way) > 50, wrong_way


@pytest.mark.parametrize('seed', range(20))
def test_quaternion_from_rotation_is_the_rotation(seed):
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=3)
    angle = [0.0, 1e-9, math.pi, math.pi - 1e-9, rng.uniform(0, math.pi)][seed % 5]
    rotation = cv2.Rodrigues(vector / np.linalg.norm(vector) * angle)[0]
    quaternion = quaternion_from_rotation(rotation)
    assert abs(np.linalg.norm(quaternion) - 1.0) < 1e-12 and quaternion[3] >= 0
    for point in rng.normal(size=(4, 3)):
        assert np.allclose(_tf_apply(((0, 0, 0), quaternion), point), rotation @ point,
                           atol=1e-12)
    # Rounded to 6 digits (as a hand-written file has it): still a unit quaternion.
    rounded = quaternion_from_rotation(np.round(rotation, 6))
    assert abs(np.linalg.norm(rounded) - 1.0) < 1e-12
    assert np.allclose(rounded, quaternion, atol=1e-5) or np.allclose(rounded, -np.array(
        quaternion), atol=1e-5)
