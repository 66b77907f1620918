"""libfreenect2's own depth-to-colour model for a sensor's factory values, in numpy.

A Kinect v2 carries its factory calibration: the IR (depth) camera's intrinsics and
distortion (libfreenect2 ``IrCameraParams``) and, for the colour camera, fx, fy, cx, cy
plus a depth-to-colour mapping that is not a rigid pose: ``shift_d``, ``shift_m`` and two
cubic polynomials ``mx_*``, ``my_*`` (``ColorCameraParams``). libfreenect2's
``Registration`` (src/registration.cpp) is the model that uses them;
:py:class:`Freenect2Model` reproduces it, the same float32 arithmetic in the same order
(so, with the same input, the same pixels), vectorised: every per-pixel map is computed
once at construction, a frame costs array operations only.

Orientation: libfreenect2's frames are mirrored (the scene's left on the image's right);
frames in this library are not (kinect2_bridge's orientation: it flips libfreenect2's
frames horizontally, and so does :py:mod:`.freenect2_device`). The parameters are taken
exactly as libfreenect2 reports them (defined on its mirrored images: the device record's
``depth_camera`` and ``color_camera``); images go in and come out un-mirrored. The flip is
folded into the precomputed maps, so it costs nothing per frame. For an image *w* pixels
wide, pixel column *x* of libfreenect2 is column ``w - 1 - x`` here: a principal point
``cx`` there is ``w - 1 - cx`` here and the tangential term ``p2`` changes sign
(:py:attr:`Freenect2Model.depth_camera`, :py:attr:`Freenect2Model.color_camera`).

Pixel coordinates follow OpenCV's convention (and libfreenect2's): the centre of pixel
column *x* is at *x*; depth in millimetres.
"""
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import numpy.typing as npt

from .device import COLOR_HEIGHT, COLOR_WIDTH, DEPTH_HEIGHT, DEPTH_WIDTH

__all__ = ['Freenect2Model', 'mirror_intrinsics', 'COLOR_PARAM_KEYS', 'DEPTH_PARAM_KEYS',
           'COLOR_Q', 'DEPTH_Q', 'FILTER_HEIGHT_HALF', 'FILTER_TOLERANCE', 'FILTER_WIDTH_HALF']

#: libfreenect2 ``IrCameraParams``, by name: what the model reads of ``depth_camera``.
DEPTH_PARAM_KEYS = ('fx', 'fy', 'cx', 'cy', 'k1', 'k2', 'k3', 'p1', 'p2')
#: libfreenect2 ``ColorCameraParams``, by name: what the model reads of ``color_params``.
COLOR_PARAM_KEYS = (
    'fx', 'fy', 'cx', 'cy', 'shift_d', 'shift_m',
    'mx_x3y0', 'mx_x0y3', 'mx_x2y1', 'mx_x1y2', 'mx_x2y0', 'mx_x0y2', 'mx_x1y1', 'mx_x1y0',
    'mx_x0y1', 'mx_x0y0',
    'my_x3y0', 'my_x0y3', 'my_x2y1', 'my_x1y2', 'my_x2y0', 'my_x0y2', 'my_x1y1', 'my_x1y0',
    'my_x0y1', 'my_x0y0')

#: registration.cpp's constants ("these seem to be hardcoded in the original SDK").
DEPTH_Q = np.float32(0.01)
COLOR_Q = np.float32(0.002199)
#: Its occlusion filter: a depth pixel marks the colour pixels within this many columns
#: and rows of the one it lands on; a depth pixel more than FILTER_TOLERANCE (relative)
#: behind the nearest depth marking its colour pixel gets no colour.
FILTER_WIDTH_HALF = 2
FILTER_HEIGHT_HALF = 1
FILTER_TOLERANCE = np.float32(0.01)


def mirror_intrinsics(record: Mapping[str, Any], width: int) -> Dict[str, Any]:
    """Return a copy of intrinsics *record* for the image mirrored horizontally.

    For an image *width* pixels wide: ``cx`` becomes ``width - 1 - cx`` and the tangential
    distortion term ``p2`` changes sign (when present); every other key is kept. Its own
    inverse: it takes libfreenect2's values to this library's orientation and back.
    """
    mirrored = dict(record)
    mirrored['cx'] = float(width - 1 - float(record['cx']))
    if 'p2' in record:
        mirrored['p2'] = -float(record['p2'])
    return mirrored


_F = np.float32
_COLOR_SIZE = COLOR_WIDTH * COLOR_HEIGHT
#: Offset of colour pixel 0 in the filter map: FILTER_HEIGHT_HALF rows of margin (as
#: libfreenect2's, which make its "bigdepth" 1920 x 1082) plus FILTER_WIDTH_HALF pixels,
#: which libfreenect2 writes before its buffer for colour pixels (0, 0) and (0, 1).
_FILTER_BASE = COLOR_WIDTH * FILTER_HEIGHT_HALF + FILTER_WIDTH_HALF
_FILTER_SIZE = _COLOR_SIZE + 2 * _FILTER_BASE


def _params(record: Mapping[str, Any], keys: Tuple[str, ...], what: str) -> Dict[str, Any]:
    """Return *keys* of *record* as float32 (what a libfreenect2 C float holds)."""
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError('{0} lacks {1}'.format(what, ', '.join(missing)))
    values = {}
    for key in keys:
        try:
            value = _F(float(record[key]))
        except (TypeError, ValueError):
            raise ValueError('{0} {1} is not a number: {2!r}'.format(
                what, key, record[key])) from None
        if not np.isfinite(value):
            raise ValueError('{0} {1} is not finite: {2!r}'.format(what, key, record[key]))
        values[key] = value
    for key in ('fx', 'fy') + (('shift_d',) if 'shift_d' in keys else ()):
        if not values[key] > 0:
            raise ValueError('{0} {1} must be above 0, not {2!r}'.format(
                what, key, record[key]))
    return values


class Freenect2Model(object):
    """libfreenect2's ``Registration`` for one sensor, on un-mirrored images.

    *depth_camera*: the IR camera's fx, fy, cx, cy, k1, k2, k3, p1, p2 as libfreenect2's
    ``getIrCameraParams()`` reports them (the device record's ``depth_camera``);
    *color_params*: fx, fy, cx, cy, shift_d, shift_m, mx_*, my_* as
    ``getColorCameraParams()`` reports them (the device record's ``color_camera``). Other
    keys are ignored; a missing, non-numeric or non-finite value, or fx, fy, shift_d not
    above 0, raises ValueError naming it. Values are used as float32, as libfreenect2
    holds them.

    Images are 512 x 424 depth and 1920 x 1080 colour, un-mirrored (module docstring).
    The depth camera's *rectified* image (``depth_rect``, :py:meth:`undistort`) is
    libfreenect2's "undistorted" one: :py:attr:`depth_camera`'s K without distortion.
    Instances are safe to share between threads (:py:meth:`color_index` and what calls it
    take a lock while they use a shared scratch map).
    """

    def __init__(self, depth_camera: Mapping[str, Any], color_params: Mapping[str, Any]) -> None:
        """Precompute the per-pixel maps of the sensor with these factory values."""
        depth = _params(depth_camera, DEPTH_PARAM_KEYS, 'depth camera')
        color = _params(color_params, COLOR_PARAM_KEYS, 'colour camera')
        self._depth, self._color = depth, color
        width, height = DEPTH_WIDTH, DEPTH_HEIGHT
        # libfreenect2's own pixel grid (mirrored): x, y as the C floats of its loop.
        x = np.broadcast_to(np.arange(width, dtype=_F), (height, width))
        y = np.broadcast_to(np.arange(height, dtype=_F)[:, None], (height, width))

        # RegistrationImpl::distort, then "(int)(m + 0.5f)" and the bounds check.
        dx = (x - depth['cx']) / depth['fx']
        dy = (y - depth['cy']) / depth['fy']
        dx2 = dx * dx
        dy2 = dy * dy
        r2 = dx2 + dy2
        dxdy2 = _F(2) * dx * dy
        kr = _F(1) + ((depth['k3'] * r2 + depth['k2']) * r2 + depth['k1']) * r2
        mx = depth['fx'] * (dx * kr + depth['p2'] * (r2 + _F(2) * dx2)
                            + depth['p1'] * dxdy2) + depth['cx']
        my = depth['fy'] * (dy * kr + depth['p1'] * (r2 + _F(2) * dy2)
                            + depth['p2'] * dxdy2) + depth['cy']
        with np.errstate(invalid='ignore'):
            ix = np.trunc(mx + _F(0.5))  # C's cast truncates toward zero
            iy = np.trunc(my + _F(0.5))
            inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        # In un-mirrored terms: rect pixel (r, c) reads raw pixel (iy, w - 1 - ix) of
        # libfreenect2's rect pixel (r, w - 1 - c).
        raw_row = np.where(inside, iy, 0).astype(np.intp)[:, ::-1]
        raw_col = (width - 1 - np.where(inside, ix, 0).astype(np.intp))[:, ::-1]
        inside = inside[:, ::-1]
        self._inside = np.ascontiguousarray(inside).reshape(-1)
        self._outside = np.flatnonzero(~self._inside)
        #: Flat index into the un-mirrored raw depth image of the pixel each depth_rect
        #: pixel takes (nearest; libfreenect2 never blends), -1 where it falls outside.
        self.undistort_index: npt.NDArray[np.intp] = np.where(
            inside, raw_row * width + raw_col, -1).reshape(-1)
        self._source = np.where(self._inside, self.undistort_index, 0)

        # RegistrationImpl::depth_to_color, in the order of its float operations.
        mxq = (x - depth['cx']) * DEPTH_Q
        myq = (y - depth['cy']) * DEPTH_Q

        def poly(a: str) -> npt.NDArray[np.float32]:
            c = color
            return (mxq * mxq * mxq * c[a + '_x3y0'] + myq * myq * myq * c[a + '_x0y3']
                    + mxq * mxq * myq * c[a + '_x2y1'] + myq * myq * mxq * c[a + '_x1y2']
                    + mxq * mxq * c[a + '_x2y0'] + myq * myq * c[a + '_x0y2']
                    + mxq * myq * c[a + '_x1y1'] + mxq * c[a + '_x1y0']
                    + myq * c[a + '_x0y1'] + c[a + '_x0y0'])

        map_x = poly('mx') / (color['fx'] * COLOR_Q) - color['shift_m'] / color['shift_d']
        map_y = poly('my') / COLOR_Q + color['cy']
        with np.errstate(invalid='ignore'):
            map_yi = np.trunc(map_y + _F(0.5))
        self._map_x = np.ascontiguousarray(map_x[:, ::-1]).reshape(-1)
        self._map_y = np.ascontiguousarray(map_y[:, ::-1]).reshape(-1)
        # Colour row offsets (flat index of column 0 of the row): a row outside the
        # image gives an offset outside it, as libfreenect2's "cx + cy * 1920".
        self._row_offset = np.ascontiguousarray(
            np.clip(map_yi, -2 ** 20, 2 ** 20).astype(np.int64)[:, ::-1]).reshape(-1) \
            * COLOR_WIDTH
        self._color_cx = color['cx'] + _F(0.5)  # "0.5f added for later rounding"
        self._filter_maps: Dict[str, np.ndarray] = {}  # by dtype, made on first use
        self._lock = threading.Lock()  # the filter map
        self._pose_lock = threading.Lock()
        self._pose: Optional[Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                   Dict[str, float]]] = None
        self._residual: Optional[Tuple[float, float]] = None

        #: Intrinsics (``width``, ``height``, fx, fy, cx, cy, k1, k2, k3, p1, p2) of the
        #: depth camera in this library's orientation: what describes the un-mirrored
        #: raw depth and IR images (cx mirrored, p2 negated). With zero distortion they
        #: are the camera of :py:meth:`undistort`'s ``depth_rect``.
        self.depth_camera: Dict[str, float] = mirror_intrinsics(dict(
            {key: float(depth[key]) for key in DEPTH_PARAM_KEYS},
            width=width, height=height), width)
        #: The colour parameters' fx, fy, cx, cy in this library's orientation (cx
        #: mirrored; no distortion: libfreenect2 has none). Nominal values (the same on
        #: every sensor): :py:meth:`equivalent_color_camera` is the one that fits.
        self.color_camera: Dict[str, float] = mirror_intrinsics({
            'width': COLOR_WIDTH, 'height': COLOR_HEIGHT,
            'fx': float(color['fx']), 'fy': float(color['fy']),
            'cx': float(color['cx']), 'cy': float(color['cy']),
            'k1': 0.0, 'k2': 0.0, 'k3': 0.0, 'p1': 0.0, 'p2': 0.0}, COLOR_WIDTH)

    def undistort(self, depth_raw: npt.ArrayLike) -> np.ndarray:
        """Return ``depth_rect``: *depth_raw* (424 x 512, any dtype) undistorted.

        libfreenect2's ``undistortDepth``: each pixel of the rectified image takes the
        value of the nearest raw pixel (never a blend); 0 where that falls outside the
        raw image. Same dtype and shape as *depth_raw*; un-mirrored in and out.
        """
        raw = np.asarray(depth_raw)
        if raw.shape != (DEPTH_HEIGHT, DEPTH_WIDTH):
            raise ValueError('depth must be {0} x {1}, not {2}'.format(
                DEPTH_HEIGHT, DEPTH_WIDTH, raw.shape))
        rect = raw.reshape(-1).take(self._source)
        rect[self._outside] = 0
        return rect.reshape(DEPTH_HEIGHT, DEPTH_WIDTH)

    def _given(self, depth_rect: npt.ArrayLike) -> np.ndarray:
        z = np.asarray(depth_rect)
        if z.shape != (DEPTH_HEIGHT, DEPTH_WIDTH):
            raise ValueError('depth_rect must be {0} x {1}, not {2}'.format(
                DEPTH_HEIGHT, DEPTH_WIDTH, z.shape))
        return z.reshape(-1)

    def _z(self, depth_rect: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return self._given(depth_rect).astype(_F, copy=False)

    def project(self, depth_rect: npt.ArrayLike
                ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return (u, v): where each ``depth_rect`` pixel lands in the colour image.

        *depth_rect*: (424, 512) millimetres (float32 or uint16), as :py:meth:`undistort`
        gives it. u and v are (424, 512) float32 pixel coordinates in the 1920 x 1080
        un-mirrored colour image (OpenCV convention: pixel column *c* spans c - 0.5 to
        c + 0.5), as libfreenect2's ``Registration::apply(dx, dy, dz, cx, cy)`` computes
        them (mirrored back): u depends on the depth (parallax, ``shift_m / z``), v does
        not (the model has none vertically). They may fall outside the image; NaN where
        the depth is not above 0 or not finite. The colour pixel that libfreenect2's
        ``apply`` takes (:py:meth:`color_index`) is the nearest, ``(round(u),
        round(v))``, but for halves and for v from -1.5 to -0.5, which its
        ``(int)(ry + 0.5f)`` truncates to row 0.
        """
        z = self._z(depth_rect)
        with np.errstate(divide='ignore', invalid='ignore'):
            valid = (z > 0) & (z < np.inf)
            u = (self._map_x + self._color['shift_m'] / z) * self._color['fx'] \
                + self._color['cx']
        u = _F(COLOR_WIDTH - 1) - u
        u[~valid] = np.nan
        v = np.where(valid, self._map_y, _F(np.nan))
        shape = (DEPTH_HEIGHT, DEPTH_WIDTH)
        return u.reshape(shape), v.reshape(shape)

    def color_index(self, depth_rect: npt.ArrayLike,
                    occlusion_filter: bool = True) -> npt.NDArray[np.intp]:
        """Return the colour pixel each ``depth_rect`` pixel takes, as libfreenect2's apply.

        A (424, 512) array of flat indices into the un-mirrored 1920 x 1080 colour image
        (``row * 1920 + column``), -1 where a pixel takes none: no depth (not above 0 or
        not finite), its colour pixel outside the image, or (with *occlusion_filter*,
        libfreenect2's ``enable_filter``) hidden: more than 1 % farther than the nearest
        depth pixel landing within 2 columns and 1 row of the same colour pixel
        (``filter_width_half``, ``filter_height_half``, ``filter_tolerance``).
        """
        given = self._given(depth_rect)
        z = given.astype(_F, copy=False)
        color = self._color
        # Whole-image arrays (no compaction: cheaper); a pixel without depth gets an
        # infinite one, which lands at the colour column of its row's "shift_m / z = 0"
        # and changes no minimum in the filter.
        with np.errstate(invalid='ignore'):
            valid = (z > 0) & (z < np.inf)
        z = np.where(valid, z, _F(np.inf))
        # "(*map_x + (color.shift_m / z)) * color.fx + color_cx", then "(int)rx".
        rx = np.divide(color['shift_m'], z)
        rx += self._map_x
        rx *= color['fx']
        rx += self._color_cx
        if not (-2 ** 30 < rx.min() and rx.max() < 2 ** 30):  # a depth of almost 0
            np.clip(rx, -2 ** 30, 2 ** 30, out=rx)
        column = rx.astype(np.intp)  # truncates toward zero, as C
        offset = column + self._row_offset
        seen = (offset >= 0) & (offset < _COLOR_SIZE)
        seen &= valid
        if not seen.all():  # out of the image: no colour, and no part in the filter
            z[~seen] = np.inf
            np.clip(offset, 0, _COLOR_SIZE - 1, out=offset)
        if occlusion_filter:
            pick = np.flatnonzero(seen)
            seen[pick] = self._unoccluded(given[pick], z[pick], offset[pick])
        # Mirror libfreenect2's colour pixel: column c of its row is w - 1 - c here. An
        # offset whose column lies outside 0..w-1 wraps into the next or previous row in
        # libfreenect2 (it checks only the flat offset): mirror the pixel it reads.
        if column.min() < 0 or column.max() >= COLOR_WIDTH:
            column = offset % COLOR_WIDTH
        column *= -2
        offset += column
        offset += COLOR_WIDTH - 1
        offset[~seen] = -1
        return offset.reshape(DEPTH_HEIGHT, DEPTH_WIDTH)

    def _unoccluded(self, given: np.ndarray, zs: npt.NDArray[np.float32],
                    offset: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """Return which of the depth pixels (depth *zs*, colour *offset*) the filter keeps.

        libfreenect2 writes each depth into a (2 * 2 + 1) x (2 * 1 + 1) window of a
        colour-sized map of minima and reads the map back at each pixel's own colour
        pixel. Here: each depth goes to its column in the rows above, at and below
        (scatter-minimum), then each pixel reads the minimum of the 5 columns around its
        own; the flat offsets make it wrap at the row ends exactly as libfreenect2. The
        map holds uint16 when the depths are integers up to 65535 (*given*: the depths
        as the caller gave them; the minima are the same, in half the memory), float32
        otherwise.
        """
        width, base = COLOR_WIDTH, _FILTER_BASE
        if not zs.size:
            return np.ones(0, bool)
        maps = self._filter_maps
        if given.dtype.kind in 'ui' and (given.dtype.itemsize <= 2
                                         or int(given.max()) <= 65535):
            keys: np.ndarray = given.astype(np.uint16, copy=False)
            kind, empty = 'uint16', 65535.0  # "no depth": changes no minimum
        else:
            keys, kind, empty = zs, 'float32', np.inf
        nearest = np.empty_like(keys)
        other = np.empty_like(keys)
        with self._lock:
            if kind not in maps:
                maps[kind] = np.empty(_FILTER_SIZE, kind)
            fmap = maps[kind]
            # Only the span the windows reach needs resetting.
            low = base + int(offset.min()) - FILTER_HEIGHT_HALF * width - FILTER_WIDTH_HALF
            high = base + int(offset.max()) + FILTER_HEIGHT_HALF * width + FILTER_WIDTH_HALF
            fmap[low:high + 1] = empty
            # Views that start r rows / c columns on index the map at offset + r * w + c.
            for r in range(-FILTER_HEIGHT_HALF, FILTER_HEIGHT_HALF + 1):
                np.minimum.at(fmap[base + r * width:], offset, keys)
            np.take(fmap[base - FILTER_WIDTH_HALF:], offset, out=nearest)
            for c in range(1 - FILTER_WIDTH_HALF, FILTER_WIDTH_HALF + 1):
                np.take(fmap[base + c:], offset, out=other)
                np.minimum(nearest, other, out=nearest)
        # "(z - min_z) / z > filter_tolerance ? 0 : colour", in float32.
        return ~((zs - nearest.astype(_F, copy=False)) / zs > FILTER_TOLERANCE)

    def registered_color(self, color: npt.ArrayLike, depth_rect: npt.ArrayLike,
                         occlusion_filter: bool = True) -> np.ndarray:
        """Return the colour image registered into the depth camera (``depth_rect``'s).

        *color*: the un-mirrored 1920 x 1080 colour image, (1080, 1920, C) uint8 (BGR,
        BGRX, ... any C) or (1080, 1920); *depth_rect* as :py:meth:`project` takes it.
        Returns (424, 512, C) (or (424, 512)) of the same dtype: each pixel the colour
        pixel :py:meth:`color_index` gives, 0 (black) where none. With
        ``depth_rect = undistort(depth_raw)`` this is libfreenect2's ``apply(rgb, depth,
        undistorted, registered, enable_filter)`` ``registered`` image, un-mirrored.
        """
        image = np.ascontiguousarray(color)
        if image.shape[:2] != (COLOR_HEIGHT, COLOR_WIDTH):
            raise ValueError('colour must be {0} x {1}, not {2}'.format(
                COLOR_HEIGHT, COLOR_WIDTH, image.shape[:2]))
        index = self.color_index(depth_rect, occlusion_filter).reshape(-1)
        channels = image.shape[2:]
        # One item per pixel (a uint32 for BGRX, 3 raw bytes for BGR): one gather.
        size = image.dtype.itemsize * int(np.prod(channels))
        item = np.dtype({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(
            size, (np.void, size)))
        pixels = image.reshape(-1).view(np.uint8).view(item)
        out = pixels.take(index, mode='wrap')  # -1: the last pixel, then black
        out[index < 0] = np.zeros(1, item)[0]
        return out.view(image.dtype).reshape((DEPTH_HEIGHT, DEPTH_WIDTH) + channels)

    def equivalent_pose(self) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Return (R, t): the rigid pose of the pinhole pair that best reproduces the model.

        R (3 x 3) and t (3, metres) take points from the depth camera's frame (the camera
        of ``depth_rect``: :py:attr:`depth_camera`'s K) to the colour camera's, whose
        intrinsics and plumb_bob distortion :py:meth:`equivalent_color_camera` gives (the
        two are fitted together). Fitted (OpenCV ``calibrateCamera``, starting from the
        colour parameters' fx, fy, cx, cy) to what :py:meth:`project` gives for every 8th
        depth pixel at depths 0.5, 1.0, ... 4.5 m, where it lands in the colour image.

        Residual (:py:meth:`equivalent_pose_residual`): for the two factory sets of
        test/test_factory_model.py, 0.19 and 0.23 pixels RMS, at most 1.55 and 1.51
        pixels; t is (-0.0528, 0.0000, 0.0002) and (-0.0526, 0.0000, -0.0000) m: the
        colour camera 52.8 and 52.6 mm along the depth camera's +x axis (``shift_m``,
        52 mm, is libfreenect2's baseline). Holding the colour camera at the
        colour parameters' fx, fy, cx, cy without distortion instead leaves 5.9 and 4.8
        pixels RMS, 21 and 19 pixels at worst: those four values are nominal (1081.37,
        959.5, 539.5 on every sensor); the sensor's own focal length (about 1060) and
        lens distortion are in the ``mx_*``, ``my_*`` polynomials. Computed once (a
        fraction of a second; cv2 is imported then), then cached.
        """
        rotation, translation, _ = self._equivalent()
        return rotation.copy(), translation.copy()

    def equivalent_color_camera(self) -> Dict[str, float]:
        """Return the colour camera of :py:meth:`equivalent_pose`: an intrinsics record.

        ``width``, ``height``, fx, fy, cx, cy, k1, k2, k3, p1, p2 (plumb_bob), of the
        un-mirrored 1920 x 1080 colour image.
        """
        return dict(self._equivalent()[2])

    def equivalent_pose_residual(self) -> Tuple[float, float]:
        """Return (RMS, largest) distance in colour pixels of the pinhole pair to the model."""
        self._equivalent()
        assert self._residual is not None
        return self._residual

    def _equivalent(self) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                   Dict[str, float]]:
        with self._pose_lock:
            if self._pose is None:
                self._pose, self._residual = self._fit_pose()
            return self._pose

    def _fit_pose(self) -> Tuple[Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                                       Dict[str, float]], Tuple[float, float]]:
        import cv2  # only here: the model itself is numpy alone

        d, c = self.depth_camera, self.color_camera
        rows, cols = np.mgrid[0:DEPTH_HEIGHT:8, 0:DEPTH_WIDTH:8]
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        objects, images = [], []
        for z_mm in np.linspace(500.0, 4500.0, 9):
            depth = np.zeros((DEPTH_HEIGHT, DEPTH_WIDTH), _F)
            depth[rows, cols] = z_mm
            u, v = self.project(depth)
            u, v = u[rows, cols].astype(np.float64), v[rows, cols].astype(np.float64)
            seen = ((u >= -0.5) & (u < COLOR_WIDTH - 0.5)
                    & (v >= -0.5) & (v < COLOR_HEIGHT - 0.5))
            z = z_mm / 1000.0
            objects.append(np.stack([(cols[seen] - d['cx']) / d['fx'] * z,
                                     (rows[seen] - d['cy']) / d['fy'] * z,
                                     np.full(int(seen.sum()), z)], axis=1))
            images.append(np.stack([u[seen], v[seen]], axis=1))
        points = np.concatenate(objects).astype(np.float32)
        pixels = np.concatenate(images).astype(np.float32)
        guess = np.array([[c['fx'], 0.0, c['cx']], [0.0, c['fy'], c['cy']], [0, 0, 1.0]])
        _, camera, distortion, rvecs, tvecs = cv2.calibrateCamera(
            [points], [pixels], (COLOR_WIDTH, COLOR_HEIGHT), guess, np.zeros(5),
            flags=cv2.CALIB_USE_INTRINSIC_GUESS)
        projected, _ = cv2.projectPoints(points, rvecs[0], tvecs[0], camera, distortion)
        error = np.linalg.norm(projected.reshape(-1, 2) - pixels, axis=1)
        rotation, _ = cv2.Rodrigues(rvecs[0])
        k1, k2, p1, p2, k3 = (float(value) for value in np.ravel(distortion)[:5])
        intrinsics = {'width': COLOR_WIDTH, 'height': COLOR_HEIGHT,
                      'fx': float(camera[0, 0]), 'fy': float(camera[1, 1]),
                      'cx': float(camera[0, 2]), 'cy': float(camera[1, 2]),
                      'k1': k1, 'k2': k2, 'k3': k3, 'p1': p1, 'p2': p2}
        pose = (np.asarray(rotation, np.float64),
                np.asarray(tvecs[0], np.float64).reshape(3), intrinsics)
        return pose, (float(np.sqrt(np.mean(error ** 2))), float(error.max()))
