"""Registered depth and colour and organised point clouds, computed as iai_kinect2 does.

From one capture (depth, colour, IR) and a :py:class:`~.calibration.Calibration`, a
:py:class:`Registration` computes what iai_kinect2's ``kinect2_bridge`` publishes, on the
machine that receives the streams:

- ``depth_rect`` (sd): the depth plus the calibration's depth shift (only where there is a
  reading), undistorted with the IR camera onto the same K, nearest pixel (depths are never
  blended); 0 where there is no reading. ``ir_rect``: the IR image on the same grid.
- registered depth at qhd (960 x 540) and hd (1920 x 1080): what the rectified colour
  camera would see. Every depth pixel is lifted with its depth, moved into the colour
  camera (``rotation``/``translation``) and projected; it covers its footprint there (a
  depth pixel is about 1.4 qhd or 2.8 hd pixels wide: it is splatted over 2 x 2 or
  4 x 4 pixels, with a margin for near surfaces and slants) and where several land on one
  pixel the nearest wins (a z-buffer), so the image is dense and a near object hides what
  is behind it. Values are the depth (z) in the colour camera's frame, millimetres;
  0 = nothing.
- the rectified colour image at qhd or hd, from colour received at 1920 x 1080 or
  960 x 540 (bilinear; area-averaged first when halving).
- ``image_color_rect`` at sd (:py:meth:`Registration.color_to_depth`): the colour seen by
  each pixel of ``depth_rect``, sampled (bilinear) at that pixel's position in the raw
  colour image (the colour camera's distortion applied). **Occlusion rule**: a depth
  pixel is hidden from the colour camera, and black (0), when its depth in the colour
  camera is more than :py:attr:`Registration.occlusion_tolerance` (2 %) beyond the
  nearest depth landing on the same pixel of a coarse z-buffer of the colour camera
  (pixels of about 3.5 x 3.5 hd pixels, a little more than a depth pixel's footprint, so
  that a surface leaves no gap a farther one could show through). Pixels without depth,
  or whose position falls outside the colour image, are black too.
- organised point clouds (:py:meth:`Registration.points`) whose bytes are
  ``sensor_msgs/PointCloud2`` data: x, y, z float32 metres in the camera's optical frame
  (NaN where there is no depth) and, for XYZRGB, an ``rgb`` float32 whose bits are
  ``0x00RRGGBB`` (little-endian bytes B, G, R, 0: what depth_image_proc's
  ``point_cloud_xyzrgb`` writes through ``PointCloud2Iterator`` "r", "g", "b"). See
  :py:func:`cloud_dtype` for the layouts.

With factory calibration values (``calibration.factory`` set), depth is undistorted and
mapped into the colour image with libfreenect2's own model
(:py:meth:`~.calibration.Calibration.factory_model`, :py:mod:`.factory_model`) instead of
``rotation``/``translation``, and sd colour is libfreenect2's registered image (nearest
colour pixel, its occlusion filter), as kinect2_bridge publishes it.

Images are in kinect2_bridge's orientation (not mirrored). Everything is numpy and OpenCV,
float32, with per-pixel tables computed once per camera; a ``Registration`` may be used
from several threads at once.
"""
import collections
import math
import threading
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ['Registration', 'cloud_dtype', 'distort']

_F32 = np.float32
#: Where pixels that must sample nothing are sent (far outside any image).
_NOWHERE = -1e4

#: A single 0 (uint16): what a rect pixel outside the raw depth image takes.
_ZERO = np.zeros(1, np.uint16)

#: Temporaries at least this large (bytes) are kept per thread and reused (hd images):
#: fresh memory that large comes from the system each time, and its page faults cost
#: more than the arithmetic. Smaller ones (sd, qhd) are fresh arrays: the allocator
#: hands back the blocks just freed, still in the cache, which is faster than reuse.
_REUSE_BYTES = 2 << 20
#: Colour rectification maps a Registration keeps, one per (colour frame size, output
#: camera), the least recently used dropped first: a stream's frames have one size and
#: go to qhd and hd, and a size may change once (a server switching hd and qhd).
#: Frames of ever new sizes cost a map each time instead of memory without bound.
RECT_MAPS_KEPT = 4
_local = threading.local()


def _temporary(name: str, shape: Tuple[int, ...], dtype: Any) -> npt.NDArray[Any]:
    """Return an array for a temporary: fresh, or this thread's own if it is large."""
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) * dtype.itemsize < _REUSE_BYTES:
        return np.empty(shape, dtype)
    arrays = getattr(_local, 'arrays', None)
    if arrays is None:
        arrays = _local.arrays = {}
    key = (name, shape, dtype.str)
    array = arrays.get(key)
    if array is None:
        array = arrays[key] = np.empty(shape, dtype)
    return array


def cloud_dtype(rgb: bool, padded: bool = False) -> np.dtype:
    """Return the numpy dtype of one point of a cloud: its ``itemsize`` is the point step.

    XYZ: x, y, z float32 at offsets 0, 4, 8, 16 bytes a point (depth_image_proc's
    ``point_cloud_xyz`` layout). XYZRGB: ``rgb`` (float32) at 12, 16 bytes a point; or,
    *padded*, at 16 with 32 bytes a point: the layout of ROS 2's
    ``setPointCloud2FieldsByString(2, "xyz", "rgb")``, which depth_image_proc's
    ``point_cloud_xyzrgb`` and PCL's PointXYZRGB use. Readers that go by the fields'
    names and offsets (PCL's ``fromROSMsg``, ``read_points``, RViz) take either. The
    bytes of an XYZ point's last 4 and of the padding are 0.
    """
    names = ['x', 'y', 'z']
    offsets = [0, 4, 8]
    if rgb:
        names.append('rgb')
        offsets.append(16 if padded else 12)
    return np.dtype({'names': names, 'formats': ['<f4'] * len(names), 'offsets': offsets,
                     'itemsize': 32 if (rgb and padded) else 16})


def distort(x: npt.NDArray[Any], y: npt.NDArray[Any], d: npt.ArrayLike
            ) -> Tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Apply plumb_bob distortion *d* (k1, k2, p1, p2, k3) to normalised coordinates."""
    k1, k2, p1, p2, k3 = (float(v) for v in np.asarray(d, dtype=np.float64).ravel()[:5])
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xy = x * y
    return (x * radial + 2 * p1 * xy + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy)


def _distort_to_pixels(x: npt.NDArray[np.float32], y: npt.NDArray[np.float32],
                       d: npt.ArrayLike, k: npt.NDArray[np.float64]
                       ) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return the pixels of normalised float32 *x*, *y*: distortion *d*, camera matrix *k*.

    :py:func:`distort` then *k*, in place: *x* and *y* are overwritten and returned.
    """
    k1, k2, p1, p2, k3 = (_F32(v) for v in np.asarray(d, dtype=np.float64).ravel()[:5])
    xx = x * x
    yy = y * y
    xy = x * y
    r2 = xx + yy
    radial = r2 * k3
    radial += k2
    radial *= r2
    radial += k1
    radial *= r2
    radial += _F32(1)
    # x' = x radial + 2 p1 xy + p2 (r2 + 2 x^2); y' = y radial + p1 (r2 + 2 y^2) + 2 p2 xy
    xx *= _F32(2)
    xx += r2
    xx *= p2
    yy *= _F32(2)
    yy += r2
    yy *= p1
    x *= radial
    x += xx
    y *= radial
    y += yy
    xy *= _F32(2)
    x += np.multiply(xy, p1, out=xx)
    y += np.multiply(xy, p2, out=yy)
    x *= _F32(k[0, 0])
    x += _F32(k[0, 2])
    y *= _F32(k[1, 1])
    y += _F32(k[1, 2])
    return x, y


def _remap(image: Any, map1: Any, map2: Any, interpolation: int,
           border: Any = 0) -> npt.NDArray[Any]:
    """Return ``cv2.remap`` of *image*, *border* (black) where the maps point outside it."""
    result: npt.NDArray[Any] = cv2.remap(image, map1, map2, interpolation,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    return result


def _intrinsics(camera: Any) -> Tuple[float, float, float, float]:
    k = np.asarray(camera.K, dtype=np.float64)
    return float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])


def _camera_key(camera: Any) -> Tuple[float, ...]:
    return (int(camera.width), int(camera.height)) + _intrinsics(camera)


def _check_camera(camera: Any, what: str) -> None:
    try:
        width, height = int(camera.width), int(camera.height)
        k = np.asarray(camera.K, dtype=np.float64)
        d = np.asarray(camera.D, dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        raise ValueError('{0} needs a CameraModel (width, height, K, D), got {1}'.format(
            what, type(camera).__name__)) from None
    if width < 1 or height < 1 or k.shape != (3, 3) or not np.all(np.isfinite(k)):
        raise ValueError('{0} needs a CameraModel with a size and a 3 x 3 K'.format(what))
    if np.any(d):
        raise ValueError('{0} needs a rectified camera (zero distortion): use '
                         'Registration.sd/qhd/hd, or CameraModel.rectified()'.format(what))


def _check_image(name: str, image: Any, shape: Tuple[int, int],
                 dtype: Any = np.uint16) -> npt.NDArray[Any]:
    """Return *image* as a C-contiguous array of *dtype* and *shape*, or raise ValueError."""
    if not isinstance(image, np.ndarray) or image.dtype != dtype or image.shape != shape:
        if not isinstance(image, np.ndarray):
            raise ValueError('{0} must be a {1} numpy array of {2} x {3} (height x width), '
                             'got {4}'.format(name, np.dtype(dtype).name, shape[0], shape[1],
                                              type(image).__name__))
        raise ValueError('{0} must be {1} of {2} x {3} (height x width), got {4} {5}'.format(
            name, np.dtype(dtype).name, shape[0], shape[1], image.dtype, image.shape))
    return np.ascontiguousarray(image)


def _check_color(name: str, color: Any) -> npt.NDArray[np.uint8]:
    """Return *color* as (h, w) or (h, w, 3) uint8 (BGR; a 4th channel is dropped)."""
    if not isinstance(color, np.ndarray):
        raise ValueError('{0} must be a (height, width, 3) BGR or (height, width) grey uint8 '
                         'numpy array, got {1}'.format(name, type(color).__name__))
    if (color.dtype != np.uint8 or color.ndim not in (2, 3)
            or (color.ndim == 3 and color.shape[2] not in (3, 4)) or color.size == 0):
        raise ValueError('{0} must be (height, width, 3) BGR or (height, width) grey uint8, '
                         'got {1} {2}'.format(name, color.dtype, color.shape))
    if color.ndim == 3 and color.shape[2] == 4:
        color = color[:, :, :3]
    return color


class _Splat(object):
    """What splatting the sd depth grid into one rectified colour camera needs.

    A rect depth pixel of depth z (mm) lands at ``u = (z * au + tu) / (z * az + tz)``
    (likewise v) in the z-buffer's coordinates: the camera's pixels shifted by ``shift``
    (the buffer's padding, plus half a pixel for an odd footprint so that truncating
    rounds to the nearest pixel; an even footprint covers the pixel truncated to and
    the next ones). Its depth in the colour camera is ``z * az + tz``.
    """

    def __init__(self, camera: Any, directions: npt.NDArray[np.float64],
                 translation_mm: npt.NDArray[np.float64], ir_focal: Tuple[float, float]
                 ) -> None:
        fx, fy, cx, cy = _intrinsics(camera)
        self.intrinsics = (fx, fy, cx, cy)
        self.width, self.height = int(camera.width), int(camera.height)
        # A depth pixel spans fx / ir_fx colour pixels at the same depth; more where the
        # colour camera is nearer (its centre is ~3 cm ahead of the IR camera's) and on
        # slanted surfaces: 20 % margin, so that a surface has no holes.
        ratio = 1.2 * max(fx / ir_focal[0], fy / ir_focal[1])
        self.size = size = max(1, int(math.ceil(ratio - 1e-6)))
        self.pad = pad = size + 1
        self.shift = shift = pad + (0.5 if size % 2 else 0.0)
        self.padded_width = self.width + 2 * pad
        self.padded_height = self.height + 2 * pad
        a, t = directions, translation_mm
        self.au = (fx * a[0] + (cx + shift) * a[2]).astype(_F32)
        self.av = (fy * a[1] + (cy + shift) * a[2]).astype(_F32)
        self.az = a[2].astype(_F32)
        self.tu = _F32(fx * t[0] + (cx + shift) * t[2])
        self.tv = _F32(fy * t[1] + (cy + shift) * t[2])
        self.tz = _F32(t[2])
        self.kernel = np.ones((size, size), np.uint8)


_Projection = Tuple[npt.NDArray[np.int32], npt.NDArray[np.uint16], npt.NDArray[np.float32],
                    npt.NDArray[np.float32], npt.NDArray[np.float32]]


class Registration(object):
    """Registered depth, colour and point clouds for one sensor's calibration.

    *calibration* is a :py:class:`~.calibration.Calibration`; *color_size* the (width,
    height) of the colour frames expected (1920 x 1080, or 960 x 540 when the server
    halves them). Any colour size with the colour camera's aspect is taken; the tables of
    a size are built the first time it is seen, and those of the last few sizes kept
    (:py:data:`RECT_MAPS_KEPT`), so that frames of ever new sizes cost time, not memory.

    ``sd``, ``qhd`` and ``hd`` are the :py:class:`~.calibration.CameraModel` of the
    outputs, rectified (zero distortion): the IR camera's K at 512 x 424, the colour
    camera's K scaled to 960 x 540 (fx, fy, cx, cy halved, as kinect2_bridge) and at
    1920 x 1080. They are what a CameraInfo of each output carries.
    """

    #: A depth pixel whose depth in the colour camera is more than this fraction beyond
    #: the nearest depth landing on its pixel of the occlusion z-buffer is hidden (black)
    #: in :py:meth:`color_to_depth` (the module's occlusion rule).
    occlusion_tolerance = 0.02

    def __init__(self, calibration: Any, color_size: Tuple[int, int] = (1920, 1080)) -> None:
        """Prepare the tables for *calibration* and colour frames of *color_size*."""
        self.calibration = calibration
        ir, color = calibration.depth, calibration.color
        self._ir, self._color = ir, color
        self.sd = ir.rectified()
        self.hd = color.rectified()
        self.qhd = color.scaled(int(color.width) // 2, int(color.height) // 2).rectified()
        self._depth_shape = (int(ir.height), int(ir.width))
        self.color_size = self._check_color_size(color_size)
        factory = getattr(calibration, 'factory_model', None)
        self._factory: Any = factory() if factory is not None else None
        self._lock = threading.Lock()
        self._tables: Dict[Tuple[Any, ...], Any] = {}
        # Colour rectification maps by (frame size, camera): the last RECT_MAPS_KEPT.
        self._rect_tables: 'collections.OrderedDict[Tuple[Any, ...], Any]' = \
            collections.OrderedDict()
        # depth + shift where there is a reading, rounded, saturated to 1..65535 mm.
        lut = np.arange(65536, dtype=np.float64) + float(calibration.depth_shift_mm or 0.0)
        self._shift_lut = np.clip(np.rint(lut), 1, 65535).astype(np.uint16)
        self._shift_lut[0] = 0
        self._rotation = np.asarray(calibration.rotation, dtype=np.float64).reshape(3, 3)
        self._translation_mm = 1000.0 * np.asarray(calibration.translation,
                                                   dtype=np.float64).reshape(3)
        self._undistort = self._undistort_map()
        # The same as flat indices into the raw depth with a 0 appended (for "outside").
        height, width = self._depth_shape
        col = self._undistort[:, :, 0].astype(np.intp)
        row = self._undistort[:, :, 1].astype(np.intp)
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        self._rect_index = np.where(inside, row * width + col, height * width).reshape(-1)
        # Per rect pixel: the direction of its ray in the colour camera (rotation @ ray).
        v, u = np.mgrid[0:height, 0:width].astype(np.float64)
        self._directions = self._rotate_rays(u.ravel(), v.ravel())
        self._ir_focal = _intrinsics(self.sd)[:2]

    # --- tables --------------------------------------------------------------------------

    def _table(self, key: Tuple[Any, ...], build: Any) -> Any:
        """Return the table *key*, built by calling *build* the first time (thread-safe)."""
        table = self._tables.get(key)
        if table is None:
            with self._lock:
                table = self._tables.get(key)
                if table is None:
                    table = self._tables[key] = build()
        return table

    def _undistort_map(self) -> npt.NDArray[np.int16]:
        """Return the (h, w, 2) int16 map: for each rect pixel, its nearest raw pixel."""
        height, width = self._depth_shape
        if self._factory is not None:
            index = np.asarray(self._factory.undistort_index).reshape(height, width)
            xy = np.stack([index % width, index // width], axis=-1)
            xy[index < 0] = -1
            return xy.astype(np.int16)
        k = np.asarray(self._ir.K, dtype=np.float64)
        mapx, mapy = cv2.initUndistortRectifyMap(
            k, np.asarray(self._ir.D, dtype=np.float64), None, k, (width, height),
            cv2.CV_32FC1)
        # nninterpolation rounds to the nearest pixel (fixed-point maps would truncate:
        # a half-pixel shift).
        fixed = cv2.convertMaps(mapx, mapy, cv2.CV_16SC2, nninterpolation=True)[0]
        return np.asarray(fixed, dtype=np.int16)

    def _ir_maps(self) -> Tuple[npt.NDArray[Any], Optional[npt.NDArray[Any]]]:
        if self._factory is not None:
            return self._undistort, None
        height, width = self._depth_shape
        k = np.asarray(self._ir.K, dtype=np.float64)
        map1, map2 = cv2.initUndistortRectifyMap(
            k, np.asarray(self._ir.D, dtype=np.float64), None, k, (width, height),
            cv2.CV_16SC2)
        return map1, map2

    def _rotate_rays(self, u: npt.NDArray[np.float64], v: npt.NDArray[np.float64]
                     ) -> npt.NDArray[np.float64]:
        """Return (3, n): the rays (z = 1) of rect pixels (u, v), rotated into colour."""
        fx, fy, cx, cy = _intrinsics(self.sd)
        rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)])
        return self._rotation @ rays

    def _splat(self, camera: Any) -> _Splat:
        return self._table(('splat',) + _camera_key(camera), lambda: _Splat(
            camera, self._directions, self._translation_mm, self._ir_focal))

    def _occlusion_camera(self) -> Any:
        """Return the colour camera at the z-buffer size of the occlusion test.

        Rectified, scaled so that depth pixels land less than one of its pixels apart:
        splatted to one pixel each they leave no gaps, and a pixel is a little more than
        a depth pixel's footprint (about 3.5 x 3.5 hd pixels).
        """
        scale = 0.8 * self._ir_focal[0] / _intrinsics(self._color)[0]
        width = max(1, int(round(int(self._color.width) * scale)))
        height = max(1, int(round(int(self._color.height) * scale)))
        return self._color.scaled(width, height).rectified()

    def _color_k(self, size: Tuple[int, int]) -> npt.NDArray[np.float64]:
        """Return the colour camera's K for a raw colour frame of *size* (width, height).

        A frame scaled from the full-size one (the server halves colour by averaging 2 x 2
        pixels): pixel centres scale about the image's corner, ``c' = (c + 0.5) s - 0.5``.
        """
        k = np.asarray(self._color.K, dtype=np.float64).copy()
        for axis, scale in enumerate((size[0] / float(self._color.width),
                                      size[1] / float(self._color.height))):
            k[axis, axis] *= scale
            k[axis, 2] = (k[axis, 2] + 0.5) * scale - 0.5
        return k

    def _check_color_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        width, height = int(size[0]), int(size[1])
        cw, ch = int(self._color.width), int(self._color.height)
        if not (1 <= width <= 4 * cw and 1 <= height <= 4 * ch) \
                or abs(width * ch - height * cw) > max(cw, ch):
            raise ValueError('colour frames must be {0} x {1} or a scaled copy (such as '
                             '{2} x {3}), got {4} x {5}'.format(cw, ch, cw // 2, ch // 2,
                                                                width, height))
        return width, height

    def _rect_maps(self, size: Tuple[int, int], camera: Any) -> Tuple[npt.NDArray[Any], ...]:
        """Return the maps rectifying colour frames of *size* onto *camera* (kept: LRU).

        Frame sizes come from the network: only the maps of the last
        :py:data:`RECT_MAPS_KEPT` (size, camera) pairs are kept (12 MiB each at hd).
        """
        key = tuple(size) + _camera_key(camera)
        with self._lock:
            maps = self._rect_tables.get(key)
            if maps is None:
                maps = self._rect_tables[key] = cv2.initUndistortRectifyMap(
                    self._color_k(size), np.asarray(self._color.D, dtype=np.float64), None,
                    np.asarray(camera.K, dtype=np.float64),
                    (int(camera.width), int(camera.height)), cv2.CV_16SC2)
                while len(self._rect_tables) > RECT_MAPS_KEPT:
                    self._rect_tables.popitem(last=False)
            self._rect_tables.move_to_end(key)
        return tuple(maps)

    def _camera_rays(self, camera: Any) -> Tuple[npt.NDArray[np.float32],
                                                 npt.NDArray[np.float32]]:
        def build() -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
            fx, fy, cx, cy = _intrinsics(camera)
            rx = ((np.arange(int(camera.width)) - cx) / fx).astype(_F32)
            ry = ((np.arange(int(camera.height)) - cy) / fy).astype(_F32)[:, None]
            return rx, ry
        return self._table(('rays',) + _camera_key(camera), build)  # type: ignore

    # --- depth and IR --------------------------------------------------------------------

    def depth_rect(self, depth_raw: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
        """Return the undistorted depth: uint16 mm on the IR camera's K, 0 = no reading.

        *depth_raw* is a frame as it arrives (uint16 mm, 424 x 512). The calibration's
        depth shift is added where there is a reading; each rect pixel takes the depth of
        its nearest raw pixel (never a blend).
        """
        depth = _check_image('depth_raw', depth_raw, self._depth_shape)
        rect = np.concatenate((depth.reshape(-1), _ZERO)).take(self._rect_index)
        return self._shift_lut.take(rect).reshape(self._depth_shape)

    def ir_rect(self, ir: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint16]:
        """Return the IR image (uint16, 424 x 512) undistorted on ``depth_rect``'s grid.

        Bilinear, as kinect2_bridge's ``image_ir_rect``; with factory values the nearest
        pixel, as libfreenect2 undistorts (and as ``depth_rect`` is).
        """
        image = _check_image('ir', ir, self._depth_shape)
        map1, map2 = self._table(('ir',), self._ir_maps)
        return _remap(image, map1, map2, cv2.INTER_NEAREST if map2 is None else cv2.INTER_LINEAR)

    def _project(self, depth: npt.NDArray[np.uint16], splat: _Splat) -> _Projection:
        """Project every rect depth pixel into *splat*'s camera.

        Return (index into the padded z-buffer, w, u, v, zc): zc is the depth in the
        colour camera (mm), w ``65536 - zc`` rounded (uint16; 0 where there is no depth or
        zc is out of range) so that the nearest point has the largest w and nothing is 0;
        u, v are z-buffer coordinates.
        """
        flat = depth.reshape(-1)
        z = flat.astype(_F32)
        if self._factory is not None:
            u, v, zc = self._factory_positions(depth, z, splat)
        else:
            zc = z * splat.az
            zc += splat.tz
            den = np.maximum(zc, _F32(1))
            u = z * splat.au
            u += splat.tu
            u /= den
            v = z * splat.av
            v += splat.tv
            v /= den
        # Clamped into the padded buffer: what lands in the padding is cropped away.
        index = np.clip(v, 0, splat.padded_height - 1).astype(np.int32)
        index *= splat.padded_width
        index += np.clip(u, 0, splat.padded_width - 1).astype(np.int32)
        ok = flat != 0
        ok &= zc >= 1
        ok &= zc < 65535
        w = _F32(65536.5) - zc
        w *= ok
        return index, w.astype(np.uint16), u, v, zc

    def _factory_positions(self, depth: npt.NDArray[np.uint16], z: npt.NDArray[np.float32],
                           splat: _Splat) -> Tuple[npt.NDArray[np.float32],
                                                   npt.NDArray[np.float32],
                                                   npt.NDArray[np.float32]]:
        """Return u, v, zc with libfreenect2's model: its colour position, the same z."""
        cu, cv = self._factory.project(depth)
        cu = np.asarray(cu, _F32).reshape(-1)
        cv = np.asarray(cv, _F32).reshape(-1)
        seen = np.isfinite(cu) & np.isfinite(cv)
        cu[~seen] = _NOWHERE
        cv[~seen] = _NOWHERE
        kc = np.asarray(self._color.K, dtype=np.float64)
        if np.any(np.asarray(self._color.D)):
            # Raw colour position -> rectified, through a table of the undistortion (the
            # colour camera is the model's equivalent pinhole, with its distortion).
            table, step, margin = self._table(('undistort colour',), self._raw_to_rect)
            cu += _F32(margin)
            cu *= _F32(1.0 / step)
            cv += _F32(margin)
            cv *= _F32(1.0 / step)
            rect = _remap(table, cu.reshape(self._depth_shape), cv.reshape(self._depth_shape),
                          cv2.INTER_LINEAR, (_NOWHERE, _NOWHERE))
            cu = np.ascontiguousarray(rect[:, :, 0]).reshape(-1)
            cv = np.ascontiguousarray(rect[:, :, 1]).reshape(-1)
            seen &= cu > _NOWHERE / 2
        fx, fy, cx, cy = splat.intrinsics
        sx, sy = fx / kc[0, 0], fy / kc[1, 1]
        u = cu * _F32(sx)
        u += _F32(cx - kc[0, 2] * sx + splat.shift)
        v = cv * _F32(sy)
        v += _F32(cy - kc[1, 2] * sy + splat.shift)
        zc = z * seen
        return u, v, zc

    def _raw_to_rect(self) -> Tuple[npt.NDArray[np.float32], float, float]:
        """Return (table, step, margin): the full-size colour camera's undistortion.

        ``table[j, i]`` is the rectified position (x, y) of the raw position
        ``(i * step - margin, j * step - margin)``; interpolating it (bilinear: the map is
        smooth, the error is far below a thousandth of a pixel) undistorts any position.
        Outside it: :py:data:`_NOWHERE`.
        """
        step, margin = 2.0, 64.0
        width, height = int(self._color.width), int(self._color.height)
        cols = int((width + 2 * margin) / step) + 1
        rows = int((height + 2 * margin) / step) + 1
        j, i = np.mgrid[0:rows, 0:cols].astype(np.float64)
        raw = np.stack([i * step - margin, j * step - margin], axis=-1).reshape(-1, 1, 2)
        k = np.asarray(self._color.K, dtype=np.float64)
        rect = cv2.undistortPoints(raw, k, np.asarray(self._color.D, dtype=np.float64), P=k)
        table = np.asarray(rect, dtype=_F32).reshape(rows, cols, 2)
        return table, step, margin

    def _zbuffer(self, index: npt.NDArray[np.int32], w: npt.NDArray[np.uint16],
                 splat: _Splat) -> npt.NDArray[np.uint16]:
        """Return the padded buffer of the largest w over every footprint (0 = nothing)."""
        shape = (splat.padded_height, splat.padded_width)
        buf = _temporary('zbuffer', shape, np.uint16)
        buf.fill(0)
        np.maximum.at(buf.reshape(-1), index, w)
        if splat.size > 1:
            buf = np.asarray(cv2.dilate(buf, splat.kernel,
                                        dst=_temporary('footprints', shape, np.uint16)))
        return buf

    def register_depth(self, depth_rect: npt.NDArray[np.uint16],
                       camera: Any) -> npt.NDArray[np.uint16]:
        """Return *depth_rect* as the rectified colour *camera* (``qhd`` or ``hd``) sees it.

        uint16 (camera.height, camera.width): the depth (z) in the colour camera's frame,
        mm; 0 where nothing lands. Each depth pixel covers its footprint; where several
        land on one pixel the nearest wins. *camera* may be any rectified scaling of the
        colour camera (``calibration.color.scaled(w, h).rectified()``).
        """
        depth = _check_image('depth_rect', depth_rect, self._depth_shape)
        _check_camera(camera, 'register_depth')
        splat = self._splat(camera)
        index, w, _, _, _ = self._project(depth, splat)
        buf = self._zbuffer(index, w, splat)
        pad = splat.pad
        # w = 65536 - z: in uint16, -w is z, and -0 is 0 (nothing).
        return np.negative(buf[pad:pad + splat.height, pad:pad + splat.width])

    # --- colour --------------------------------------------------------------------------

    def color_rect(self, color: npt.NDArray[np.uint8], camera: Any) -> npt.NDArray[np.uint8]:
        """Return the rectified colour image for *camera* (``qhd`` or ``hd``), bilinear.

        *color*: BGR (h, w, 3) or grey (h, w) uint8, as received (1920 x 1080 or
        960 x 540). The result has *camera*'s size and *color*'s channels. An image at
        least twice *camera*'s size is area-averaged down first (no aliasing).
        """
        color = _check_color('color', color)
        _check_camera(camera, 'color_rect')
        height, width = color.shape[:2]
        self._check_color_size((width, height))
        factor = min(width // int(camera.width), height // int(camera.height))
        if factor >= 2:
            width, height = width // factor, height // factor
            color = np.asarray(cv2.resize(color, (width, height),
                                          interpolation=cv2.INTER_AREA))
        map1, map2 = self._rect_maps((width, height), camera)
        return _remap(color, map1, map2, cv2.INTER_LINEAR)

    def color_to_depth(self, color: npt.NDArray[np.uint8],
                       depth_rect: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint8]:
        """Return the colour registered into the depth camera: sd ``image_color_rect``.

        For every pixel of *depth_rect* (424 x 512), the colour at its position in the raw
        *color* frame (BGR (h, w, 3) or grey (h, w) uint8, 1920 x 1080 or 960 x 540),
        bilinear; black (0) where there is no depth, where the position is outside the
        colour image, or where the pixel is hidden from the colour camera (the module's
        occlusion rule). Same channels as *color*.
        """
        color = _check_color('color', color)
        depth = _check_image('depth_rect', depth_rect, self._depth_shape)
        size = self._check_color_size((color.shape[1], color.shape[0]))
        if self._factory is not None:
            return self._factory_color(color, depth)
        map1, map2 = self._color_positions(depth, size)
        return _remap(color, map1, map2, cv2.INTER_LINEAR)

    def _color_positions(self, depth: npt.NDArray[np.uint16], size: Tuple[int, int]
                         ) -> Tuple[npt.NDArray[np.int16], npt.NDArray[np.uint16]]:
        """Return each rect pixel's raw colour position, as remap's fixed-point maps.

        Positions are in a raw colour frame of *size*; hidden pixels, and those without
        depth, are sent far outside it (to sample the black border).
        """
        splat = self._splat(self._table(('occlusion grid',), self._occlusion_camera))
        index, w, u, v, zc = self._project(depth, splat)
        buf = self._zbuffer(index, w, splat)
        # The nearest depth landing on each point's own qhd pixel (footprints included).
        # Hidden: zc > zmin (1 + tol), zmin = 65536 - wmax the nearest of the point's
        # z-buffer pixel; that is w < wmax (1 + tol) - 65536 tol. At least 1 (so that no
        # depth, w = 0, is hidden).
        tolerance = self.occlusion_tolerance
        least = buf.astype(_F32)
        least *= _F32(1.0 + tolerance)
        least -= _F32(65536.0 * tolerance)
        np.maximum(least, _F32(1), out=least)
        hidden = w < least.reshape(-1).take(index)
        fx, fy, cx, cy = splat.intrinsics
        x = u  # z-buffer coordinates -> normalised coordinates in the colour camera
        x -= _F32(cx + splat.shift)
        x *= _F32(1.0 / fx)
        y = v
        y -= _F32(cy + splat.shift)
        y *= _F32(1.0 / fy)
        mapx, mapy = _distort_to_pixels(x, y, self._color.D, self._color_k(size))
        mapx[hidden] = _NOWHERE
        shape = self._depth_shape
        map1, map2 = cv2.convertMaps(mapx.reshape(shape), mapy.reshape(shape), cv2.CV_16SC2)
        return np.asarray(map1, dtype=np.int16), np.asarray(map2, dtype=np.uint16)

    def _factory_color(self, color: npt.NDArray[np.uint8],
                       depth: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint8]:
        """Return libfreenect2's registered colour (nearest pixel, its occlusion filter)."""
        height, width = color.shape[:2]
        if (width, height) == (int(self._color.width), int(self._color.height)):
            return self._factory.registered_color(color, depth)
        # Another size: the same colour pixels, scaled (nearest).
        index = np.asarray(self._factory.color_index(depth)).reshape(-1)
        cw = int(self._color.width)
        mapx = ((index % cw).astype(_F32) + _F32(0.5)) * _F32(width / cw) - _F32(0.5)
        mapy = ((index // cw).astype(_F32) + _F32(0.5)) * _F32(
            height / float(self._color.height)) - _F32(0.5)
        mapx[index < 0] = _NOWHERE
        shape = self._depth_shape
        return _remap(color, mapx.reshape(shape), mapy.reshape(shape), cv2.INTER_NEAREST)

    # --- geometry of single points -------------------------------------------------------

    def project_to_color(self, uv_rect: npt.ArrayLike, depth_mm: npt.ArrayLike,
                         camera: Any = None) -> Tuple[npt.NDArray[np.float64],
                                                      npt.NDArray[np.float64]]:
        """Map points of the ``depth_rect`` image into the colour camera.

        *uv_rect* (n, 2): positions (x, y) on the ``depth_rect`` grid (sub-pixel allowed);
        *depth_mm* (n,): their depths (as ``depth_rect`` holds them). Return (positions
        (n, 2), depths in the colour camera (n,), mm): positions in the raw, distorted
        colour image at the calibration's size if *camera* is None, else in the
        rectified *camera* (``qhd``, ``hd``). The geometry of :py:meth:`register_depth` and
        :py:meth:`color_to_depth`, in float64 (with factory values: libfreenect2's model
        at the nearest rect pixel).
        """
        uv = np.asarray(uv_rect, dtype=np.float64).reshape(-1, 2)
        z = np.asarray(depth_mm, dtype=np.float64).reshape(-1)
        if z.shape[0] != uv.shape[0]:
            raise ValueError('uv_rect and depth_mm must hold as many points, got {0} and '
                             '{1}'.format(uv.shape[0], z.shape[0]))
        if camera is not None:
            _check_camera(camera, 'project_to_color')
        if self._factory is not None:
            return self._factory_points(uv, z, camera)
        p = self._rotate_rays(uv[:, 0], uv[:, 1]) * z + self._translation_mm[:, None]
        with np.errstate(divide='ignore', invalid='ignore'):
            x, y = p[0] / p[2], p[1] / p[2]
        if camera is None:
            camera = self._color
            x, y = distort(x, y, camera.D)
        fx, fy, cx, cy = _intrinsics(camera)
        return np.stack([fx * x + cx, fy * y + cy], axis=-1), p[2]

    def _factory_points(self, uv: npt.NDArray[np.float64], z: npt.NDArray[np.float64],
                        camera: Any) -> Tuple[npt.NDArray[np.float64],
                                              npt.NDArray[np.float64]]:
        height, width = self._depth_shape
        ij = np.rint(uv).astype(np.int64)
        inside = (ij[:, 0] >= 0) & (ij[:, 0] < width) & (ij[:, 1] >= 0) & (ij[:, 1] < height)
        out = np.full((uv.shape[0], 2), np.nan)
        for n in np.flatnonzero(inside):  # one at a time: pixels may repeat
            image = np.zeros(self._depth_shape, _F32)
            image[ij[n, 1], ij[n, 0]] = z[n]
            cu, cv = self._factory.project(image)
            out[n] = cu[ij[n, 1], ij[n, 0]], cv[ij[n, 1], ij[n, 0]]
        kc = np.asarray(self._color.K, dtype=np.float64)
        d = np.asarray(self._color.D, dtype=np.float64)
        if camera is not None:
            if np.any(d):
                out = cv2.undistortPoints(out.reshape(-1, 1, 2), kc, d, P=kc).reshape(-1, 2)
            fx, fy, cx, cy = _intrinsics(camera)
            out = np.stack([(out[:, 0] - kc[0, 2]) * fx / kc[0, 0] + cx,
                            (out[:, 1] - kc[1, 2]) * fy / kc[1, 1] + cy], axis=-1)
        return out, z.copy()

    # --- point clouds --------------------------------------------------------------------

    def points(self, depth: npt.NDArray[np.uint16], camera: Any,
               color: Optional[npt.NDArray[np.uint8]] = None,
               padded: bool = False) -> npt.NDArray[Any]:
        """Return the organised point cloud of *depth* seen by the rectified *camera*.

        *depth*: uint16 mm at *camera*'s size (``depth_rect`` with :py:attr:`sd`, a
        registered depth with :py:attr:`qhd`/:py:attr:`hd`); *color*, if given, the
        matching image (``color_to_depth`` / ``color_rect``), BGR or grey uint8. Return a
        (height, width) structured array of :py:func:`cloud_dtype` (*padded*: the 32-byte
        XYZRGB layout): x, y, z float32 metres in *camera*'s optical frame, NaN where the
        depth is 0 (depth_image_proc's rule), and ``rgb``. Its bytes are
        ``sensor_msgs/PointCloud2`` data: little-endian, ``point_step`` = itemsize, the
        fields those of its dtype.
        """
        _check_camera(camera, 'points')
        height, width = int(camera.height), int(camera.width)
        depth = _check_image('depth', depth, (height, width))
        if color is not None:
            color = _check_color('color', color)
            if color.shape[:2] != (height, width):
                raise ValueError('color must be {0} x {1} (height x width) like the depth, '
                                 'got {2}'.format(height, width, color.shape))
        rx, ry = self._camera_rays(camera)
        shape = (height, width)
        z = _METRES.take(depth, out=_temporary('z', shape, _F32), mode='clip')
        planes = [np.multiply(z, rx, out=_temporary('x', shape, _F32)),
                  np.multiply(z, ry, out=_temporary('y', shape, _F32)), z]
        zeros = _temporary('zeros', shape, _F32)
        if color is None or padded:
            zeros.fill(0)
        if color is None:
            planes.append(zeros)
        else:
            bgrx = np.asarray(cv2.cvtColor(
                color, cv2.COLOR_GRAY2BGRA if color.ndim == 2 else cv2.COLOR_BGR2BGRA,
                dst=_temporary('bgrx', shape + (4,), np.uint8)))
            packed = bgrx.view(np.uint32)[:, :, 0]
            packed &= np.uint32(0x00ffffff)  # 0x00RRGGBB: depth_image_proc leaves byte 3 0
            if padded:
                planes.append(zeros)
            planes.append(packed.view(_F32))
            if padded:
                planes.extend([zeros] * 3)
        cloud = cv2.merge(planes)
        return cloud.view(cloud_dtype(color is not None, padded)).reshape(height, width)


#: uint16 millimetres -> float32 metres, NaN for 0 (no reading).
_METRES = (np.arange(65536, dtype=np.float64) * 0.001).astype(_F32)
_METRES[0] = np.nan
