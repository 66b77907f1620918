"""Tests of streamkinect2.registration: depth_rect, registered depth and colour, clouds.

Real data: the nine synchronised captures of ``shared/data/rgbd`` with their sensor's
iai_kinect2 calibration and the chessboard corners found in both cameras (its MANIFEST):
each IR corner, registered through its depth into the colour image, must land on the
corner found there. Synthetic scenes (a near square before a far wall) check occlusion;
OpenCV (undistortPoints, initUndistortRectifyMap, projectPoints) is the independent
reference for the geometry; libfreenect2's model (:py:mod:`streamkinect2.factory_model`)
for the factory path.
"""
import os
import threading

import numpy as np
import pytest
from streamkinect2.calibration import Calibration
from streamkinect2.registration import cloud_dtype, distort, Registration

cv2 = pytest.importorskip('cv2')

HERE = os.path.dirname(os.path.abspath(__file__))
RGBD = os.path.normpath(os.path.join(HERE, '..', '..', 'shared', 'data', 'rgbd'))
if not os.path.isdir(RGBD):
    RGBD = '/work/shared/data/rgbd'
CAPTURES = os.path.join(RGBD, 'kinect2_sync_rgbd.npz')
needs_rgbd = pytest.mark.skipif(not os.path.exists(CAPTURES), reason='no ' + CAPTURES)

#: libfreenect2's factory values of one Kinect v2 (docs/protocol.md's example), as a
#: device's ``me`` record carries them.
FACTORY_RECORD = {
    'depth_camera': {'width': 512, 'height': 424, 'fx': 365.456, 'fy': 365.456,
                     'cx': 254.878, 'cy': 205.395, 'k1': 0.0905474, 'k2': -0.26819,
                     'k3': 0.0950862, 'p1': 0.0012, 'p2': -0.0007},
    'color_camera': {
        'width': 1920, 'height': 1080, 'fx': 1081.37, 'fy': 1081.37, 'cx': 959.5,
        'cy': 539.5, 'shift_d': 863.0, 'shift_m': 52.0,
        'mx_x3y0': 0.000449, 'mx_x0y3': 1.91e-05, 'mx_x2y1': 4.28e-05, 'mx_x1y2': 0.000243,
        'mx_x2y0': -0.00129, 'mx_x0y2': 0.000337, 'mx_x1y1': 0.00144, 'mx_x1y0': 0.640,
        'mx_x0y1': 0.00473, 'mx_x0y0': 0.132, 'my_x3y0': 4.5e-05, 'my_x0y3': 0.000727,
        'my_x2y1': 0.000168, 'my_x1y2': 5.84e-05, 'my_x2y0': 0.000323, 'my_x0y2': -0.00175,
        'my_x1y1': 0.000671, 'my_x1y0': -0.00455, 'my_x0y1': 0.640, 'my_x0y0': 0.0142}}

SD = (424, 512)


@pytest.fixture(scope='module')
def calibration():
    """Return the calibration of the rgbd sensor (the default one, without the data)."""
    if os.path.isdir(RGBD):
        return Calibration.from_iai_kinect2(RGBD)
    return Calibration.default()


@pytest.fixture(scope='module')
def registration(calibration):
    """Return one Registration for the module (its tables are built once)."""
    return Registration(calibration)


@pytest.fixture(scope='module')
def captures():
    """Return the real captures: a dict of the arrays in the rgbd file."""
    with np.load(CAPTURES) as data:
        return {key: data[key] for key in data.files}


def _grid(shape):
    v, u = np.mgrid[0:shape[0], 0:shape[1]]
    return np.stack([u.ravel(), v.ravel()], axis=-1).astype(np.float64)


def _near_square_scene(near=1000, far=3000, rows=(170, 250), cols=(200, 280)):
    """Return a depth_rect: a far wall with a near square before it (mm)."""
    depth = np.full(SD, far, np.uint16)
    depth[rows[0]:rows[1], cols[0]:cols[1]] = near
    return depth


def _region(registration, camera, depth, rows, cols, shrink):
    """Return a mask of *camera*'s pixels at least *shrink* px inside the image of a part.

    The part: *depth*'s pixels in *rows* x *cols*. A negative *shrink* grows the mask.
    """
    uv = _grid(SD).reshape(SD + (2,))[rows[0]:rows[1], cols[0]:cols[1]].reshape(-1, 2)
    z = depth[rows[0]:rows[1], cols[0]:cols[1]].reshape(-1)
    pos, _ = registration.project_to_color(uv, z, camera)
    # The pixels the square's points land on, gaps between them closed (they are up to
    # ~3 hd pixels apart): the square's image, whatever its shape.
    pad = 8
    mask = np.zeros((camera.height + 2 * pad, camera.width + 2 * pad), np.uint8)
    ij = np.rint(pos).astype(int) + pad
    keep = ((ij[:, 0] >= 0) & (ij[:, 0] < mask.shape[1]) & (ij[:, 1] >= 0)
            & (ij[:, 1] < mask.shape[0]))
    mask[ij[keep, 1], ij[keep, 0]] = 1
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    mask = mask[pad:-pad, pad:-pad]
    if shrink > 0:
        mask = cv2.erode(mask, np.ones((2 * shrink + 1, 2 * shrink + 1), np.uint8))
    elif shrink < 0:
        mask = cv2.dilate(mask, np.ones((1 - 2 * shrink, 1 - 2 * shrink), np.uint8))
    return mask.astype(bool)


# --- depth_rect --------------------------------------------------------------------------

def test_depth_rect_adds_the_shift_only_where_there_is_a_reading(calibration):
    registration = Registration(calibration)
    raw = np.full(SD, 1000, np.uint16)
    raw[:, ::7] = 0
    rect = registration.depth_rect(raw)
    shift = int(round(calibration.depth_shift_mm))
    assert shift == 25
    assert set(np.unique(rect).tolist()) == {0, 1000 + shift}
    assert 0.8 < (rect > 0).mean() < 6 / 7 + 0.01  # zeros stay zeros (not 25 mm)


def test_depth_rect_takes_the_nearest_raw_pixel(calibration, registration):
    raw = np.random.default_rng(1).integers(500, 4000, SD).astype(np.uint16)
    rect = registration.depth_rect(raw)
    k, d = calibration.depth.K, calibration.depth.D
    # Each rect pixel's ray, distorted into the raw image (OpenCV, float64).
    uv = _grid(SD)
    rays = np.c_[(uv - k[:2, 2]) / np.diag(k)[:2], np.ones(len(uv))]
    raw_xy, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), k, d)
    col, row = (np.rint(raw_xy.reshape(SD + (2,))[..., i]).astype(int) for i in (0, 1))
    inside = (col >= 0) & (col < 512) & (row >= 0) & (row < 424)
    expected = np.zeros(SD, np.int64)
    expected[inside] = raw[row[inside], col[inside]].astype(np.int64) + 25
    # Rounding may differ at exact halves (float32 maps): allow a handful of pixels.
    assert (rect != expected).sum() < 50
    assert rect.dtype == np.uint16 and rect.shape == SD


def test_depth_rect_saturates_instead_of_wrapping(calibration):
    registration = Registration(calibration)
    raw = np.full(SD, 65530, np.uint16)
    assert registration.depth_rect(raw).max() == 65535


def test_ir_rect_moves_a_dot_where_opencv_undistorts_it(calibration, registration):
    ir = np.zeros(SD, np.uint16)
    raw = np.array([[60.0, 50.0], [450.0, 370.0], [256.0, 212.0]])
    for x, y in raw:
        ir[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 10000
    rect = registration.ir_rect(ir).astype(np.float64)
    expected = cv2.undistortPoints(raw.reshape(-1, 1, 2), calibration.depth.K,
                                   calibration.depth.D, P=calibration.depth.K).reshape(-1, 2)
    for x, y in expected:
        window = rect[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7]
        wy, wx = np.mgrid[0:13, 0:13]
        cx = (window * wx).sum() / window.sum() + int(x) - 6
        cy = (window * wy).sum() / window.sum() + int(y) - 6
        assert abs(cx - x) < 0.3 and abs(cy - y) < 0.3, (x, y, cx, cy)


# --- the real captures ---------------------------------------------------------------------

def _corners(calibration, registration, captures, n):
    """Return (IR corners on depth_rect's grid, their depth from depth_rect)."""
    rect = registration.depth_rect(captures['depth'][n])
    ir = captures['ir_points'][n].reshape(-1, 1, 2).astype(np.float64)
    k = calibration.depth.K
    uv = cv2.undistortPoints(ir, k, calibration.depth.D, P=k).reshape(-1, 2)
    ij = np.rint(uv).astype(int)
    return uv, rect[ij[:, 1], ij[:, 0]].astype(np.float64), rect


def _reference_medians(calibration, captures):
    """Return the MANIFEST's reference: OpenCV, nearest raw depth + shift, per capture."""
    medians = []
    rvec = cv2.Rodrigues(calibration.rotation)[0]
    for n in range(len(captures['depth'])):
        ir = captures['ir_points'][n].astype(np.float64)
        ij = np.rint(ir).astype(int)
        z = captures['depth'][n][ij[:, 1], ij[:, 0]] + calibration.depth_shift_mm
        xy = cv2.undistortPoints(ir.reshape(-1, 1, 2), calibration.depth.K,
                                 calibration.depth.D).reshape(-1, 2)
        points = np.c_[xy, np.ones(len(xy))] * z[:, None] / 1000.0
        image, _ = cv2.projectPoints(points, rvec, calibration.translation,
                                     calibration.color.K, calibration.color.D)
        error = np.linalg.norm(image.reshape(-1, 2) - captures['color_points'][n], axis=1)
        medians.append(float(np.median(error)))
    return medians


@needs_rgbd
def test_ir_corners_land_on_the_colour_corners(calibration, registration, captures):
    """Each IR corner -> its depth in depth_rect -> colour: median error per capture.

    The issue asks for at most 2 px per capture. The data allow it for the captures whose
    reference (the MANIFEST's computation, OpenCV) is within 2 px; capture 0's corners
    carry a depth about 95 mm off what the colour corners imply (reference: 2.5 px), so
    there the registration must match the reference instead (within 0.1 px).
    """
    reference = _reference_medians(calibration, captures)
    medians = []
    for n in range(len(captures['depth'])):
        uv, z, _ = _corners(calibration, registration, captures, n)
        assert (z > 0).all()
        position, _ = registration.project_to_color(uv, z)
        error = np.linalg.norm(position - captures['color_points'][n], axis=1)
        medians.append(float(np.median(error)))
    print('per-capture median (px):', ['{0:.2f}'.format(m) for m in medians])
    print('OpenCV reference   (px):', ['{0:.2f}'.format(m) for m in reference])
    for n, (median, ref) in enumerate(zip(medians, reference)):
        assert median <= max(2.0, ref + 0.1), (n, median, ref)
        assert abs(median - ref) < 0.15, (n, median, ref)
    assert sum(m <= 2.0 for m in medians) >= 7
    assert np.median(medians) <= 1.2


@needs_rgbd
@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
def test_registered_depth_holds_each_corner_where_it_lands(calibration, registration,
                                                           captures, resolution):
    """register_depth agrees with the corners' projection: their colour-camera depth."""
    camera = getattr(registration, resolution)
    agree = total = 0
    for n in range(len(captures['depth'])):
        uv, z, rect = _corners(calibration, registration, captures, n)
        registered = registration.register_depth(rect, camera)
        position, zc = registration.project_to_color(uv, z, camera)
        ij = np.rint(position).astype(int)
        found = registered[ij[:, 1], ij[:, 0]].astype(np.float64)
        agree += int((np.abs(found - zc) <= 0.01 * zc).sum())
        total += len(zc)
    assert agree >= 0.97 * total, (agree, total)


@needs_rgbd
@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
def test_registered_depth_of_real_frames_is_dense(registration, captures, resolution):
    """Inside surfaces (3 x 3 depth pixels with readings) the registered image has no holes."""
    camera = getattr(registration, resolution)
    for n in (0, 7):  # the farthest and the nearest board
        rect = registration.depth_rect(captures['depth'][n])
        full = cv2.erode((rect > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        # ... and no depth edge there (no occlusion or disocclusion)
        smooth = cv2.dilate(rect, np.ones((3, 3))) - cv2.erode(rect, np.ones((3, 3)))
        full &= smooth < 0.02 * rect
        uv = _grid(SD)[full.ravel()]
        position, _ = registration.project_to_color(uv, rect.ravel()[full.ravel()], camera)
        ij = np.rint(position).astype(int)
        inside = ((ij[:, 0] >= 0) & (ij[:, 0] < camera.width) & (ij[:, 1] >= 0)
                  & (ij[:, 1] < camera.height))
        registered = registration.register_depth(rect, camera)
        assert (registered[ij[inside, 1], ij[inside, 0]] > 0).mean() > 0.999


# --- synthetic scenes: density, occlusion ------------------------------------------------

def _wall_in_colour(registration, camera, z):
    """Return the depth (mm) the colour *camera* sees of the IR camera's plane z = *z*."""
    calibration = registration.calibration
    normal = calibration.rotation[:, 2]  # the plane's normal in the colour frame
    offset = z + normal @ (1000 * calibration.translation)
    v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    return offset / (normal[0] * (u - cx) / fx + normal[1] * (v - cy) / fy + normal[2])


@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
@pytest.mark.parametrize('z', [500, 700, 1500, 4500])
def test_a_wall_registers_dense_and_at_its_colour_depth(registration, resolution, z):
    camera = getattr(registration, resolution)
    depth = np.full(SD, z, np.uint16)
    registered = registration.register_depth(depth, camera)
    inner = _region(registration, camera, depth, (0, 424), (0, 512), shrink=3)
    assert inner.sum() > 0.3 * camera.width * camera.height
    assert (registered[inner] > 0).all()  # dense: no holes
    expected = _wall_in_colour(registration, camera, z)
    assert np.abs(registered[inner] - expected[inner]).max() <= 0.005 * z + 1
    edge = _region(registration, camera, depth, (0, 424), (0, 512), shrink=-3)
    assert not registered[~edge].any()  # nothing beyond the wall's image


@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
def test_a_tilted_plane_registers_dense(calibration, resolution):
    """A floor-like plane seen at a slant (depth from 600 to 3000 mm) leaves no holes."""
    registration = Registration(calibration)
    camera = getattr(registration, resolution)
    rows = np.linspace(3000, 600, SD[0])[:, None]
    depth = np.repeat(rows, SD[1], axis=1).astype(np.uint16)
    registered = registration.register_depth(depth, camera)
    inner = _region(registration, camera, depth, (0, 424), (0, 512), shrink=4)
    assert (registered[inner] > 0).mean() > 0.999


@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
def test_the_nearest_depth_wins(registration, resolution):
    camera = getattr(registration, resolution)
    rows, cols = (170, 250), (200, 280)
    depth = _near_square_scene(rows=rows, cols=cols)
    registered = registration.register_depth(depth, camera)
    inner = _region(registration, camera, depth, rows, cols, shrink=2)
    _, zc_near = registration.project_to_color(_grid(SD)[:1], [1000], camera)
    # Far wall pixels do land inside the square's image (parallax): the test can fail.
    far = np.ones(SD, bool)
    far[rows[0]:rows[1], cols[0]:cols[1]] = False
    pos, _ = registration.project_to_color(_grid(SD)[far.ravel()], depth[far], camera)
    ij = np.rint(pos).astype(int)
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < camera.width) & (ij[:, 1] >= 0) & (ij[:, 1] < camera.height)
    assert inner[ij[ok, 1], ij[ok, 0]].sum() > 100
    assert (registered[inner] < 1100).all() and (registered[inner] > 900).all()
    # Around the square the wall is seen again.
    ring = _region(registration, camera, depth, rows, cols, shrink=-6) & ~_region(
        registration, camera, depth, rows, cols, shrink=-3)
    # Around it the wall, or nothing where the IR camera could not see the wall (its
    # shadow of the square, on one side), never the square's depth.
    assert ((registered[ring] == 0) | (registered[ring] > 2900)).all()
    assert (registered[ring] > 2900).mean() > 0.6


def test_a_hidden_pixel_is_black_and_a_seen_one_keeps_its_colour(calibration, registration):
    rows, cols = (170, 250), (200, 280)
    depth = _near_square_scene(rows=rows, cols=cols)
    color = np.full((1080, 1920, 3), (40, 120, 200), np.uint8)
    registered = registration.color_to_depth(color, depth)
    assert registered.shape == SD + (3,) and registered.dtype == np.uint8
    black = ~registered.any(axis=2)
    # Where each wall pixel lands in the (rectified qhd) colour image, vs. the square's image.
    camera = registration.qhd
    square = _region(registration, camera, depth, rows, cols, shrink=2)
    around = _region(registration, camera, depth, rows, cols, shrink=-3)
    pos, _ = registration.project_to_color(_grid(SD), depth.ravel(), camera)
    ij = np.rint(pos).astype(int)
    raw, _ = registration.project_to_color(_grid(SD), depth.ravel())  # in the raw image
    seen = ((raw[:, 0] >= 2) & (raw[:, 0] <= 1917) & (raw[:, 1] >= 2)
            & (raw[:, 1] <= 1077)).reshape(SD)
    wall = np.ones(SD, bool)
    wall[rows[0]:rows[1], cols[0]:cols[1]] = False
    ijc = np.clip(ij, 0, [camera.width - 1, camera.height - 1]).reshape(SD + (2,))
    behind = wall & seen & square[ijc[..., 1], ijc[..., 0]]
    clear = wall & seen & ~around[ijc[..., 1], ijc[..., 0]]
    assert behind.sum() > 200  # the square's shadow on the wall
    assert black[behind].all()
    assert not black[clear].any()
    assert (registered[clear] == (40, 120, 200)).all()
    near = np.zeros(SD, bool)
    near[rows[0] + 1:rows[1] - 1, cols[0] + 1:cols[1] - 1] = True
    assert not black[near].any()
    # Outside the colour camera's view (the IR camera sees more rows): black.
    assert black[~seen & wall].mean() > 0.9


def _sawtooth(width, height):
    """Return a BGR image: B = 4 x mod 256, G = 4 y mod 256, R = 255."""
    image = np.empty((height, width, 3), np.uint8)
    image[:, :, 0] = (4 * np.arange(width) % 256)[None, :]
    image[:, :, 1] = (4 * np.arange(height) % 256)[:, None]
    image[:, :, 2] = 255
    return image


def _circular(a, b):
    d = np.abs(a - b) % 256
    return np.minimum(d, 256 - d)


@needs_rgbd
@pytest.mark.parametrize('size', [(1920, 1080), (960, 540)])
def test_registered_colour_samples_where_the_pixel_lands(registration, captures, size):
    """Sub-pixel check of color_to_depth's positions (the colour distortion included)."""
    rect = registration.depth_rect(captures['depth'][3])
    registered = registration.color_to_depth(_sawtooth(*size), rect).astype(np.float64)
    seen = registered[:, :, 2] > 250
    assert seen.mean() > 0.6
    pos, _ = registration.project_to_color(_grid(SD), rect.ravel())
    scale = size[0] / 1920.0  # pixel centres scale about the corner
    pos = (pos.reshape(SD + (2,)) + 0.5) * scale - 0.5
    x, y = pos[..., 0], pos[..., 1]
    # away from the sawtooth's wrap (64 px period) and the image border
    usable = seen & (x % 64 > 1.5) & (x % 64 < 62.5) & (y % 64 > 1.5) & (y % 64 < 62.5)
    assert usable.sum() > 50000
    assert np.percentile(_circular(registered[..., 0], 4 * x)[usable], 99) < 2.5
    assert np.percentile(_circular(registered[..., 1], 4 * y)[usable], 99) < 2.5
    assert np.median(_circular(registered[..., 0], 4 * x)[usable]) < 0.8


@needs_rgbd
def test_registered_colour_of_a_real_capture_matches_the_board(registration, captures):
    """The chessboard's colour registered into depth has its corners at the IR corners."""
    n = 3
    rect = registration.depth_rect(captures['depth'][n])
    grey = registration.color_to_depth(captures['color'][n], rect)
    assert grey.shape == SD and grey.dtype == np.uint8
    found, corners = cv2.findChessboardCorners(grey, (5, 7))
    if not found:
        found, corners = cv2.findChessboardCorners(grey, (7, 5))
    assert found
    ir = captures['ir_points'][n].reshape(-1, 1, 2).astype(np.float64)
    k = registration.sd.K
    uv = cv2.undistortPoints(ir, registration.calibration.depth.K,
                             registration.calibration.depth.D, P=k).reshape(-1, 2)
    corners = corners.reshape(-1, 2)
    distance = np.linalg.norm(uv[:, None, :] - corners[None, :, :], axis=2).min(axis=1)
    assert np.median(distance) < 0.6  # IR pixels (one is ~2.8 colour pixels)


# --- colour rectification ----------------------------------------------------------------

@pytest.mark.parametrize('size', [(1920, 1080), (960, 540)])
@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
def test_color_rect_moves_a_dot_where_opencv_undistorts_it(calibration, registration, size,
                                                           resolution):
    camera = getattr(registration, resolution)
    scale = size[0] / 1920.0
    image = np.zeros((size[1], size[0], 3), np.uint8)
    raw = np.array([[150.0, 120.0], [1700.0, 950.0], [960.0, 540.0]])
    for x, y in raw * scale:
        cv2.circle(image, (int(round(x)), int(round(y))), max(2, int(8 * scale)),
                   (255, 255, 255), -1)
    rect = registration.color_rect(image, camera)[:, :, 0].astype(np.float64)
    assert rect.shape == (camera.height, camera.width)
    # The scaled frame's camera: pixel centres scale about the corner.
    k = calibration.color.K.copy()
    k[:2, :2] *= scale
    k[:2, 2] = (k[:2, 2] + 0.5) * scale - 0.5
    drawn = np.rint(raw * scale)
    expected = cv2.undistortPoints(drawn.reshape(-1, 1, 2), k, calibration.color.D,
                                   P=camera.K).reshape(-1, 2)
    r = 14
    wy, wx = np.mgrid[-r:r + 1, -r:r + 1]
    for x, y in expected:
        window = rect[int(y) - r:int(y) + r + 1, int(x) - r:int(x) + r + 1]
        cx = (window * wx).sum() / window.sum() + int(x)
        cy = (window * wy).sum() / window.sum() + int(y)
        assert abs(cx - x) < 0.35 and abs(cy - y) < 0.35, (x, y, cx, cy)


def test_color_rect_of_grey_is_grey(registration):
    grey = np.full((540, 960), 77, np.uint8)
    rect = registration.color_rect(grey, registration.qhd)
    assert rect.shape == (540, 960) and rect[100:-100, 100:-100].min() == 77


# --- point clouds --------------------------------------------------------------------------

@needs_rgbd
@pytest.mark.parametrize('resolution', ['sd', 'qhd', 'hd'])
def test_points_reproject_onto_their_pixels(registration, captures, resolution):
    camera = getattr(registration, resolution)
    rect = registration.depth_rect(captures['depth'][5])
    depth = rect if resolution == 'sd' else registration.register_depth(rect, camera)
    cloud = registration.points(depth, camera)
    assert cloud.shape == depth.shape and cloud.dtype == cloud_dtype(False)
    assert cloud.dtype.itemsize == 16
    valid = depth > 0
    assert np.isnan(cloud['x'][~valid]).all() and np.isnan(cloud['z'][~valid]).all()
    z = cloud['z'][valid].astype(np.float64)
    assert np.allclose(z, depth[valid] / 1000.0, rtol=1e-6, atol=0)
    projected = np.stack([cloud['x'][valid] / cloud['z'][valid],
                          cloud['y'][valid] / cloud['z'][valid]], axis=-1).astype(np.float64)
    projected = projected @ camera.K[:2, :2].T + camera.K[:2, 2]
    v, u = np.nonzero(valid)
    assert np.abs(projected - np.stack([u, v], axis=-1)).max() < 1e-3
    assert not cloud.view(np.uint8).reshape(depth.shape + (16,))[:, :, 12:].any()


def test_points_pack_rgb_as_depth_image_proc(registration):
    rng = np.random.default_rng(7)
    depth = rng.integers(0, 3000, SD).astype(np.uint16)
    color = rng.integers(0, 256, SD + (3,)).astype(np.uint8)
    cloud = registration.points(depth, registration.sd, color)
    assert cloud.dtype.names == ('x', 'y', 'z', 'rgb') and cloud.dtype.itemsize == 16
    assert [cloud.dtype.fields[name][1] for name in cloud.dtype.names] == [0, 4, 8, 12]
    packed = cloud['rgb'].view(np.uint32).astype(np.int64)
    b, g, r = (color[:, :, i].astype(np.int64) for i in range(3))
    assert (packed == (r << 16) | (g << 8) | b).all()  # 0x00RRGGBB
    raw = np.ascontiguousarray(cloud).view(np.uint8).reshape(SD + (16,))
    assert (raw[:, :, 12] == color[:, :, 0]).all() and (raw[:, :, 14] == color[:, :, 2]).all()
    assert not raw[:, :, 15].any()
    padded = registration.points(depth, registration.sd, color, padded=True)
    assert padded.dtype.itemsize == 32 and padded.dtype.fields['rgb'][1] == 16
    assert (padded['rgb'].view(np.uint32) == cloud['rgb'].view(np.uint32)).all()
    raw = np.ascontiguousarray(padded).view(np.uint8).reshape(SD + (32,))
    assert not raw[:, :, 12:16].any() and not raw[:, :, 20:].any()
    assert np.array_equal(padded['x'], cloud['x'], equal_nan=True)
    grey = registration.points(depth, registration.sd, color[:, :, 1])
    packed = grey['rgb'].view(np.uint32).astype(np.int64)
    assert (packed == g * 0x010101).all()


# --- geometry of single points ------------------------------------------------------------

def test_project_to_color_is_opencv_projection(calibration, registration):
    uv = np.array([[10.0, 20.0], [256.3, 200.7], [500.0, 410.0]])
    z = np.array([800.0, 1500.0, 4000.0])
    pos, zc = registration.project_to_color(uv, z)
    xy = cv2.undistortPoints(uv.reshape(-1, 1, 2), calibration.depth.K, None).reshape(-1, 2)
    points = np.c_[xy, np.ones(3)] * z[:, None]
    expected, _ = cv2.projectPoints(points, cv2.Rodrigues(calibration.rotation)[0],
                                    1000 * calibration.translation, calibration.color.K,
                                    calibration.color.D)
    assert np.abs(pos - expected.reshape(-1, 2)).max() < 1e-6
    moved = points @ calibration.rotation.T + 1000 * calibration.translation
    assert np.allclose(zc, moved[:, 2])
    x, y = distort(np.array([0.1]), np.array([-0.2]), calibration.color.D)
    assert np.isfinite(x).all() and np.isfinite(y).all()


@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
def test_a_single_depth_pixel_lands_where_project_to_color_says(registration, resolution):
    camera = getattr(registration, resolution)
    for u, v, z in [(40, 30, 700), (256, 212, 1500), (470, 390, 3500)]:
        depth = np.zeros(SD, np.uint16)
        depth[v, u] = z
        registered = registration.register_depth(depth, camera)
        rows, cols = np.nonzero(registered)
        (pos,), (zc,) = registration.project_to_color([[u, v]], [z], camera)
        assert len(rows) == 4 if resolution == 'qhd' else len(rows) == 16
        assert abs(cols.mean() - pos[0]) <= 0.5 and abs(rows.mean() - pos[1]) <= 0.5
        assert (np.abs(registered[rows, cols].astype(float) - zc) <= 0.5).all()


# --- hostile input ------------------------------------------------------------------------

@pytest.mark.parametrize('bad', [
    np.zeros((424, 511), np.uint16), np.zeros((512, 424), np.uint16),
    np.zeros(SD, np.float32), np.zeros(SD, np.int16), np.zeros(SD + (1,), np.uint16),
    np.zeros((0, 0), np.uint16), [[0] * 512] * 424, None, b'\0' * (2 * 512 * 424)])
def test_wrong_depth_is_a_clear_value_error(registration, bad):
    for call in (registration.depth_rect, registration.ir_rect,
                 lambda d: registration.register_depth(d, registration.qhd),
                 lambda d: registration.color_to_depth(np.zeros((1080, 1920, 3), np.uint8), d),
                 lambda d: registration.points(d, registration.sd)):
        with pytest.raises(ValueError, match='uint16'):
            call(bad)


@pytest.mark.parametrize('bad', [
    np.zeros((1080, 1920, 2), np.uint8), np.zeros((1080, 1920, 3), np.uint16),
    np.zeros((1080, 1920, 3), np.float32), np.zeros((1000, 1920, 3), np.uint8),
    np.zeros((1080, 1080, 3), np.uint8), np.zeros((0, 0, 3), np.uint8),
    np.zeros((10, 10, 3), np.uint8) + 0, 'color', None])
def test_wrong_colour_is_a_clear_value_error(registration, bad):
    depth = np.zeros(SD, np.uint16)
    with pytest.raises(ValueError, match='colour|color'):
        registration.color_to_depth(bad, depth)
    with pytest.raises(ValueError, match='colour|color'):
        registration.color_rect(bad, registration.qhd)


def test_wrong_camera_or_colour_for_a_cloud_is_a_clear_value_error(calibration, registration):
    depth = np.zeros(SD, np.uint16)
    with pytest.raises(ValueError, match='rectified'):
        registration.register_depth(depth, calibration.color)  # distorted
    with pytest.raises(ValueError, match='CameraModel'):
        registration.register_depth(depth, 'qhd')
    with pytest.raises(ValueError, match='like the depth'):
        registration.points(depth, registration.sd, np.zeros((540, 960, 3), np.uint8))
    with pytest.raises(ValueError, match='424 x 512'):
        registration.points(np.zeros((540, 960), np.uint16), registration.sd)
    with pytest.raises(ValueError, match='as many'):
        registration.project_to_color([[1.0, 2.0]], [1.0, 2.0])
    with pytest.raises(ValueError, match='colour frames'):
        Registration(calibration, color_size=(640, 640))


def test_no_depth_gives_nothing_everywhere(registration):
    depth = np.zeros(SD, np.uint16)
    assert not registration.depth_rect(depth).any()
    for camera in (registration.qhd, registration.hd):
        registered = registration.register_depth(depth, camera)
        assert registered.shape == (camera.height, camera.width) and not registered.any()
        cloud = registration.points(registered, camera,
                                    np.full((camera.height, camera.width, 3), 9, np.uint8))
        assert np.isnan(cloud['x']).all() and np.isnan(cloud['z']).all()
    assert not registration.color_to_depth(np.full((1080, 1920, 3), 200, np.uint8),
                                           depth).any()
    cloud = registration.points(depth, registration.sd)
    assert np.isnan(cloud['x']).all() and np.isnan(cloud['y']).all()


def test_extreme_depths_stay_in_range(registration):
    depth = np.full(SD, 65535, np.uint16)
    depth[::2] = 1
    for camera in (registration.qhd, registration.hd):
        registered = registration.register_depth(depth, camera)
        assert registered.dtype == np.uint16  # no wrap-around: 1 mm is behind the colour
        assert registered.max() <= 65535 and (registered[registered > 0] > 60000).all()
    registration.color_to_depth(np.full((540, 960, 3), 5, np.uint8), depth)


def test_threads_share_one_registration(calibration, captures):
    registration = Registration(calibration)  # tables built by whichever thread comes first
    rect = registration.depth_rect(captures['depth'][2])
    color = captures['color'][2]
    results = []

    def work():
        results.append((registration.register_depth(rect, registration.hd),
                        registration.color_to_depth(color, rect)))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4
    for depth, grey in results[1:]:
        assert np.array_equal(depth, results[0][0]) and np.array_equal(grey, results[0][1])


# --- factory values: libfreenect2's model -------------------------------------------------

@pytest.fixture(scope='module')
def factory():
    """Return (a Registration for libfreenect2's factory values, its calibration)."""
    calibration = Calibration.from_device_record(FACTORY_RECORD)
    assert calibration.factory is not None, calibration.warnings
    return Registration(calibration), calibration


@needs_rgbd
def test_factory_values_use_libfreenect2s_model(factory, captures):
    registration, calibration = factory
    model = calibration.factory_model()
    raw = captures['depth'][4]
    rect = registration.depth_rect(raw)
    assert np.array_equal(rect, model.undistort(raw))  # no depth shift in a device record
    color = cv2.cvtColor(captures['color'][4], cv2.COLOR_GRAY2BGR)
    assert np.array_equal(registration.color_to_depth(color, rect),
                          model.registered_color(color, rect))
    plain = np.full((1080, 1920, 3), 50, np.uint8)
    half = registration.color_to_depth(plain[::2, ::2], rect)
    assert half.shape == SD + (3,)
    full = model.registered_color(plain, rect)
    assert full.any() and np.array_equal(half, full)


def _factory_landing(model, depth, calibration, camera):
    """Return the pixels of rectified *camera* where libfreenect2's model puts *depth*."""
    u, v = model.project(depth)
    raw = np.stack([u.ravel(), v.ravel()], axis=-1).astype(np.float64)
    raw[~np.isfinite(raw).all(axis=1)] = -1e4
    rect = cv2.undistortPoints(raw.reshape(-1, 1, 2), calibration.color.K, calibration.color.D,
                               P=camera.K).reshape(-1, 2)
    return np.rint(rect[:, 0]).astype(int), np.rint(rect[:, 1]).astype(int)


@needs_rgbd
@pytest.mark.parametrize('resolution', ['qhd', 'hd'])
def test_factory_registered_depth_is_where_the_model_projects(factory, captures, resolution):
    registration, calibration = factory
    model = calibration.factory_model()
    camera = getattr(registration, resolution)
    rect = registration.depth_rect(captures['depth'][4])
    registered = registration.register_depth(rect, camera)
    valid = rect > 0
    cu, cv = _factory_landing(model, rect, calibration, camera)
    cu, cv = cu[valid.ravel()], cv[valid.ravel()]
    inside = (cu >= 0) & (cu < camera.width) & (cv >= 0) & (cv < camera.height)
    found = registered[cv[inside], cu[inside]].astype(float)
    z = rect[valid][inside].astype(float)
    assert (found > 0).all()
    assert (found <= z + 0.5).all()  # the nearest wins, the same z (libfreenect2's model)
    cloud = registration.points(registered, camera)
    assert np.isnan(cloud['z'][registered == 0]).all()
    # A wall: dense, at its depth.
    wall = np.full(SD, 1500, np.uint16)
    registered = registration.register_depth(wall, camera)
    landed = np.zeros((camera.height, camera.width), np.uint8)
    cu, cv = _factory_landing(model, wall, calibration, camera)
    inside = (cu >= 0) & (cu < camera.width) & (cv >= 0) & (cv < camera.height)
    landed[cv[inside], cu[inside]] = 1
    inner = cv2.erode(cv2.morphologyEx(landed, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8)),
                      np.ones((7, 7), np.uint8)).astype(bool)
    assert inner.mean() > 0.5
    assert (registered[inner] == 1500).all()
