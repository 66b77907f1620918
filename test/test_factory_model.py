"""Freenect2Model against the REAL libfreenect2, on real frames.

The reference is libfreenect2's own ``Registration`` (the wheel in ../shared/freenect2-wheel,
installed in the virtualenv by ``./dev.sh``): built from real sensors' factory values, fed
the real depth frames of ``shared/data/rgbd`` (mirrored back into libfreenect2's
orientation) and their colour images. It runs in a child interpreter (a crash there fails
one test, not the run), started with ``-O``: pylibfreenect2's ``Registration.apply``
asserts that its colour and depth frames were handed out by a listener, which no frame
made in Python is (``Frame(w, h, bpp)`` owns its buffer); Cython leaves its asserts out
under ``-O`` and libfreenect2 then works on those frames as on any other. Without the real
binding (another Python, another machine) or the data, those tests skip, saying why; the
model's own checks below them always run.

The colour images are greyscale; each pixel also carries its position (G, R and X bytes),
so a pixel taken from the wrong place can never pass by chance.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from streamkinect2.device import MOCK_CALIBRATION
from streamkinect2.factory_model import Freenect2Model

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STANDIN = os.path.join(HERE, 'standin')
RGBD = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'rgbd', 'kinect2_sync_rgbd.npz')

#: Factory values of real Kinect v2 sensors as libfreenect2 reads them
#: (``getIrCameraParams()``, ``getColorCameraParams()``), on its mirrored images.
FACTORY = {
    # hanseuljun/kinect-to-hololens, commit 23aee0159bcce028cbfa2a09b737d18878138460,
    # cpp/examples/kinect_sender_demo.cpp, get_substitute_kinect_intrinsics(): "A
    # KinectIntrinsics of a Kinect v2 device from our lab (VHIL)".
    'vhil': (
        {'fx': 368.147, 'fy': 368.147, 'cx': 264.317, 'cy': 208.964, 'k1': 0.0807732,
         'k2': -0.27181, 'k3': 0.103199, 'p1': 0.0, 'p2': 0.0},
        {'fx': 1081.37, 'fy': 1081.37, 'cx': 959.5, 'cy': 539.5, 'shift_d': 863.0,
         'shift_m': 52.0,
         'mx_x3y0': 0.000433573, 'mx_x0y3': 3.11985e-06, 'mx_x2y1': 4.89289e-05,
         'mx_x1y2': 0.000329721, 'mx_x2y0': 0.000753273, 'mx_x0y2': 3.57279e-05,
         'mx_x1y1': -0.000761282, 'mx_x1y0': 0.633183, 'mx_x0y1': 0.00562461,
         'mx_x0y0': 0.17028,
         'my_x3y0': 3.31803e-06, 'my_x0y3': 0.000587018, 'my_x2y1': 0.000425902,
         'my_x1y2': 1.76095e-05, 'my_x2y0': -0.0002469, 'my_x0y2': -0.000945311,
         'my_x1y1': 0.000648708, 'my_x1y0': -0.00578545, 'my_x0y1': 0.632964,
         'my_x0y0': -0.000370404}),
    # eruffaldi/kinect2reg, commit 1a01139dc3e7c37dc13ccd8079e2a977e481303b, params.h,
    # fillin(): one sensor's parameters "from text file" (p1, p2 as set there: 0).
    'kinect2reg': (
        {'fx': 365.150208, 'fy': 365.150208, 'cx': 253.9832, 'cy': 211.093994,
         'k1': 0.0922871977, 'k2': -0.266797304, 'k3': 0.0901915208, 'p1': 0.0, 'p2': 0.0},
        {'fx': 1081.37207, 'fy': 1081.37207, 'cx': 959.5, 'cy': 539.5, 'shift_d': 863.0,
         'shift_m': 52.0,
         'mx_x3y0': 0.000523260387, 'mx_x0y3': 2.66473307e-05, 'mx_x2y1': 7.26420622e-05,
         'mx_x1y2': 0.000386019994, 'mx_x2y0': -8.80247826e-05, 'mx_x0y2': -8.62425368e-05,
         'mx_x1y1': 0.000260630302, 'mx_x1y0': 0.640707493, 'mx_x0y1': 0.00462980801,
         'mx_x0y0': 0.152766302,
         'my_x3y0': 1.641368e-05, 'my_x0y3': 0.000705449376, 'my_x2y1': 0.000468305807,
         'my_x1y2': 3.74624688e-05, 'my_x2y0': -9.42075494e-05, 'my_x0y2': 0.000211564999,
         'my_x1y1': 6.66987689e-05, 'my_x1y0': -0.00469533494, 'my_x0y1': 0.640462875,
         'my_x0y0': 0.035591729}),
}
# Not a sensor's: real sensors report p1 = p2 = 0; these exercise the tangential terms
# (p2 changes sign in the un-mirrored image) and a principal point off the middle.
FACTORY['tangential'] = (dict(FACTORY['vhil'][0], p1=0.0021, p2=-0.0034),
                         dict(FACTORY['vhil'][1], cx=951.25, cy=547.75))

CHILD = """\
import json, sys
import numpy as np
import pylibfreenect2 as lib
assert not __debug__  # -O: apply()'s asserts on frame ownership are compiled out
data = np.load(sys.argv[1])
params = json.loads(sys.argv[3])
ir, color = lib.IrCameraParams(), lib.ColorCameraParams()
for name, value in params[0].items():
    setattr(ir, name, value)
for name, value in params[1].items():
    setattr(color, name, value)
registration = lib.Registration(ir, color)
depth, rgb = lib.Frame(512, 424, 4), lib.Frame(1920, 1080, 4)
undistorted, registered = lib.Frame(512, 424, 4), lib.Frame(512, 424, 4)
out = {'undistorted': [], 'undistort_depth': [], 'registered': [], 'unfiltered': [],
       'color_depth_map': []}
for n in range(data['depth'].shape[0]):
    depth.asarray(np.float32)[...] = data['depth'][n]
    rgb.asarray(np.uint8)[...] = data['color'][n]
    color_depth_map = np.zeros(424 * 512, np.int32)
    registration.apply(rgb, depth, undistorted, registered, True, None, color_depth_map)
    out['undistorted'].append(undistorted.asarray(np.float32).copy())
    out['registered'].append(registered.asarray(np.uint8).copy())
    out['color_depth_map'].append(color_depth_map.reshape(424, 512))
    registration.apply(rgb, depth, undistorted, registered, False)
    out['unfiltered'].append(registered.asarray(np.uint8).copy())
    registration.undistortDepth(depth, undistorted)
    out['undistort_depth'].append(undistorted.asarray(np.float32).copy())
np.savez(sys.argv[2], **{name: np.stack(arrays) for name, arrays in out.items()})
"""


def child_env():
    """Return an environment whose ``pylibfreenect2`` is the real one, not the stand-in."""
    env = dict(os.environ)
    paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
             if p and os.path.abspath(p) != STANDIN]
    env['PYTHONPATH'] = os.pathsep.join([REPO] + paths)
    env['PYTHONFAULTHANDLER'] = '1'
    env.pop('STANDIN_FREENECT2', None)
    return env


@pytest.fixture(scope='module')
def real():
    """Skip unless the real pylibfreenect2 imports in a child of this interpreter."""
    proc = subprocess.run(
        [sys.executable, '-O', '-c', 'import pylibfreenect2; print(pylibfreenect2.__file__)'],
        env=child_env(), cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        pytest.skip('the real pylibfreenect2 is not importable here ({0}); ./dev.sh '
                    'installs it from ../shared/freenect2-wheel on CPython 3.11 '
                    'x86_64'.format(reason))
    assert not proc.stdout.startswith(STANDIN)


@pytest.fixture(scope='module')
def frames():
    """Return (depth uint16, colour BGRX) of the real captures, un-mirrored (ours)."""
    if not os.path.exists(RGBD):
        pytest.skip('no real captures at {0}'.format(RGBD))
    with np.load(RGBD) as data:
        depth, grey = data['depth'], data['color']
    rows, cols = np.mgrid[0:grey.shape[1], 0:grey.shape[2]]
    color = np.empty(grey.shape + (4,), np.uint8)
    color[..., 0] = grey
    color[..., 1] = cols & 255
    color[..., 2] = rows & 255
    color[..., 3] = (cols >> 8) | ((rows >> 8) << 4)
    return depth, color


@pytest.fixture(scope='module', params=sorted(FACTORY))
def case(request, real, frames, tmp_path_factory):
    """Run libfreenect2 on every capture with one factory set; return model and results.

    libfreenect2 gets the frames mirrored (its orientation), its depth as float32
    millimetres (what its depth processor hands out); its outputs are mirrored back.
    """
    depth, color = frames
    tmp = tmp_path_factory.mktemp('factory_' + request.param)
    inputs, outputs = str(tmp / 'in.npz'), str(tmp / 'out.npz')
    np.savez(inputs, depth=depth[:, :, ::-1].astype(np.float32), color=color[:, :, ::-1])
    proc = subprocess.run(
        [sys.executable, '-O', '-c', CHILD, inputs, outputs, json.dumps(FACTORY[request.param])],
        env=child_env(), cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, 'libfreenect2 child: exit {0}\n{1}\n{2}'.format(
        proc.returncode, proc.stdout, proc.stderr)
    with np.load(outputs) as data:
        lf = {name: data[name][:, :, ::-1] for name in data.files}
    model = Freenect2Model(*FACTORY[request.param])
    return request.param, model, lf


def test_undistorted_depth_is_libfreenect2s(case, frames):
    """``undistort`` equals libfreenect2's ``undistortDepth`` (and apply's undistorted)."""
    name, model, lf = case
    depth, _ = frames
    for n, raw in enumerate(depth):
        rect = model.undistort(raw)
        assert rect.dtype == np.uint16 and rect.shape == (424, 512)
        for reference in (lf['undistorted'][n], lf['undistort_depth'][n]):
            same = np.mean(rect == reference)
            assert same >= 0.999, '{0} frame {1}: {2:.4%} equal'.format(name, n, same)
        assert np.count_nonzero(rect) > 150000  # real depth, not an empty frame
        # Floats in, floats out: the same pixels.
        assert np.array_equal(model.undistort(raw.astype(np.float32)), rect)


def test_colour_coordinates_are_libfreenect2s(case, frames):
    """``project`` lands within half a pixel of the colour pixel libfreenect2 takes.

    Its colour row is "(int)(ry + 0.5f)", which truncates toward zero: a row from -1.5
    to -0.5 becomes row 0 there (not -1, outside the image); ``project`` says where the
    point really lands, ``color_index`` takes what libfreenect2 takes.
    """
    name, model, lf = case
    depth, _ = frames
    for n, raw in enumerate(depth):
        rect = model.undistort(raw)
        u, v = model.project(rect)
        taken = lf['color_depth_map'][n]  # libfreenect2's flat offsets, before its filter
        has = taken >= 0
        assert has.sum() > 150000
        row, column = taken // 1920, 1919 - taken % 1920  # un-mirrored
        assert np.all(np.isnan(u[rect == 0])) and np.all(np.isnan(v[rect == 0]))
        du, dv = np.abs(u - column)[has], np.abs(v - row)[has]
        top = (v[has] < -0.5) & (row[has] == 0)  # the truncation toward zero
        within = (du <= 0.5) & (dv <= 0.5)
        assert np.all(within | top), '{0} frame {1}: {2} off by more than 0.5 px'.format(
            name, n, np.count_nonzero(~(within | top)))
        assert np.all(v[has][top] > -1.5)
        assert np.mean(within) >= 0.998
        # Where libfreenect2 takes no colour pixel (with a depth), none is in the image.
        none = (rect > 0) & ~has
        outside = (np.rint(u) < 0) | (np.rint(u) > 1919) | (v <= -1.5) | (v >= 1079.5)
        assert np.all(outside[none])
        # color_index (no filter) takes exactly libfreenect2's pixel, mirrored.
        index = model.color_index(rect, occlusion_filter=False)
        assert np.array_equal(index, np.where(has, row * 1920 + column, -1))


def test_registered_colour_is_libfreenect2s(case, frames):
    """``registered_color`` equals apply's registered image, occlusion filter on and off."""
    name, model, lf = case
    depth, color = frames
    filtered_out = 0
    for n, raw in enumerate(depth):
        rect = model.undistort(raw)
        for occlusion_filter, key in ((True, 'registered'), (False, 'unfiltered')):
            ours = model.registered_color(color[n], rect, occlusion_filter)
            assert ours.shape == (424, 512, 4) and ours.dtype == np.uint8
            same = np.mean(np.all(ours == lf[key][n], axis=2))
            assert same >= 0.99, '{0} frame {1} filter {2}: {3:.4%} equal'.format(
                name, n, occlusion_filter, same)
            # Float depths (the filter's float32 map, not its uint16 one): the same.
            assert np.array_equal(model.registered_color(
                color[n], rect.astype(np.float32), occlusion_filter), ours)
        kept = np.any(lf['registered'][n] != 0, axis=2)
        filtered_out += np.count_nonzero(np.any(lf['unfiltered'][n] != 0, axis=2) & ~kept)
    # The captures have occlusions: the filter is exercised, not only passed through.
    assert filtered_out > 10000


def test_the_equivalent_pinhole_pair_reproduces_the_model(case):
    """A rigid pose and a plumb_bob colour camera reproduce the model within ~1.5 px.

    Also a check of the orientation: in un-mirrored images the colour camera sits along
    +x of the depth camera, t_x about -52 mm, as iai_kinect2's calibration of the rgbd
    sensor (MOCK_CALIBRATION) has it; mirrored, it would be +52 mm.
    """
    name, model, _ = case
    rotation, translation = model.equivalent_pose()
    rms, largest = model.equivalent_pose_residual()
    assert rms < 0.35 and largest < 2.0, (name, rms, largest)
    iai_tx = MOCK_CALIBRATION['ir_to_color']['translation'][0]
    assert -0.056 < translation[0] < -0.049 and iai_tx < 0
    assert abs(translation[1]) < 0.003 and abs(translation[2]) < 0.003
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    assert np.degrees(np.arccos((np.trace(rotation) - 1) / 2)) < 2.0
    camera = model.equivalent_color_camera()
    assert 1040 < camera['fx'] < 1090 and 1040 < camera['fy'] < 1090
    assert abs(camera['cx'] - 959.5) < 30 and abs(camera['cy'] - 539.5) < 30
    # The pose and camera do reproduce project(): spot-check at 2 m.
    cv2 = pytest.importorskip('cv2')
    depth = np.full((424, 512), 2000.0, np.float32)
    u, v = model.project(depth)
    d = model.depth_camera
    rows, cols = np.mgrid[100:324:16, 100:412:16]
    points = np.stack([(cols - d['cx']) / d['fx'] * 2.0, (rows - d['cy']) / d['fy'] * 2.0,
                       np.full(cols.shape, 2.0)], axis=-1).reshape(-1, 3)
    K = np.array([[camera['fx'], 0, camera['cx']], [0, camera['fy'], camera['cy']],
                  [0, 0, 1]])
    D = np.array([camera[k] for k in ('k1', 'k2', 'p1', 'p2', 'k3')])
    projected, _ = cv2.projectPoints(points, cv2.Rodrigues(rotation)[0], translation, K, D)
    expected = np.stack([u[rows, cols], v[rows, cols]], axis=-1).reshape(-1, 2)
    assert np.max(np.linalg.norm(projected.reshape(-1, 2) - expected, axis=1)) < 2.0


# --- the model's own contract (no libfreenect2 needed) -----------------------------------

def model(name='vhil'):
    return Freenect2Model(*FACTORY[name])


def test_the_records_describe_the_un_mirrored_images():
    """depth_camera: cx mirrored, p2 negated; OpenCV's undistortion with it agrees."""
    cv2 = pytest.importorskip('cv2')
    ir, color = FACTORY['tangential']
    m = model('tangential')
    d = m.depth_camera
    assert d['cx'] == pytest.approx(511 - ir['cx']) and d['cy'] == pytest.approx(ir['cy'])
    assert d['p1'] == pytest.approx(ir['p1']) and d['p2'] == pytest.approx(-ir['p2'])
    assert (d['width'], d['height']) == (512, 424)
    assert m.color_camera['cx'] == pytest.approx(1919 - color['cx'])
    K = np.array([[d['fx'], 0, d['cx']], [0, d['fy'], d['cy']], [0, 0, 1]])
    D = np.array([d['k1'], d['k2'], d['p1'], d['p2'], d['k3']])
    mapx, mapy = cv2.initUndistortRectifyMap(K, D, None, K, (512, 424), cv2.CV_32FC1)
    inside = m.undistort_index >= 0
    # libfreenect2 rounds "(int)(m + 0.5f)" in its own (mirrored) columns.
    col = 511 - np.trunc(511 - mapx.reshape(-1) + 0.5)
    row = np.trunc(mapy.reshape(-1) + 0.5)
    expected = row * 512 + col
    # The same raw pixel but where float32 and double round a half differently.
    assert np.mean((expected == m.undistort_index)[inside]) > 0.999


def test_colour_of_any_layout_and_no_depth_gets_none():
    m = model()
    rng = np.random.default_rng(7)
    bgrx = rng.integers(0, 256, (1080, 1920, 4), np.uint8)
    depth = np.full((424, 512), 1500, np.uint16)
    depth[:, :40] = 0
    rect = m.undistort(depth)
    four = m.registered_color(bgrx, rect)
    three = m.registered_color(bgrx[:, :, :3], rect)
    grey = m.registered_color(bgrx[:, :, 1], rect)
    assert three.shape == (424, 512, 3) and grey.shape == (424, 512)
    assert np.array_equal(three, four[:, :, :3]) and np.array_equal(grey, four[:, :, 1])
    index = m.color_index(rect)
    taken = index >= 0
    assert np.array_equal(four.reshape(-1, 4)[taken.reshape(-1)],
                          bgrx.reshape(-1, 4)[index[taken]])
    assert not np.any(four[~taken])
    assert not np.any(taken[rect == 0]) and taken.sum() > 150000
    # A flat wall at 1.5 m hides nothing: the filter keeps every pixel.
    assert np.array_equal(index, m.color_index(rect, occlusion_filter=False))
    u, v = m.project(rect.astype(np.float32))
    assert np.all(np.isnan(u[rect == 0])) and not np.any(np.isnan(u[rect > 0]))


def test_a_near_object_hides_what_is_behind_it():
    """Colour pixels seen by a nearer surface are not given to the farther one."""
    m = model()
    wall = np.full((424, 512), 3000.0, np.float32)
    scene = wall.copy()
    scene[150:250, 200:300] = 800.0  # a box in front of the wall
    near = m.color_index(scene)
    free = m.color_index(wall)
    assert np.array_equal(free, m.color_index(wall, occlusion_filter=False))
    # Wall pixels beside the box land where the box is seen, and lose their colour.
    hidden = (near < 0) & (free >= 0)
    assert hidden.sum() > 1000
    rows, cols = np.nonzero(hidden)
    assert rows.min() >= 149 and rows.max() <= 250
    assert np.all(scene[hidden] == 3000.0)
    # On one side of the box (parallax pushes the near box over the wall there).
    assert cols.min() > 150 and (np.all(cols >= 300) or np.all(cols < 200))
    assert not np.any(m.color_index(scene, occlusion_filter=False)[hidden] < 0)
    assert np.all(near[150:250, 200:300] >= 0)  # the box itself is seen


@pytest.mark.parametrize('field, value, message', [
    ('fx', 0.0, 'depth camera fx must be above 0'),
    ('k1', float('nan'), 'depth camera k1 is not finite'),
    ('cy', 'abc', 'depth camera cy is not a number'),
])
def test_bad_depth_parameters_are_named(field, value, message):
    ir, color = FACTORY['vhil']
    with pytest.raises(ValueError, match=message):
        Freenect2Model(dict(ir, **{field: value}), color)


def test_bad_colour_parameters_are_named():
    ir, color = FACTORY['vhil']
    with pytest.raises(ValueError, match='colour camera shift_d must be above 0'):
        Freenect2Model(ir, dict(color, shift_d=0))
    incomplete = {k: v for k, v in color.items() if k not in ('my_x0y0', 'shift_m')}
    with pytest.raises(ValueError, match='colour camera lacks shift_m, my_x0y0'):
        Freenect2Model(ir, incomplete)
    with pytest.raises(ValueError, match='depth must be 424 x 512'):
        model().undistort(np.zeros((512, 424), np.uint16))
    with pytest.raises(ValueError, match='colour must be 1080 x 1920'):
        model().registered_color(np.zeros((540, 960, 3), np.uint8),
                                 np.zeros((424, 512), np.uint16))
