"""The calibration of a Kinect v2: its two cameras, the pose between them, the depth shift.

ROS-free. A :py:class:`Calibration` holds the depth (IR) camera and the colour camera as
:py:class:`CameraModel` objects (pinhole K and plumb_bob distortion D), the rigid
transform taking IR-camera points to colour-camera points, and iai_kinect2's depth
shift. It comes from one of:

- a device's ``me`` record (:py:meth:`Calibration.from_device_record`): the factory
  values libfreenect2 reads from the sensor, including, for the colour camera,
  libfreenect2's own depth-to-colour mapping terms (then ``factory`` is set and
  :py:mod:`.factory_model` is the registration model);
- iai_kinect2's per-sensor calibration folder (:py:meth:`Calibration.from_iai_kinect2`:
  ``calib_color.yaml``, ``calib_ir.yaml``, ``calib_pose.yaml``, ``calib_depth.yaml``);
- camera_info_manager's YAML for the depth camera alone
  (:py:func:`read_camera_info_yaml`, then :py:meth:`Calibration.with_depth_camera`);
- the built-in default (:py:meth:`Calibration.default`: one real sensor's calibration,
  :py:data:`~streamkinect2.device.MOCK_CALIBRATION`).

Every value is checked: a file that is not a usable calibration raises one
:py:class:`CalibrationError` naming the file and the field at fault; a device record that
is not raises nothing, its broken parts give way to the defaults and
:py:attr:`Calibration.warnings` says why. Files are read through a small strict reader
of the YAML that OpenCV's ``FileStorage`` and ROS's camera_calibration_parsers write
(not a general YAML parser; no dependency beyond numpy), at most
:py:data:`MAX_FILE_BYTES` (1 MiB) of a file.

The checks of an intrinsics record (:py:func:`intrinsics_values`,
:py:func:`intrinsics_problems`) live here too: the ROS client node's CameraInfo uses them.
"""
from dataclasses import dataclass, field, replace
import json
import logging
import math
import numbers
import os
import re
import stat
from typing import Any, Dict, List, Optional, Tuple, Union
import urllib.parse

import numpy as np
import numpy.typing as npt

from .device import (COLOR_HEIGHT, COLOR_WIDTH, DEPTH_HEIGHT, DEPTH_WIDTH, INTRINSIC_KEYS,
                     KINECT2_DEFAULT_DEPTH_CAMERA, MOCK_CALIBRATION)
from .factory_model import mirror_intrinsics
from .freenect2_device import COLOR_MAPPING_KEYS

__all__ = ['CalibrationError', 'CameraModel', 'Calibration', 'read_camera_info_yaml',
           'intrinsics_values', 'intrinsics_problems', 'quaternion_from_rotation',
           'IAI_KINECT2_FILES', 'MAX_FILE_BYTES', 'MAX_IMAGE_SIDE', 'MAX_TRANSLATION_M',
           'MAX_DEPTH_SHIFT_MM', 'FACTORY_KEYS']

log = logging.getLogger(__name__)

Pose = Tuple[Tuple[float, float, float], Tuple[float, float, float, float]]
PathLike = Union[str, 'os.PathLike[str]']

#: The files of iai_kinect2's per-sensor calibration folder (kinect2_bridge's names).
IAI_KINECT2_FILES = ('calib_color.yaml', 'calib_ir.yaml', 'calib_pose.yaml',
                     'calib_depth.yaml')
#: Largest calibration file read, in bytes (a real one is about 1 KiB): a larger file
#: is refused without reading it all.
MAX_FILE_BYTES = 1 << 20
#: Largest image side a camera model may have, in pixels (Kinect v2 colour: 1920).
MAX_IMAGE_SIDE = 16384
#: Largest distance between the IR and colour cameras accepted, in metres (a Kinect v2's
#: are about 5 cm apart: a larger value is a file in millimetres, or not this sensor's).
MAX_TRANSLATION_M = 1.0
#: Largest depth shift accepted, in millimetres (iai_kinect2's are some tens of mm).
MAX_DEPTH_SHIFT_MM = 1000.0
#: The keys of :py:attr:`Calibration.factory`: the colour camera's fx, fy, cx, cy and
#: libfreenect2's mapping terms (``ColorCameraParams``).
FACTORY_KEYS: Tuple[str, ...] = ('fx', 'fy', 'cx', 'cy') + COLOR_MAPPING_KEYS
#: Largest magnitude accepted for one of libfreenect2's mapping terms (real ones: under
#: 1000 for shift_d, well under 1 for the polynomial coefficients).
_MAX_FACTORY_TERM = 1e6
#: How far R Rᵀ may be from the identity (largest element) for R to be a rotation.
_ROTATION_TOLERANCE = 1e-3
#: Most items one YAML sequence may have (the largest used: a 4 x 4 matrix; OpenCV's
#: longest distortion vector has 14).
_MAX_ITEMS = 1024
#: Deepest nesting of YAML blocks read (the files use 2).
_MAX_DEPTH = 8


class CalibrationError(ValueError):
    """A calibration that cannot be used; the message names the file and the field."""


# --- Intrinsics records (a device's ``depth_camera``/``color_camera``) ----------------

#: Focal lengths accepted, in pixels, as a multiple of the image side along the same
#: axis: from 1/100 (a field of view of almost 180 degrees) to 100 (about 0.6 degrees).
_FOCAL_PER_SIDE = (0.01, 100.0)
#: Largest magnitude accepted for a distortion coefficient (real lenses: well under 10).
_MAX_DISTORTION = 100.0
_CORE_KEYS = ('fx', 'fy', 'cx', 'cy')
_DISTORTION_KEYS = tuple(key for key in INTRINSIC_KEYS if key not in _CORE_KEYS)
#: plumb_bob's order of the distortion coefficients (OpenCV's, and CameraInfo's D).
_PLUMB_BOB = ('k1', 'k2', 'p1', 'p2', 'k3')
_NO_DISTORTION: Dict[str, Any] = dict.fromkeys(_DISTORTION_KEYS, 0.0)


def _finite(value: object) -> Optional[float]:
    """Return *value* as a finite float, or None if it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        value = float(value)
    except (OverflowError, ValueError, TypeError):  # a 400-digit int, an odd Real
        return None
    return value if math.isfinite(value) else None


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + '...'


def _range_problems(fx: float, fy: float, cx: float, cy: float, width: int,
                    height: int) -> List[str]:
    """Return why fx, fy, cx, cy (finite floats) are not a camera for the image."""
    problems = []
    low, high = _FOCAL_PER_SIDE
    for key, value, size in (('fx', fx, width), ('fy', fy, height)):
        if not low * size <= value <= high * size:
            problems.append('{0}: {1} px is not a focal length for a {2}x{3} image ({4:g} '
                            'to {5:g} px)'.format(key, _describe(value), width, height,
                                                  low * size, high * size))
    for key, value, size in (('cx', cx, width), ('cy', cy, height)):
        if not 0.0 <= value <= size:
            problems.append('{0}: {1} px is not a principal point inside a {2}x{3} '
                            'image'.format(key, _describe(value), width, height))
    return problems


def intrinsics_values(intrinsics: object, width: int, height: int,
                      defaults: Dict[str, Any]) -> Tuple[Optional[Dict[str, float]],
                                                         List[str]]:
    """Return ``(values, problems)``: the usable intrinsics of a record for an image.

    *intrinsics* is a device's camera record (fx, fy, cx, cy, optionally k1, k2, k3, p1,
    p2 and the ``width``/``height`` it was calibrated for); *width* x *height* the image
    it must describe. ``values`` maps the keys of
    :py:data:`~streamkinect2.device.INTRINSIC_KEYS` to finite floats, scaled to the image
    (fx and cx by the ratio of the widths, fy and cy by that of the heights), or is None
    when the record is not a usable camera; ``problems`` then says why, one line per
    fault, each starting with the key at fault (``'fx: inf is not a finite number'``).
    Distortion coefficients the record leaves out are those of *defaults*. The rules are
    those of :py:func:`intrinsics_problems`.
    """
    if not isinstance(intrinsics, dict):
        return None, ['record: a camera record must be a JSON object, got {0}'.format(
            _describe(intrinsics))]
    record: Dict[Any, Any] = intrinsics
    problems = []
    scale = {}
    for size_key, size in (('width', width), ('height', height)):
        given = record.get(size_key, size)
        given_float = _finite(given)
        if given_float is None or given_float != int(given_float) or given_float < 1:
            problems.append('{0}: {1} is not a positive whole number of pixels'.format(
                size_key, _describe(given)))
        else:
            scale[size_key] = size / given_float
    values = {}
    for key in _CORE_KEYS:
        value = _finite(record.get(key))
        if key not in record:
            problems.append('{0}: missing'.format(key))
        elif value is None:
            problems.append('{0}: {1} is not a finite number'.format(key, _describe(record[key])))
        else:
            values[key] = value
    for key in _DISTORTION_KEYS:
        value = _finite(record.get(key, defaults[key]))
        if value is None or abs(value) > _MAX_DISTORTION:
            problems.append('{0}: {1} is not a distortion coefficient (finite, at most {2} '
                            'in magnitude)'.format(key, _describe(record[key]),
                                                   _MAX_DISTORTION))
        else:
            values[key] = value
    if problems:
        return None, problems
    # A record for another image size (a scaled image) is scaled to this one.
    values['fx'] *= scale['width']
    values['cx'] *= scale['width']
    values['fy'] *= scale['height']
    values['cy'] *= scale['height']
    problems = _range_problems(values['fx'], values['fy'], values['cx'], values['cy'],
                               width, height)
    return (None if problems else values), problems


def intrinsics_problems(intrinsics: object, width: int, height: int,
                        defaults: Dict[str, Any] = KINECT2_DEFAULT_DEPTH_CAMERA) -> List[str]:
    """Return why *intrinsics* are not used for a *width* x *height* image: a list of str.

    Empty when the record is used (None, asking for the defaults, is no problem).
    Otherwise one line per fault, each starting with the key at fault
    (``'fx: inf is not a finite number'``); the caller can log them once.

    A record is a usable camera when fx, fy, cx and cy are finite numbers (not bools,
    not strings), the distortion coefficients present are finite and at most 100 in
    magnitude, ``width``/``height`` (if present) are positive whole numbers, and, after
    scaling to the image size, fx and fy lie between 1/100 and 100 times the image side
    along their axis and the principal point (cx, cy) lies inside the image.
    *defaults* gives the distortion coefficients a record leaves out. Raises ValueError
    for an empty image size.
    """
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError('image size {0}x{1} is empty'.format(width, height))
    if intrinsics is None:
        return []
    return intrinsics_values(intrinsics, width, height, defaults)[1]


# --- Camera model ----------------------------------------------------------------------

def _model_problems(width: object, height: object, k: npt.NDArray[Any],
                    d: npt.NDArray[Any]) -> List[Tuple[str, str]]:
    """Return ``[(part, problem)]``: why this is not a camera; part: width/height/K/D."""
    problems: List[Tuple[str, str]] = []
    sizes = []
    for name, size in (('width', width), ('height', height)):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) \
                or not 1 <= int(size) <= MAX_IMAGE_SIDE:
            problems.append((name, '{0} is not a whole number of pixels from 1 to {1}'.format(
                _describe(size), MAX_IMAGE_SIDE)))
        else:
            sizes.append(int(size))
    if k.shape != (3, 3):
        problems.append(('K', 'expected a 3 x 3 matrix, got shape {0}'.format(k.shape)))
    elif not np.all(np.isfinite(k)):
        problems.append(('K', 'not every element is a finite number'))
    else:
        if k[0, 1] != 0.0:
            problems.append(('K', 'skew K[0][1] = {0!r}: only cameras without skew are '
                                  'supported'.format(float(k[0, 1]))))
        if (k[1, 0], k[2, 0], k[2, 1], k[2, 2]) != (0.0, 0.0, 0.0, 1.0):
            problems.append(('K', 'not a camera matrix: its last row must be [0, 0, 1] and '
                                  'K[1][0] 0, got {0}'.format(_describe(k.tolist()))))
        if len(sizes) == 2:
            problems.extend(('K', problem) for problem in _range_problems(
                float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), *sizes))
    if d.shape != (5,):
        problems.append(('D', 'expected 5 plumb_bob coefficients (k1, k2, p1, p2, k3), got '
                              'shape {0}'.format(d.shape)))
    else:
        for name, value in zip(_PLUMB_BOB, d.tolist()):
            if not (math.isfinite(value) and abs(value) <= _MAX_DISTORTION):
                problems.append(('D', '{0}: {1} is not a distortion coefficient (finite, at '
                                      'most {2} in magnitude)'.format(name, _describe(value),
                                                                      _MAX_DISTORTION)))
    return problems


def _frozen(values: Any, shape: Optional[Tuple[int, ...]] = None) -> npt.NDArray[np.float64]:
    """Return *values* as a read-only float64 array of its own (NaN where not numbers)."""
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        array = np.full(shape or (0,), np.nan)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class CameraModel(object):
    """A pinhole camera with plumb_bob distortion, for a *width* x *height* image.

    ``K`` is the 3 x 3 camera matrix (fx, fy, cx, cy in pixels; no skew), ``D`` the five
    distortion coefficients in OpenCV's (and CameraInfo's) order k1, k2, p1, p2, k3.
    Both are read-only float64 arrays of the model's own. Construction checks the model
    (:py:class:`CalibrationError` names the part at fault): sizes from 1 to
    :py:data:`MAX_IMAGE_SIDE`, fx and fy from 1/100 to 100 times the image side, the
    principal point inside the image, distortion finite and at most 100 in magnitude.
    """

    width: int
    height: int
    K: npt.NDArray[np.float64]
    D: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        """Check the model; keep read-only float64 copies of K and D."""
        k = _frozen(self.K, (3, 3))
        d = _frozen(self.D)
        problems = _model_problems(self.width, self.height, k, d)
        if problems:
            raise CalibrationError('; '.join('{0}: {1}'.format(*problem)
                                             for problem in problems))
        object.__setattr__(self, 'width', int(self.width))
        object.__setattr__(self, 'height', int(self.height))
        object.__setattr__(self, 'K', k)
        object.__setattr__(self, 'D', d)

    def __eq__(self, other: object) -> bool:
        """Tell whether *other* is the same camera (same size, K and D exactly)."""
        if not isinstance(other, CameraModel):
            return NotImplemented
        return (self.width, self.height) == (other.width, other.height) and \
            np.array_equal(self.K, other.K) and np.array_equal(self.D, other.D)

    __hash__ = None  # type: ignore[assignment]

    @property
    def fx(self) -> float:
        """Focal length along x, pixels."""
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        """Focal length along y, pixels."""
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        """Principal point x, pixels."""
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        """Principal point y, pixels."""
        return float(self.K[1, 2])

    @property
    def size(self) -> Tuple[int, int]:
        """Return ``(width, height)``, as OpenCV takes image sizes."""
        return self.width, self.height

    @classmethod
    def from_values(cls, width: int, height: int, fx: float, fy: float, cx: float,
                    cy: float, d: Any = (0.0, 0.0, 0.0, 0.0, 0.0)) -> 'CameraModel':
        """Return the model of a *width* x *height* camera with these fx, fy, cx, cy, D."""
        k = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
        return cls(width, height, _frozen(k, (3, 3)), _frozen(d))

    @classmethod
    def from_intrinsics(cls, record: object, width: Optional[int] = None,
                        height: Optional[int] = None,
                        defaults: Optional[Dict[str, Any]] = None) -> 'CameraModel':
        """Return the model of an intrinsics record (a device's ``depth_camera``).

        *record* has fx, fy, cx, cy, optionally the distortion coefficients (those left
        out are *defaults*', or 0 without *defaults*) and ``width``/``height``. The model
        is for *width* x *height* (default: the record's own size, then required); a
        record for another size is scaled to it as :py:func:`intrinsics_values` does.
        Raises :py:class:`CalibrationError` naming every key at fault.
        """
        sizes = []
        for key, given in (('width', width), ('height', height)):
            if given is None:
                given = record.get(key) if isinstance(record, dict) else None
                if given is None:
                    raise CalibrationError('{0}: missing (the image size the record is '
                                           'for)'.format(key))
            value = _finite(given)
            if value is None or value != int(value) or not 1 <= value <= MAX_IMAGE_SIDE:
                raise CalibrationError('{0}: {1} is not a whole number of pixels from 1 to '
                                       '{2}'.format(key, _describe(given), MAX_IMAGE_SIDE))
            sizes.append(int(value))
        values, problems = intrinsics_values(record, sizes[0], sizes[1],
                                             _NO_DISTORTION if defaults is None else defaults)
        if values is None:
            raise CalibrationError('; '.join(problems))
        return cls.from_values(sizes[0], sizes[1], values['fx'], values['fy'],
                               values['cx'], values['cy'],
                               [values[key] for key in _PLUMB_BOB])

    def intrinsics(self) -> Dict[str, Any]:
        """Return the model as an intrinsics record: ``width``, ``height`` and INTRINSIC_KEYS."""
        record: Dict[str, Any] = {'width': self.width, 'height': self.height,
                                  'fx': self.fx, 'fy': self.fy, 'cx': self.cx, 'cy': self.cy}
        record.update(zip(_PLUMB_BOB, self.D.tolist()))
        return {key: record[key] for key in ('width', 'height') + INTRINSIC_KEYS}

    def scaled(self, width: int, height: int) -> 'CameraModel':
        """Return the model of this camera's image resized to *width* x *height*.

        fx and cx are multiplied by the ratio of the widths, fy and cy by that of the
        heights, as kinect2_bridge does for qhd (its 960 x 540 camera is the 1920 x 1080
        one with fx, fy, cx, cy halved); D is the same.
        """
        sx, sy = width / self.width, height / self.height
        return CameraModel.from_values(width, height, self.fx * sx, self.fy * sy,
                                       self.cx * sx, self.cy * sy, self.D)

    def rectified(self) -> 'CameraModel':
        """Return the model of this camera's undistorted image: the same K, D zero."""
        return CameraModel(self.width, self.height, self.K, np.zeros(5))

    @property
    def is_rectified(self) -> bool:
        """Tell whether the model has no distortion."""
        return not np.any(self.D)

    def camera_info_fields(self) -> Dict[str, Any]:
        """Return what a ``sensor_msgs/CameraInfo`` of this camera's image holds (a dict).

        ``width``, ``height``, ``distortion_model`` ``'plumb_bob'``, ``d`` (5), ``k`` (9),
        ``r`` (the identity, 9) and ``p`` (12: ``[K | 0]``), every number a Python float:
        the keys of ``streamkinect2_ros.conversions.camera_info_fields``. ``d`` is zeros
        for a :py:meth:`rectified` model.
        """
        k = self.K.tolist()
        return {
            'width': self.width,
            'height': self.height,
            'distortion_model': 'plumb_bob',
            'd': [float(value) for value in self.D.tolist()],
            'k': [float(value) for row in k for value in row],
            'r': [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            'p': [float(value) for row in k for value in row + [0.0]],
        }


# --- Poses -----------------------------------------------------------------------------

def _pose_problems(rotation: npt.NDArray[Any],
                   translation: npt.NDArray[Any]) -> List[Tuple[str, str]]:
    with np.errstate(over='ignore', invalid='ignore'):  # huge values: inf, refused
        return _pose_problems_of(rotation, translation)


def _pose_problems_of(rotation: npt.NDArray[Any],
                      translation: npt.NDArray[Any]) -> List[Tuple[str, str]]:
    problems: List[Tuple[str, str]] = []
    if rotation.shape != (3, 3):
        problems.append(('rotation', 'expected a 3 x 3 matrix, got shape {0}'.format(
            rotation.shape)))
    elif not np.all(np.isfinite(rotation)):
        problems.append(('rotation', 'not every element is a finite number'))
    else:
        error = float(np.max(np.abs(rotation @ rotation.T - np.eye(3))))
        if not error <= _ROTATION_TOLERANCE:
            problems.append(('rotation', 'not a rotation: R Rt differs from the identity by '
                                         '{0:.3g} (at most {1:g})'.format(
                                             error, _ROTATION_TOLERANCE)))
        elif np.linalg.det(rotation) < 0:
            problems.append(('rotation', 'a reflection (determinant -1), not a rotation'))
    if translation.shape != (3,):
        problems.append(('translation', 'expected 3 numbers (x, y, z), got shape {0}'.format(
            translation.shape)))
    elif not np.all(np.isfinite(translation)):
        problems.append(('translation', 'not every element is a finite number'))
    else:
        distance = float(np.linalg.norm(translation))
        if distance > MAX_TRANSLATION_M:
            problems.append(('translation', '{0:.4g} m is not the distance between a Kinect '
                                            "v2's cameras (about 0.05 m, at most {1:g}): "
                                            'metres expected'.format(
                                                distance, MAX_TRANSLATION_M)))
    return problems


def quaternion_from_rotation(rotation: Any) -> Tuple[float, float, float, float]:
    """Return the unit quaternion ``(x, y, z, w)``, w >= 0, of a 3 x 3 rotation matrix.

    The matrix is first made exactly orthonormal (the nearest rotation, by SVD), so a
    rotation stored with rounded digits still gives a unit quaternion.
    """
    matrix = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
    u, _, vt = np.linalg.svd(matrix)
    m = u @ vt
    if np.linalg.det(m) < 0:
        raise ValueError('a reflection is not a rotation')
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s,
             0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s,
             (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s,
             (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s,
             (m[1, 0] - m[0, 1]) / s]
    quat = np.array(q) / np.linalg.norm(q)
    if quat[3] < 0:
        quat = -quat
    x, y, z, w = (float(v) for v in quat)
    return x, y, z, w


# --- Calibration -----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Calibration(object):
    """The calibration of one Kinect v2.

    ``depth``: the IR (depth) camera, 512 x 424, distorted (with its D). ``color``: the
    colour camera, 1920 x 1080. Both describe the images as this library has them
    (kinect2_bridge's orientation, not libfreenect2's mirrored one). ``rotation``
    (3 x 3) and ``translation`` (3, metres) take IR-camera points to colour-camera
    points: ``p_color = rotation @ p_ir + translation`` (iai_kinect2's
    ``calib_pose.yaml``). ``depth_shift_mm`` is added to every depth (iai_kinect2's
    ``calib_depth.yaml``). ``source`` says where it came from (``'default'``,
    ``'device'``, ``'factory'``, ``'iai_kinect2:<folder>'``, ...); ``warnings``, what was
    not used and why (one line each; the classmethods that make them also log each
    once, as a warning of the ``streamkinect2.calibration`` logger).

    ``factory``, when set, holds libfreenect2's colour camera parameters
    (:py:data:`FACTORY_KEYS`) and ``factory_depth`` its IR camera parameters
    (:py:data:`~streamkinect2.device.INTRINSIC_KEYS`), both exactly as libfreenect2
    reports them (on its mirrored images): registration then uses libfreenect2's own
    model, :py:meth:`factory_model`, and rotation/translation are the pinhole pose that
    best reproduces it (for TF and point clouds); ``depth`` and ``color`` are that
    model's cameras in this library's orientation. Both or neither are set.

    Construction checks every part (:py:class:`CalibrationError` names it): rotation a
    proper rotation (R Rt within 1e-3 of the identity), translation at most
    :py:data:`MAX_TRANSLATION_M`, depth shift finite and at most
    :py:data:`MAX_DEPTH_SHIFT_MM` in magnitude, factory values finite.
    """

    depth: CameraModel
    color: CameraModel
    rotation: npt.NDArray[np.float64]
    translation: npt.NDArray[np.float64]
    depth_shift_mm: float = 0.0
    factory: Optional[Dict[str, float]] = None
    source: str = 'default'
    warnings: Tuple[str, ...] = field(default=())
    factory_depth: Optional[Dict[str, float]] = None

    def __post_init__(self) -> None:
        """Check every part; keep read-only copies of rotation and translation."""
        problems: List[Tuple[str, str]] = []
        for name in ('depth', 'color'):
            if not isinstance(getattr(self, name), CameraModel):
                problems.append((name, 'expected a CameraModel, got {0}'.format(
                    type(getattr(self, name)).__name__)))
        rotation = _frozen(self.rotation, (3, 3))
        translation = _frozen(self.translation)
        if translation.shape in ((3, 1), (1, 3)):
            translation = _frozen(translation.reshape(3))
        problems.extend(_pose_problems(rotation, translation))
        shift = _finite(self.depth_shift_mm)
        if shift is None or abs(shift) > MAX_DEPTH_SHIFT_MM:
            problems.append(('depth_shift_mm', '{0} is not a depth shift (finite, at most {1:g} '
                                               'mm in magnitude)'.format(
                                                   _describe(self.depth_shift_mm),
                                                   MAX_DEPTH_SHIFT_MM)))
        factory = factory_depth = None
        if (self.factory is None) != (self.factory_depth is None):
            problems.append(('factory', 'factory and factory_depth go together: give both '
                                        'or neither'))
        elif self.factory is not None:
            factory, factory_problems = _factory_terms(self.factory)
            problems.extend(('factory', problem) for problem in factory_problems)
            factory_depth, depth_problems = _factory_depth(self.factory_depth)
            problems.extend(('factory_depth', problem) for problem in depth_problems)
        if problems:
            raise CalibrationError('; '.join('{0}: {1}'.format(*problem)
                                             for problem in problems))
        object.__setattr__(self, 'rotation', rotation)
        object.__setattr__(self, 'translation', translation)
        object.__setattr__(self, 'depth_shift_mm', shift)
        object.__setattr__(self, 'factory', factory)
        object.__setattr__(self, 'factory_depth', factory_depth)
        object.__setattr__(self, 'source', str(self.source))
        object.__setattr__(self, 'warnings', tuple(str(w) for w in self.warnings))

    def __eq__(self, other: object) -> bool:
        """Tell whether *other* is the same calibration (``warnings`` aside)."""
        if not isinstance(other, Calibration):
            return NotImplemented
        return (self.depth == other.depth and self.color == other.color
                and np.array_equal(self.rotation, other.rotation)
                and np.array_equal(self.translation, other.translation)
                and self.depth_shift_mm == other.depth_shift_mm
                and self.factory == other.factory
                and self.factory_depth == other.factory_depth and self.source == other.source)

    __hash__ = None  # type: ignore[assignment]

    def factory_model(self) -> Any:
        """Return libfreenect2's model of this sensor (a ``Freenect2Model``), or None.

        None unless ``factory`` is set. Built from ``factory_depth`` and ``factory``
        the first time (it precomputes per-pixel maps), then the same object: share it.
        Raises ValueError if :py:mod:`.factory_model` refuses the values.
        """
        if self.factory is None or self.factory_depth is None:
            return None
        model = self.__dict__.get('_factory_model')
        if model is None:
            from .factory_model import Freenect2Model
            model = Freenect2Model(self.factory_depth, self.factory)
            self.__dict__['_factory_model'] = model
        return model

    @classmethod
    def default(cls) -> 'Calibration':
        """Return the default calibration: :py:data:`~streamkinect2.device.MOCK_CALIBRATION`.

        That of one real sensor (iai_kinect2's calibration of serial 504476242542), the
        one the mock reports; every unit differs a little.
        """
        pose = MOCK_CALIBRATION['ir_to_color']
        return cls(depth=CameraModel.from_intrinsics(MOCK_CALIBRATION['depth_camera']),
                   color=CameraModel.from_intrinsics(MOCK_CALIBRATION['color_camera']),
                   rotation=np.reshape(pose['rotation'], (3, 3)),
                   translation=np.asarray(pose['translation']),
                   depth_shift_mm=MOCK_CALIBRATION['depth_shift_mm'], source='default')

    @classmethod
    def from_device_record(cls, record: object) -> 'Calibration':
        """Return the calibration a device reports in its ``me`` record.

        The record's ``depth_camera`` and ``color_camera`` (intrinsics, see
        :py:meth:`CameraModel.from_intrinsics`; a record for another image size is
        scaled to 512 x 424 and 1920 x 1080), ``ir_to_color`` (``rotation``, 9 numbers
        row-major, ``translation``, 3, metres) and ``depth_shift_mm`` if it has one.

        A ``color_camera`` with libfreenect2's mapping terms (``shift_d``, ``shift_m``,
        ``mx_*``, ``my_*``) is a libfreenect2 sensor's factory calibration: both records
        describe the un-mirrored frames (the backend takes libfreenect2's ``cx`` and
        ``p2`` over, :py:func:`~.factory_model.mirror_intrinsics`), the mapping terms are
        libfreenect2's own; ``factory`` and ``factory_depth`` hold libfreenect2's values
        (mirrored back); ``depth`` is the IR camera of the frames, ``color`` and
        rotation/translation the pinhole camera and pose that best reproduce libfreenect2's
        model (:py:class:`~.factory_model.Freenect2Model` ``equivalent_color_camera()``,
        ``equivalent_pose()``)
        (``ir_to_color`` is not used). ``source`` is ``'factory'`` then, ``'device'``
        otherwise.

        Never raises: a part that is missing is taken from :py:meth:`default` (and the
        depth shift is 0; a colour camera without ``ir_to_color`` is noted in
        ``warnings``); a part that is present but not usable too, with a line in
        ``warnings`` naming the key and the fault. Each warning is also logged, once.
        """
        fallback = cls.default()
        warnings: List[str] = []
        if not isinstance(record, dict):
            warnings.append('device record: {0} is not a JSON object: using the default '
                            'calibration'.format(_describe(record)))
            record = {}
        assert isinstance(record, dict)
        depth = fallback.depth
        depth_ok = False
        depth_record = record.get('depth_camera')
        if depth_record is not None:
            try:
                depth = CameraModel.from_intrinsics(
                    depth_record, DEPTH_WIDTH, DEPTH_HEIGHT, MOCK_CALIBRATION['depth_camera'])
                depth_ok = True
            except CalibrationError as err:
                warnings.append('depth_camera: {0}: using the default depth camera'.format(err))
        color = fallback.color
        color_record = record.get('color_camera')
        if color_record is not None:
            try:
                color = CameraModel.from_intrinsics(
                    color_record, COLOR_WIDTH, COLOR_HEIGHT, MOCK_CALIBRATION['color_camera'])
            except CalibrationError as err:
                warnings.append('color_camera: {0}: using the default colour camera'.format(
                    err))
                color_record = None
        if color_record is not None:
            factory = _factory_calibration(depth_record if depth_ok else None, color_record,
                                           warnings)
            if factory is not None:
                shift = _shift_of_record(record, warnings)
                _log_warnings('device calibration', warnings)
                return cls(depth=factory[0], color=factory[1], rotation=factory[2],
                           translation=factory[3], depth_shift_mm=shift,
                           factory=factory[4], factory_depth=factory[5], source='factory',
                           warnings=tuple(warnings))._caching(factory[6])
        rotation, translation = fallback.rotation, fallback.translation
        if 'ir_to_color' in record:
            pose = _pose_from_record(record['ir_to_color'])
            if isinstance(pose, str):
                warnings.append('ir_to_color: {0}: using the default pose'.format(pose))
            else:
                rotation, translation = pose
        elif color_record is not None:
            warnings.append('ir_to_color: missing: using the default pose between the '
                            'cameras')
        shift = _shift_of_record(record, warnings)
        _log_warnings('device calibration', warnings)
        return cls(depth=depth, color=color, rotation=rotation, translation=translation,
                   depth_shift_mm=shift, source='device', warnings=tuple(warnings))

    def _caching(self, model: Any) -> 'Calibration':
        self.__dict__['_factory_model'] = model
        return self

    @classmethod
    def from_iai_kinect2(cls, directory: PathLike) -> 'Calibration':
        """Return the calibration in iai_kinect2's per-sensor folder *directory*.

        ``calib_color.yaml`` and ``calib_ir.yaml`` (``cameraMatrix``,
        ``distortionCoefficients``: the colour camera for 1920 x 1080, the IR camera for
        512 x 424), ``calib_pose.yaml`` (``rotation``, ``translation``: IR to colour) and
        ``calib_depth.yaml`` (``depthShift``, mm), as kinect2_calibration writes them
        (OpenCV FileStorage YAML). Other keys in them are ignored. A file that is missing
        or not usable raises :py:class:`CalibrationError` naming it and the field at
        fault; only ``calib_depth.yaml`` may be missing, as kinect2_bridge allows: the
        depth shift is then 0, with a line in ``warnings`` (also logged).
        """
        folder = os.fspath(directory)
        if not os.path.isdir(folder):
            raise CalibrationError('{0}: not a folder (iai_kinect2 calibration: {1})'.format(
                folder, ', '.join(IAI_KINECT2_FILES)))
        paths = [os.path.join(folder, name) for name in IAI_KINECT2_FILES]
        color = _iai_camera(paths[0], COLOR_WIDTH, COLOR_HEIGHT)
        depth = _iai_camera(paths[1], DEPTH_WIDTH, DEPTH_HEIGHT)
        rotation, translation = _iai_pose(paths[2])
        warnings = []
        shift = 0.0
        if os.path.lexists(paths[3]):
            shift = _iai_depth_shift(paths[3])
        else:
            warnings.append('{0}: missing: using a depth shift of 0 mm, as kinect2_bridge '
                            'does'.format(paths[3]))
        _log_warnings('iai_kinect2 calibration', warnings)
        return cls(depth=depth, color=color, rotation=rotation, translation=translation,
                   depth_shift_mm=shift, source='iai_kinect2:' + folder,
                   warnings=tuple(warnings))

    def with_depth_camera(self, model: CameraModel, source: str = 'camera_info') -> 'Calibration':
        """Return this calibration with *model* as the depth (IR) camera.

        For ``camera_info_url``: *model* must be for 512 x 424 (CalibrationError
        otherwise). libfreenect2's model (``factory``) is dropped, since its mapping terms
        belong to the factory IR camera: registration then uses rotation/translation.
        ``source`` gets ``+<source>``.
        """
        if not isinstance(model, CameraModel):
            raise CalibrationError('depth camera: expected a CameraModel, got {0}'.format(
                type(model).__name__))
        if model.size != (DEPTH_WIDTH, DEPTH_HEIGHT):
            raise CalibrationError('depth camera: a {0}x{1} camera, the depth images are '
                                   '{2}x{3}'.format(model.width, model.height, DEPTH_WIDTH,
                                                    DEPTH_HEIGHT))
        return replace(self, depth=model, factory=None, factory_depth=None,
                       source='{0}+{1}'.format(self.source, source))

    def color_in_link(self) -> Pose:
        """Return the colour optical frame's pose in ``<base>_link``: the identity.

        As kinect2_bridge's ``publish_tf``: ``<base>_link`` is the colour camera's optical
        frame. ``((x, y, z), (qx, qy, qz, qw))``.
        """
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)

    def ir_in_color(self) -> Pose:
        """Return the IR optical frame's pose in the colour optical frame, for TF.

        ``((x, y, z), (qx, qy, qz, qw))``: the transform with parent
        ``<base>_rgb_optical_frame`` and child ``<base>_ir_optical_frame``, as
        kinect2_bridge publishes it. A TF transform maps child coordinates to parent
        coordinates, and ``rotation``/``translation`` map IR coordinates to colour
        coordinates: so it is ``translation`` and the quaternion of ``rotation``.
        """
        x, y, z = (float(v) for v in self.translation.tolist())
        return (x, y, z), quaternion_from_rotation(self.rotation)


def _factory_terms(record: Dict[str, Any],
                   absent_ok: bool = False) -> Tuple[Optional[Dict[str, float]], List[str]]:
    """Return ``(factory, problems)`` from a colour record with libfreenect2's terms.

    With *absent_ok*, a record with none of the mapping terms gives ``(None, [])``.
    """
    if absent_ok and not any(key in record for key in COLOR_MAPPING_KEYS):
        return None, []
    problems = []
    missing = [key for key in FACTORY_KEYS if key not in record]
    if missing:
        problems.append('missing {0}'.format(', '.join(missing)))
    for key in ('width', 'height'):
        if key in record and record[key] != {'width': COLOR_WIDTH,
                                             'height': COLOR_HEIGHT}[key]:
            problems.append('{0}: {1}: the terms are for a {2}x{3} image'.format(
                key, _describe(record[key]), COLOR_WIDTH, COLOR_HEIGHT))
    values = {}
    for key in FACTORY_KEYS:
        if key not in record:
            continue
        value = _finite(record[key])
        if value is None or abs(value) > _MAX_FACTORY_TERM:
            problems.append('{0}: {1} is not a finite number of at most {2:g} in '
                            'magnitude'.format(key, _describe(record[key]), _MAX_FACTORY_TERM))
        else:
            values[key] = value
    if not problems:
        problems.extend(_range_problems(values['fx'], values['fy'], values['cx'],
                                        values['cy'], COLOR_WIDTH, COLOR_HEIGHT))
    return (None if problems else values), problems


def _log_warnings(what: str, warnings: List[str]) -> None:
    for warning in warnings:
        log.warning('%s: %s', what, warning)


def _factory_depth(record: object) -> Tuple[Optional[Dict[str, float]], List[str]]:
    """Return ``(values, problems)`` of libfreenect2's IR camera parameters."""
    if isinstance(record, dict):
        for key in ('width', 'height'):
            if key in record and record[key] != {'width': DEPTH_WIDTH,
                                                 'height': DEPTH_HEIGHT}[key]:
                return None, ["{0}: {1}: libfreenect2's values are for a {2}x{3} "
                              'image'.format(key, _describe(record[key]), DEPTH_WIDTH,
                                             DEPTH_HEIGHT)]
    values, problems = intrinsics_values(record, DEPTH_WIDTH, DEPTH_HEIGHT, _NO_DISTORTION)
    if values is None:
        return None, problems
    return {key: values[key] for key in INTRINSIC_KEYS}, []


def _factory_calibration(depth_record: object, color_record: Dict[str, Any],
                         warnings: List[str]) -> Optional[Tuple[Any, ...]]:
    """Return the parts of a factory calibration, or None (*warnings* says why if so).

    ``(depth, color, rotation, translation, factory, factory_depth, model)``.
    """
    factory, problems = _factory_terms(color_record, absent_ok=True)
    if factory is None and not problems:
        return None  # no mapping terms: not libfreenect2's
    factory_depth = None
    if not problems:
        if depth_record is None:
            problems = ["they need the sensor's own depth_camera"]
        else:
            factory_depth, problems = _factory_depth(depth_record)
            problems = ['depth_camera: ' + problem for problem in problems]
    # The records describe the un-mirrored frames on the wire; libfreenect2's model is
    # defined on its own mirrored images: take cx (and p2) back.
    if factory is not None:
        factory = mirror_intrinsics(factory, COLOR_WIDTH)
    if factory_depth is not None:
        factory_depth = mirror_intrinsics(factory_depth, DEPTH_WIDTH)
    if factory is None or factory_depth is None or problems:
        warnings.append("color_camera: libfreenect2's mapping terms: {0}: not using "
                        "libfreenect2's model".format('; '.join(problems)))
        return None
    try:
        from .factory_model import Freenect2Model
        model = Freenect2Model(factory_depth, factory)
        # The frames' IR camera: the record's values (the model's are float32).
        depth = CameraModel.from_intrinsics(mirror_intrinsics(factory_depth, DEPTH_WIDTH),
                                            DEPTH_WIDTH, DEPTH_HEIGHT)
        color = CameraModel.from_intrinsics(model.equivalent_color_camera())
        rotation, translation = model.equivalent_pose()
        rotation = _frozen(rotation, (3, 3))
        translation = _frozen(translation).reshape(-1)
    except Exception as err:  # never raise for what a device sends (see the caller)
        log.debug("libfreenect2's model refused a device's values", exc_info=True)
        warnings.append("color_camera: libfreenect2's model: {0}: {1}: not using "
                        "libfreenect2's model".format(type(err).__name__, err))
        return None
    pose_problems = _pose_problems(rotation, translation)
    if pose_problems:
        warnings.append("color_camera: libfreenect2's model's equivalent pose: {0}: not "
                        "using libfreenect2's model".format(
                            '; '.join('{0}: {1}'.format(*p) for p in pose_problems)))
        return None
    return depth, color, rotation, translation, factory, factory_depth, model


def _shift_of_record(record: Dict[str, Any], warnings: List[str]) -> float:
    """Return a device record's ``depth_shift_mm``: 0 if it has none or not a usable one."""
    if 'depth_shift_mm' not in record:
        return 0.0
    value = _finite(record['depth_shift_mm'])
    if value is None or abs(value) > MAX_DEPTH_SHIFT_MM:
        warnings.append('depth_shift_mm: {0} is not a depth shift (finite, at most {1:g} mm '
                        'in magnitude): using 0'.format(_describe(record['depth_shift_mm']),
                                                        MAX_DEPTH_SHIFT_MM))
        return 0.0
    return value


def _pose_from_record(record: object) -> Union[str, Tuple[npt.NDArray[Any],
                                                          npt.NDArray[Any]]]:
    """Return ``(rotation, translation)`` of an ``ir_to_color`` record, or why not (str)."""
    if not isinstance(record, dict):
        return 'record: {0} is not a JSON object'.format(_describe(record))
    parts = []
    for key, count in (('rotation', 9), ('translation', 3)):
        value = record.get(key)
        if not isinstance(value, list) or len(value) != count:
            return '{0}: expected a list of {1} numbers, got {2}'.format(
                key, count, _describe(value))
        numbers_ = [_finite(v) for v in value]
        if any(v is None for v in numbers_):
            return '{0}: {1} holds something that is not a finite number'.format(
                key, _describe(value))
        parts.append(np.array(numbers_, dtype=np.float64))
    rotation, translation = parts[0].reshape(3, 3), parts[1]
    problems = _pose_problems(rotation, translation)
    if problems:
        return '; '.join('{0}: {1}'.format(*problem) for problem in problems)
    return rotation, translation


# --- Files -----------------------------------------------------------------------------

def _read_text(path: str) -> str:
    """Return the text of the calibration file *path*, read with every limit."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0)
                     | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        raise CalibrationError('{0}: no such file'.format(path)) from None
    except OSError as err:
        raise CalibrationError('{0}: cannot open it: {1}'.format(
            path, err.strerror or err)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CalibrationError('{0}: not a regular file'.format(path))
        if info.st_size > MAX_FILE_BYTES:
            raise CalibrationError('{0}: {1} bytes, more than the {2} a calibration file may '
                                   'have'.format(path, info.st_size, MAX_FILE_BYTES))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, 'rb') as stream:
        try:
            data = stream.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise CalibrationError('{0}: cannot read it: {1}'.format(
                path, err.strerror or err)) from None
    if len(data) > MAX_FILE_BYTES:
        raise CalibrationError('{0}: more than the {1} bytes a calibration file may '
                               'have'.format(path, MAX_FILE_BYTES))
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as err:
        raise CalibrationError('{0}: not UTF-8 text (byte {1}): not a YAML file'.format(
            path, err.start)) from None
    if '\x00' in text:
        raise CalibrationError('{0}: holds a NUL character: not a YAML file'.format(path))
    if text.startswith('\ufeff'):
        text = text[1:]
    if not text.strip():
        raise CalibrationError('{0}: empty'.format(path))
    return text


class _Scalar(object):
    """A YAML scalar as written: its text, whether it was quoted, its line."""

    __slots__ = ('text', 'quoted', 'line')

    def __init__(self, text: str, quoted: bool, line: int) -> None:
        self.text, self.quoted, self.line = text, quoted, line

    def __repr__(self) -> str:
        return repr(self.text) if self.quoted else self.text


class _Line(object):
    __slots__ = ('number', 'indent', 'text')

    def __init__(self, number: int, indent: int, text: str) -> None:
        self.number, self.indent, self.text = number, indent, text


class _YamlError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__('line {0}: {1}'.format(line, message))


_DIRECTIVE = re.compile(r'%YAML[: ]\s*1\.[0-2]\s*\Z')


def _strip_comment(text: str) -> str:
    """Return *text* without a ``#`` comment (one at the start or after a blank)."""
    quote = ''
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ''
        elif char in '\'"' and (index == 0 or text[index - 1] in ' \t[,:'):
            quote = char
        elif char == '#' and (index == 0 or text[index - 1] in ' \t'):
            return text[:index].rstrip()
    return text.rstrip()


def _lines(text: str) -> List[_Line]:
    """Return the content lines of the one YAML document in *text*."""
    lines: List[_Line] = []
    started = False
    for number, raw in enumerate(text.split('\n'), 1):
        raw = raw.rstrip('\r')
        body = raw.lstrip(' ')
        content = _strip_comment(body.strip(' \t'))
        if not content:
            continue
        if body[:1] == '\t':
            raise _YamlError(number, 'a tab in the indentation')
        if not started and content.startswith('%'):
            if not _DIRECTIVE.match(content):
                raise _YamlError(number, 'unknown directive {0}'.format(_describe(content)))
            continue
        if content == '---' or content.startswith('--- '):
            if started and lines:
                raise _YamlError(number, 'a second document: one is expected')
            if content != '---':
                raise _YamlError(number, 'content after "---": expected on the next lines')
            started = True
            continue
        if content == '...':
            break
        started = True
        lines.append(_Line(number, len(raw) - len(body), content))
    return lines


def _quoted(text: str, line: int) -> Tuple[str, str]:
    """Return ``(value, rest)`` of the quoted scalar at the start of *text*."""
    quote = text[0]
    index = 1
    while True:
        end = text.find(quote, index)
        if end < 0:
            raise _YamlError(line, 'a quoted string that does not end on its line')
        if quote == "'" and text[end + 1:end + 2] == "'":
            index = end + 2
            continue
        if quote == '"':
            backslashes = len(text[:end]) - len(text[:end].rstrip('\\'))
            if backslashes % 2:
                index = end + 1
                continue
        break
    body, rest = text[:end + 1], text[end + 1:]
    if quote == "'":
        return body[1:-1].replace("''", "'"), rest
    try:
        return str(json.loads(body)), rest
    except ValueError:
        raise _YamlError(line, 'a double-quoted string with an escape this reader does not '
                               'know: {0}'.format(_describe(body))) from None


def _scalar(text: str, line: int) -> _Scalar:
    text = text.strip()
    if text[:1] in ('"', "'"):
        value, rest = _quoted(text, line)
        if rest.strip():
            raise _YamlError(line, 'text after a quoted string: {0}'.format(
                _describe(rest.strip())))
        return _Scalar(value, True, line)
    if text[:1] in ('&', '*'):
        raise _YamlError(line, 'anchors and aliases are not supported')
    if text[:1] in ('|', '>'):
        raise _YamlError(line, 'block scalars are not supported')
    if text[:1] == '{':
        raise _YamlError(line, 'flow mappings ("{...}") are not supported')
    if text[:1] in ('}', ']', '@', '`'):
        raise _YamlError(line, 'unexpected {0!r}'.format(text[:1]))
    return _Scalar(text, False, line)


class _Parser(object):
    """A strict reader of the block YAML that OpenCV and camera_calibration_parsers write.

    Block mappings, block sequences of scalars, flow sequences of scalars (over several
    lines too), plain and quoted scalars, comments, ``%YAML`` directives (OpenCV's
    ``%YAML:1.0`` too), one document, OpenCV's ``!!opencv-matrix`` tag. Everything else
    (flow mappings, anchors, nested flow sequences, other tags) is refused with the
    line number.
    """

    def __init__(self, text: str) -> None:
        self.lines = _lines(text)
        self.pos = 0

    def document(self) -> Any:
        if not self.lines:
            raise _YamlError(1, 'no content')
        first = self.lines[0]
        value = self.block(first.indent, 0)
        if self.pos < len(self.lines):
            raise _YamlError(self.lines[self.pos].number, 'unexpected indentation')
        return value

    def block(self, indent: int, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _YamlError(self.lines[self.pos].number, 'nested deeper than {0} '
                                                          'levels'.format(_MAX_DEPTH))
        if _is_item(self.lines[self.pos].text):
            return self.sequence(indent, depth)
        return self.mapping(indent, depth)

    def mapping(self, indent: int, depth: int) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line.indent < indent:
                break
            if line.indent > indent:
                raise _YamlError(line.number, 'unexpected indentation')
            if _is_item(line.text):
                raise _YamlError(line.number, 'a sequence item where "key: value" was '
                                              'expected')
            key, rest = _key(line)
            if key in result:
                raise _YamlError(line.number, 'the key {0} a second time'.format(
                    _describe(key)))
            self.pos += 1
            result[key] = self.value(line, rest, indent, depth, in_mapping=True)
        return result

    def sequence(self, indent: int, depth: int) -> List[Any]:
        result: List[Any] = []
        while self.pos < len(self.lines):
            line = self.lines[self.pos]
            if line.indent < indent:
                break
            if line.indent > indent:
                raise _YamlError(line.number, 'unexpected indentation')
            if not _is_item(line.text):
                break  # the next key of the mapping holding this sequence
            if len(result) >= _MAX_ITEMS:
                raise _YamlError(line.number, 'more than {0} items'.format(_MAX_ITEMS))
            self.pos += 1
            rest = line.text[1:].strip()
            if rest and not rest.startswith(('[', '"', "'")) and re.search(r':( |\Z)', rest):
                raise _YamlError(line.number, 'mappings inside sequences are not supported')
            result.append(self.value(line, rest, indent, depth, in_mapping=False))
        return result

    def value(self, line: _Line, rest: str, indent: int, depth: int,
              in_mapping: bool) -> Any:
        tag = None
        value: Any
        if rest.startswith('!'):
            tag, _, rest = rest.partition(' ')
            rest = rest.strip()
            if tag != '!!opencv-matrix':
                raise _YamlError(line.number, 'the tag {0} is not supported'.format(
                    _describe(tag)))
        if not rest:
            following = self.lines[self.pos] if self.pos < len(self.lines) else None
            if following is not None and following.indent > indent \
                    and following.text.startswith('['):  # "data:" then "  [1, 2, ...]"
                self.pos += 1
                value = self.flow(following, following.text)
            elif following is not None and (following.indent > indent or (
                    in_mapping and tag is None and following.indent == indent
                    and _is_item(following.text))):
                value = self.block(following.indent, depth + 1)
            else:
                value = None
        elif rest.startswith('['):
            value = self.flow(line, rest)
        else:
            value = _scalar(rest, line.number)
        if tag is not None and not isinstance(value, dict):
            raise _YamlError(line.number, 'a !!opencv-matrix needs rows, cols, dt and data')
        return value

    def flow(self, line: _Line, text: str) -> List[_Scalar]:
        """Return the flow sequence starting *text*, reading on to its ``]``."""
        chunks: List[str] = []
        current: List[str] = []
        quote = ''
        part = text[1:]
        while True:
            for index, char in enumerate(part):
                if quote:
                    current.append(char)
                    if char == quote:
                        quote = ''
                elif char in '\'"':
                    quote = char
                    current.append(char)
                elif char == '[':
                    raise _YamlError(line.number, 'nested sequences are not supported')
                elif char == '{':
                    raise _YamlError(line.number, 'flow mappings are not supported')
                elif char == ',':
                    chunks.append(''.join(current))
                    current = []
                    if len(chunks) > _MAX_ITEMS:
                        raise _YamlError(line.number, 'more than {0} items'.format(
                            _MAX_ITEMS))
                elif char == ']':
                    rest = part[index + 1:].strip()
                    if rest:
                        raise _YamlError(line.number, 'text after "]": {0}'.format(
                            _describe(rest)))
                    chunks.append(''.join(current))
                    return self._items(chunks, line.number)
                else:
                    current.append(char)
            if self.pos >= len(self.lines):
                raise _YamlError(line.number, 'a "[" without its "]"')
            current.append(' ')  # a line break inside "[...]" is a space
            part = self.lines[self.pos].text
            self.pos += 1

    @staticmethod
    def _items(chunks: List[str], line: int) -> List[_Scalar]:
        if len(chunks) > 1 and not chunks[-1].strip():
            chunks.pop()  # a trailing comma
        if len(chunks) == 1 and not chunks[0].strip():
            return []
        items = []
        for chunk in chunks:
            if not chunk.strip():
                raise _YamlError(line, 'an empty item in "[...]"')
            items.append(_scalar(chunk, line))
        return items


def _is_item(text: str) -> bool:
    return text == '-' or text.startswith('- ')


def _key(line: _Line) -> Tuple[str, str]:
    text = line.text
    if text[:1] == '{':
        raise _YamlError(line.number, 'flow mappings ("{...}") are not supported')
    if text[:1] in ('"', "'"):
        key, rest = _quoted(text, line.number)
        rest = rest.lstrip(' ')
        if not rest.startswith(':') or rest[1:2] not in ('', ' '):
            raise _YamlError(line.number, 'expected ":" after the key')
        return key, rest[1:].strip()
    match = re.search(r':( |\Z)', text)
    if match is None or match.start() == 0:
        raise _YamlError(line.number, 'expected "key: value", got {0}'.format(
            _describe(text)))
    key = text[:match.start()].rstrip()
    if key[:1] in '[]{}&*!|>%@`,?':
        raise _YamlError(line.number, 'not a plain key: {0}'.format(_describe(key)))
    return key, text[match.end():].strip()


def _load_yaml(path: str) -> Dict[str, Any]:
    """Return the top-level mapping of the YAML file *path*."""
    text = _read_text(path)
    try:
        document = _Parser(text).document()
    except _YamlError as err:
        raise CalibrationError('{0}: not the YAML this reader takes: {1}'.format(
            path, err)) from None
    if not isinstance(document, dict):
        raise CalibrationError('{0}: expected a mapping of "key: value" lines, got {1}'.format(
            path, 'a sequence' if isinstance(document, list) else 'a single value'))
    return document


_INTEGER = re.compile(r'[-+]?[0-9]+\Z')
_FLOAT = re.compile(r'[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z')
_SPECIAL = {'.nan': math.nan, '.inf': math.inf, '+.inf': math.inf, '-.inf': -math.inf}


def _number(node: Any, where: str) -> float:
    """Return the finite number *node* holds, or raise CalibrationError naming *where*."""
    if isinstance(node, _Scalar) and not node.quoted:
        text = node.text
        value: Optional[float] = None
        if _FLOAT.match(text):
            value = float(text)  # inf if too large
        elif text.lower() in _SPECIAL:
            value = _SPECIAL[text.lower()]
        if value is not None:
            if not math.isfinite(value):
                raise CalibrationError('{0}: {1} is not a finite number'.format(
                    where, _describe(text)))
            return value
    raise CalibrationError('{0}: expected a number, got {1}'.format(where, _kind(node)))


def _integer(node: Any, where: str, low: int, high: int) -> int:
    if isinstance(node, _Scalar) and not node.quoted and _INTEGER.match(node.text) \
            and len(node.text) < 12 and low <= int(node.text) <= high:
        return int(node.text)
    raise CalibrationError('{0}: expected a whole number from {1} to {2}, got {3}'.format(
        where, low, high, _kind(node)))


def _kind(node: Any) -> str:
    if node is None:
        return 'nothing'
    if isinstance(node, dict):
        return 'a mapping'
    if isinstance(node, list):
        return 'a sequence of {0} items'.format(len(node))
    if node.quoted:
        return 'the string {0}'.format(_describe(node.text))
    return _describe(node.text)


def _get(document: Dict[str, Any], key: str, where: str) -> Any:
    if key not in document:
        raise CalibrationError('{0}: missing'.format(where))
    return document[key]


_DT = {'u', 'c', 'w', 's', 'i', 'f', 'd'}


def _matrix(node: Any, where: str) -> npt.NDArray[np.float64]:
    """Return the (rows, cols) matrix of an OpenCV/ROS matrix node (rows, cols, data)."""
    if not isinstance(node, dict):
        raise CalibrationError('{0}: expected a matrix (rows, cols, data), got {1}'.format(
            where, _kind(node)))
    rows = _integer(_get(node, 'rows', where + ': rows'), where + ': rows', 0, _MAX_ITEMS)
    cols = _integer(_get(node, 'cols', where + ': cols'), where + ': cols', 0, _MAX_ITEMS)
    if 'dt' in node:
        dt = node['dt']
        if not isinstance(dt, _Scalar) or dt.text not in _DT:
            raise CalibrationError('{0}: dt: expected a one-channel type (d, f, i, ...), got '
                                   '{1}'.format(where, _kind(dt)))
    data = _get(node, 'data', where + ': data')
    if not isinstance(data, list):
        raise CalibrationError('{0}: data: expected a sequence of numbers, got {1}'.format(
            where, _kind(data)))
    if len(data) != rows * cols:
        raise CalibrationError('{0}: data: {1} numbers for a {2} x {3} matrix'.format(
            where, len(data), rows, cols))
    values = [_number(item, '{0}: data[{1}]'.format(where, index))
              for index, item in enumerate(data)]
    return np.array(values, dtype=np.float64).reshape(rows, cols)


def _matrix_of_shape(node: Any, where: str, rows: int, cols: int) -> npt.NDArray[np.float64]:
    matrix = _matrix(node, where)
    if matrix.shape != (rows, cols):
        raise CalibrationError('{0}: expected a {1} x {2} matrix, got {3} x {4}'.format(
            where, rows, cols, *matrix.shape))
    return matrix


def _vector(node: Any, where: str, lengths: Tuple[int, ...]) -> npt.NDArray[np.float64]:
    matrix = _matrix(node, where)
    if 1 not in matrix.shape and matrix.size:
        raise CalibrationError('{0}: expected a row or a column, got {1} x {2}'.format(
            where, *matrix.shape))
    vector = matrix.reshape(-1)
    if len(vector) not in lengths:
        raise CalibrationError('{0}: expected {1} numbers, got {2}'.format(
            where, ' or '.join(str(n) for n in lengths), len(vector)))
    return vector


def _plumb_bob(node: Any, where: str) -> npt.NDArray[np.float64]:
    """Return the 5 plumb_bob coefficients of a distortion vector (OpenCV's lengths)."""
    vector = _vector(node, where, (0, 4, 5, 8, 12, 14))
    if len(vector) > 5 and np.any(vector[5:]):
        raise CalibrationError('{0}: {1} coefficients, with rational or thin-prism terms: only '
                               'plumb_bob (k1, k2, p1, p2, k3) is supported'.format(
                                   where, len(vector)))
    return np.concatenate([vector[:5], np.zeros(max(0, 5 - len(vector)))])


_IAI_FIELDS = {'K': 'cameraMatrix', 'D': 'distortionCoefficients'}
_ROS_FIELDS = {'K': 'camera_matrix', 'D': 'distortion_coefficients', 'width': 'image_width',
               'height': 'image_height'}


def _checked_model(path: str, width: int, height: int, k: npt.NDArray[np.float64],
                   d: npt.NDArray[np.float64], names: Dict[str, str]) -> CameraModel:
    problems = _model_problems(width, height, k, d)
    if problems:
        raise CalibrationError('; '.join('{0}: {1}: {2}'.format(path, names.get(part, part),
                                                                problem)
                                         for part, problem in problems))
    return CameraModel(width, height, k, d)


def _iai_camera(path: str, width: int, height: int) -> CameraModel:
    document = _load_yaml(path)
    where = '{0}: {1}'.format(path, _IAI_FIELDS['K'])
    k = _matrix_of_shape(_get(document, _IAI_FIELDS['K'], where), where, 3, 3)
    where = '{0}: {1}'.format(path, _IAI_FIELDS['D'])
    d = _plumb_bob(_get(document, _IAI_FIELDS['D'], where), where)
    return _checked_model(path, width, height, k, d, _IAI_FIELDS)


def _iai_pose(path: str) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    document = _load_yaml(path)
    where = '{0}: rotation'.format(path)
    rotation = _matrix_of_shape(_get(document, 'rotation', where), where, 3, 3)
    where = '{0}: translation'.format(path)
    translation = _vector(_get(document, 'translation', where), where, (3,))
    problems = _pose_problems(rotation, translation)
    if problems:
        raise CalibrationError('; '.join('{0}: {1}: {2}'.format(path, *problem)
                                         for problem in problems))
    return rotation, translation


def _iai_depth_shift(path: str) -> float:
    document = _load_yaml(path)
    where = '{0}: depthShift'.format(path)
    shift = _number(_get(document, 'depthShift', where), where)
    if abs(shift) > MAX_DEPTH_SHIFT_MM:
        raise CalibrationError('{0}: {1!r} mm is not a depth shift (at most {2:g} mm in '
                               'magnitude)'.format(where, shift, MAX_DEPTH_SHIFT_MM))
    return shift


def _path_of(path_or_file_url: PathLike) -> str:
    """Return the file path of a path or a ``file://`` URL."""
    text = os.fspath(path_or_file_url)
    if not isinstance(text, str):
        raise CalibrationError('{0}: expected a path or a file:// URL'.format(
            _describe(text)))
    if not text:
        raise CalibrationError('camera_info: an empty path')
    match = re.match(r'([A-Za-z][A-Za-z0-9+.-]*)://', text)
    if match is None:
        return text
    scheme = match.group(1).lower()
    if scheme != 'file':
        raise CalibrationError('{0}: only a path or a file:// URL is read here ({1}:// URLs '
                               'are resolved by the ROS node)'.format(text, scheme))
    parts = urllib.parse.urlsplit(text)
    if parts.netloc not in ('', 'localhost'):
        raise CalibrationError('{0}: a file:// URL of another host ({1})'.format(
            text, parts.netloc))
    path = urllib.parse.unquote(parts.path)
    if not path:
        raise CalibrationError('{0}: no path in the URL'.format(text))
    return path


def read_camera_info_yaml(path_or_file_url: PathLike,
                          size: Optional[Tuple[int, int]] = None) -> CameraModel:
    """Return the camera of a camera_info_manager calibration file.

    *path_or_file_url* is a path or a ``file://`` URL (``package://`` and substitutions
    are the ROS node's to resolve). The file is the YAML camera_calibration writes:
    ``image_width``, ``image_height``, ``camera_matrix`` and ``distortion_coefficients``
    (``rows``, ``cols``, ``data``), ``distortion_model``. Only ``plumb_bob`` (5
    coefficients; also 8, 12 or 14 of which all but the first 5 are 0) is supported:
    ``rational_polynomial``, ``equidistant`` and others are refused. No
    ``distortion_model`` is taken as plumb_bob, no ``distortion_coefficients`` (or none
    in it) as zero distortion, as camera_calibration_parsers does.
    ``rectification_matrix`` and ``projection_matrix``, if present, must be 3 x 3 and
    3 x 4 matrices of finite numbers but are not used: rectified images are made with K
    (P = [K | 0]), as kinect2_bridge does; an R other than the identity (a stereo pair's)
    is logged. With *size* ``(width, height)``, a file for another image size is refused.
    Raises :py:class:`CalibrationError` naming the file and the field.
    """
    path = _path_of(path_or_file_url)
    document = _load_yaml(path)
    sizes = []
    for name in ('image_width', 'image_height'):
        where = '{0}: {1}'.format(path, name)
        sizes.append(_integer(_get(document, name, where), where, 1, MAX_IMAGE_SIDE))
    width, height = sizes
    if size is not None and (width, height) != tuple(size):
        raise CalibrationError('{0}: image_width, image_height: the file is for a {1}x{2} '
                               'image, these images are {3}x{4}'.format(
                                   path, width, height, *size))
    model = document.get('distortion_model')
    if model is not None and (not isinstance(model, _Scalar) or model.text != 'plumb_bob'):
        raise CalibrationError('{0}: distortion_model: {1}: only plumb_bob is supported'.format(
            path, _kind(model)))
    where = '{0}: camera_matrix'.format(path)
    k = _matrix_of_shape(_get(document, 'camera_matrix', where), where, 3, 3)
    where = '{0}: distortion_coefficients'.format(path)
    node = document.get('distortion_coefficients')
    d = np.zeros(5) if node is None else _plumb_bob(node, where)
    where = '{0}: rectification_matrix'.format(path)
    if document.get('rectification_matrix') is not None:
        r = _matrix_of_shape(document['rectification_matrix'], where, 3, 3)
        if not np.allclose(r, np.eye(3), rtol=0.0, atol=1e-9):
            log.warning('%s: not the identity: a stereo rectification, not used', where)
    where = '{0}: projection_matrix'.format(path)
    if document.get('projection_matrix') is not None:
        _matrix_of_shape(document['projection_matrix'], where, 3, 4)
    return _checked_model(path, width, height, k, d, _ROS_FIELDS)
