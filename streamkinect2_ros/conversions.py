"""Depth, IR and colour frames to ``sensor_msgs`` messages, and the names they go under.

Pure functions, no node: the client node calls them on every frame, the tests call them
directly. Nothing a server sends makes them publish a wrong message: intrinsics that are
not a usable camera give way to the defaults (:py:func:`intrinsics_problems` says why), a
stamp that does not fit ``builtin_interfaces/Time`` raises ValueError.
"""
import array
import hashlib
import re
import sys
from typing import Any, Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt
from streamkinect2.calibration import intrinsics_problems, intrinsics_values
from streamkinect2.device import (INTRINSIC_KEYS, KINECT2_DEFAULT_DEPTH_CAMERA,
                                  MOCK_CALIBRATION)

__all__ = [
    'COMPRESSED_BGR8_JPEG_FORMAT', 'DEFAULT_COLOR_INTRINSICS', 'DEFAULT_DEPTH_INTRINSICS',
    'INTRINSIC_KEYS', 'MAX_NAME_LENGTH', 'MAX_STAMP_NS', 'camera_info_fields',
    'fill_camera_info', 'fill_compressed_image', 'fill_image', 'fill_point_cloud',
    'frame_id_for',
    'intrinsics_problems', 'is_bigendian', 'sanitise_name', 'stamp_from_ns',
]

#: The intrinsics used when a device reports none or a record that is not a usable
#: camera: :py:data:`streamkinect2.device.KINECT2_DEFAULT_DEPTH_CAMERA` (the same dict).
#: The IR image comes from the same camera as depth: it shares them.
DEFAULT_DEPTH_INTRINSICS = KINECT2_DEFAULT_DEPTH_CAMERA

#: The colour camera's counterpart of :py:data:`DEFAULT_DEPTH_INTRINSICS`: the calibration
#: of one real Kinect v2's colour camera for 1920 x 1080,
#: ``streamkinect2.device.MOCK_CALIBRATION['color_camera']`` (the same dict). Every unit
#: differs a little; a device's ``color_camera`` record replaces them.
DEFAULT_COLOR_INTRINSICS = MOCK_CALIBRATION['color_camera']

#: ``sensor_msgs/CompressedImage.format`` of a JPEG of a bgr8 image, exactly as
#: image_transport's compressed publisher (compressed_image_transport) writes it:
#: ``<source encoding>; jpeg compressed <target encoding>``. Its subscriber, and
#: ``image_transport republish compressed raw``, read the target encoding from it.
COMPRESSED_BGR8_JPEG_FORMAT = 'bgr8; jpeg compressed bgr8'

#: Longest token :py:func:`sanitise_name` returns. rmw refuses a fully qualified topic
#: name over 247 characters (``RMW_TOPIC_MAX_NAME_LENGTH``, 255 - 8): 64 leaves 164 for
#: the node namespace in ``<ns>/<token>/depth/camera_info``.
MAX_NAME_LENGTH = 64
_HASH_LENGTH = 10  # hex digits of SHA-256 (40 bits) that keep shortened names apart

_NOT_NAME = re.compile(r'[^A-Za-z0-9_]+')


def sanitise_name(device_id: object) -> str:
    """Return *device_id* as a valid ROS name token (namespace, TF frame part).

    Anything but ``[A-Za-z0-9_]`` becomes ``_``, runs of ``_`` collapse, leading and
    trailing ``_`` go; a token starting with a digit (or empty) gets a ``kinect2_``
    prefix, e.g. ``'mock-3f2a'`` -> ``'mock_3f2a'``, ``'012345'`` -> ``'kinect2_012345'``.

    A token longer than :py:data:`MAX_NAME_LENGTH` (64) is shortened, the same way every
    time: its first 53 characters, ``_`` and 10 hex digits of the SHA-256 of the full
    *device_id*, so two long ids sharing a prefix still get two names. The result always
    matches ``[A-Za-z](_?[A-Za-z0-9])*`` and fits ``<ns>/<token>/depth/camera_info``
    under rmw's 247-character limit for any namespace of up to 164 characters.
    """
    token = re.sub('_+', '_', _NOT_NAME.sub('_', str(device_id))).strip('_')
    if not token or token[0].isdigit():
        token = 'kinect2_' + token if token else 'kinect2'
    if len(token) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(str(device_id).encode('utf-8', 'surrogatepass')).hexdigest()
        token = '{0}_{1}'.format(token[:MAX_NAME_LENGTH - _HASH_LENGTH - 1].rstrip('_'),
                                 digest[:_HASH_LENGTH])
    return token


def frame_id_for(template: str, device_name: str) -> str:
    """Return the frame id for *device_name* from *template* (``{device}`` substituted)."""
    return template.replace('{device}', device_name)


#: Latest time a ``builtin_interfaces/Time`` holds (int32 ``sec``, uint32 ``nanosec``):
#: 2038-01-19T03:14:07.999999999Z, in ns since the epoch.
MAX_STAMP_NS = (2 ** 31 - 1) * 1000000000 + 999999999


def stamp_from_ns(stamp: Any, time_ns: int) -> Any:
    """Set the ``builtin_interfaces/Time`` *stamp* to *time_ns* (ns since the epoch).

    Raises ValueError if *time_ns* is before the epoch or after
    :py:data:`MAX_STAMP_NS`: unchecked, rclpy would publish such a ``sec`` wrapped to
    32 bits (or raise AssertionError with ``ROS_PYTHON_CHECK_FIELDS=1``).
    """
    value: Optional[int]
    try:
        value = int(time_ns)
    except OverflowError:  # float('inf')
        value = None
    if value is None or not 0 <= value <= MAX_STAMP_NS:
        raise ValueError('timestamp {0} ns is outside builtin_interfaces/Time (0 to {1} ns '
                         'since the epoch)'.format(time_ns, MAX_STAMP_NS))
    stamp.sec, stamp.nanosec = divmod(value, 1000000000)
    return stamp


def is_bigendian(pixels: npt.NDArray[Any]) -> bool:
    """Return True if the numpy array *pixels* holds big-endian values."""
    order = pixels.dtype.byteorder
    return order == '>' or (order == '=' and sys.byteorder == 'big')


def fill_image(msg: Any, pixels: npt.NDArray[Any], frame_id: str, stamp_ns: int) -> Any:
    """Fill the ``sensor_msgs/Image`` *msg* from a uint16 or a BGR uint8 array.

    A (height, width) uint16 array gives encoding ``16UC1``: depth in millimetres, 0
    where there is no reading (REP 118), or IR amplitude. A (height, width, 3) uint8
    array, blue-green-red (a colour frame's ``array``), gives ``bgr8`` with step
    ``width * 3``. The bytes are copied once, with no Python-level loop (twice if
    *pixels* is not C-contiguous, e.g. the BGR view of BGRX pixels).
    """
    if pixels.ndim == 2 and pixels.dtype.itemsize == 2 and pixels.dtype.kind == 'u':
        encoding = '16UC1'
    elif pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype.itemsize == 1 \
            and pixels.dtype.kind == 'u':
        encoding = 'bgr8'
    else:
        raise ValueError('expected a 2-D uint16 array or a (height, width, 3) uint8 array, '
                         'got {0} {1}'.format(pixels.dtype, pixels.shape))
    if not pixels.flags.c_contiguous:
        pixels = pixels.copy(order='C')
    stamp_from_ns(msg.header.stamp, stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = is_bigendian(pixels)
    msg.step = pixels.strides[0]
    data = array.array('B')
    data.frombytes(pixels.data.cast('B'))
    msg.data = data
    return msg


def fill_compressed_image(msg: Any, jpeg: Any, frame_id: str, stamp_ns: int) -> Any:
    """Fill the ``sensor_msgs/CompressedImage`` *msg* with the JPEG bytes *jpeg*, as they are.

    *jpeg* (bytes or any buffer: a received colour frame's ``jpeg``) is copied once,
    not decoded nor re-encoded; ``format`` is :py:data:`COMPRESSED_BGR8_JPEG_FORMAT`, so
    that image_transport's compressed subscriber decodes it to bgr8.
    """
    stamp_from_ns(msg.header.stamp, stamp_ns)
    msg.header.frame_id = frame_id
    msg.format = COMPRESSED_BGR8_JPEG_FORMAT
    data = array.array('B')
    data.frombytes(jpeg)
    msg.data = data
    return msg


def _image_size(width: int, height: int) -> Tuple[int, int]:
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError('image size {0}x{1} is empty'.format(width, height))
    return width, height


def camera_info_fields(width: int, height: int, intrinsics: object = None,
                       defaults: Dict[str, Any] = DEFAULT_DEPTH_INTRINSICS) -> Dict[str, Any]:
    """Return the ``CameraInfo`` fields (a dict) for a *width* x *height* image.

    *intrinsics* is a device's camera record (keys fx, fy, cx, cy, optionally k1, k2,
    k3, p1, p2 and the ``width`` and ``height`` it was calibrated for): its
    ``depth_camera`` for depth and IR, its ``color_camera`` for colour; or None for
    *defaults*: :py:data:`DEFAULT_DEPTH_INTRINSICS` (the default), or
    :py:data:`DEFAULT_COLOR_INTRINSICS` for colour. Never raises for any *intrinsics*: a
    record that is not a usable camera is replaced as a whole by the defaults (mixing
    one camera's focal length with another's principal point would describe neither);
    :py:func:`intrinsics_problems` says why. Distortion coefficients a usable record
    leaves out are the defaults' (a Kinect v2 lens). A record (or the defaults) for
    another image size is scaled to *width* x *height*: fx and cx by the ratio of the
    widths, fy and cy by that of the heights (as image_geometry treats binning), so a
    ``color_camera`` record for 1920 x 1080 describes the 960 x 540 ("qhd") image too.
    Distortion: plumb_bob, ``D = [k1, k2, p1, p2, k3]``. Every value is a finite float.
    """
    width, height = _image_size(width, height)
    values = None
    if intrinsics is not None:
        values = intrinsics_values(intrinsics, width, height, defaults)[0]
    if values is None:
        values, problems = intrinsics_values(defaults, width, height, defaults)
        assert values is not None, problems  # the defaults fit any size, scaled
    fx, fy, cx, cy = values['fx'], values['fy'], values['cx'], values['cy']
    return {
        'width': width,
        'height': height,
        'distortion_model': 'plumb_bob',
        'd': [values['k1'], values['k2'], values['p1'], values['p2'], values['k3']],
        'k': [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        'r': [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        'p': [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


def fill_camera_info(msg: Any, fields: Dict[str, Any], frame_id: str, stamp_ns: int) -> Any:
    """Fill the ``sensor_msgs/CameraInfo`` *msg* from :py:func:`camera_info_fields`."""
    stamp_from_ns(msg.header.stamp, stamp_ns)
    msg.header.frame_id = frame_id
    msg.width = fields['width']
    msg.height = fields['height']
    msg.distortion_model = fields['distortion_model']
    msg.d = fields['d']
    msg.k = fields['k']
    msg.r = fields['r']
    msg.p = fields['p']
    return msg


#: ``sensor_msgs/PointField`` datatypes by numpy type: INT8 1, UINT8 2, INT16 3, UINT16 4,
#: INT32 5, UINT32 6, FLOAT32 7, FLOAT64 8.
_POINT_FIELD_TYPES = {'i1': 1, 'u1': 2, 'i2': 3, 'u2': 4, 'i4': 5, 'u4': 6, 'f4': 7, 'f8': 8}


def fill_point_cloud(msg: Any, points: npt.NDArray[Any], frame_id: str,
                     stamp_ns: int) -> Any:
    """Fill the ``sensor_msgs/PointCloud2`` *msg* from a 2-D structured array *points*.

    An organised cloud: ``height`` x ``width`` is the array's shape (one point per
    pixel), one ``PointField`` per named field (name, byte offset, datatype, count 1),
    ``point_step`` the item size (16 for x, y, z, rgb float32), ``row_step`` its width
    times that; ``is_dense`` False (pixels without depth are NaN points). The bytes are
    copied once, with no Python-level loop.
    """
    from sensor_msgs.msg import PointField

    if points.ndim != 2 or points.dtype.names is None:
        raise ValueError('expected a 2-D structured array, got {0} {1}'.format(
            points.dtype, points.shape))
    fields = []
    for name in points.dtype.names:
        kind, offset = points.dtype.fields[name][:2]
        code = '{0}{1}'.format(kind.kind, kind.itemsize)
        if code not in _POINT_FIELD_TYPES or kind.shape:
            raise ValueError('field {0}: {1} has no PointField datatype'.format(name, kind))
        fields.append(PointField(name=name, offset=offset,
                                 datatype=_POINT_FIELD_TYPES[code], count=1))
    if not points.flags.c_contiguous:
        points = np.ascontiguousarray(points)
    stamp_from_ns(msg.header.stamp, stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = points.shape
    msg.fields = fields
    msg.is_bigendian = any(is_bigendian(points[name]) for name in points.dtype.names
                           if points.dtype.fields[name][0].itemsize > 1)
    msg.point_step = points.dtype.itemsize
    msg.row_step = points.dtype.itemsize * points.shape[1]
    msg.is_dense = False
    data = array.array('B')
    data.frombytes(points.view(np.uint8).data if points.size else b'')
    msg.data = data
    return msg
