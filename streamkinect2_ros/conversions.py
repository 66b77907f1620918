"""Depth frames to ``sensor_msgs`` messages, and the names they are published under.

Pure functions, no node: the client node calls them on every frame, the tests call them
directly.
"""
import array
import re
import sys

__all__ = [
    'DEFAULT_DEPTH_INTRINSICS', 'camera_info_fields', 'fill_camera_info', 'fill_image',
    'frame_id_for', 'is_bigendian', 'sanitise_name', 'stamp_from_ns',
]

#: Kinect v2 depth (IR) camera intrinsics used when a device does not report its own:
#: the factory calibration of one Kinect v2 as published with the OpenKinect/libfreenect2
#: Processing examples (``IrCameraParams``: fx, fy, cx, cy and the Brown-Conrady
#: coefficients k1, k2, k3, p1, p2). Every unit differs a little; a real device's
#: ``depth_camera`` record replaces them.
DEFAULT_DEPTH_INTRINSICS = {
    'fx': 365.456, 'fy': 365.456, 'cx': 254.878, 'cy': 205.395,
    'k1': 0.0905474, 'k2': -0.26819, 'k3': 0.0950862, 'p1': 0.0, 'p2': 0.0,
}

_NOT_NAME = re.compile(r'[^A-Za-z0-9_]+')


def sanitise_name(device_id):
    """Return *device_id* as a valid ROS name token (namespace, TF frame part).

    Anything but ``[A-Za-z0-9_]`` becomes ``_``, runs of ``_`` collapse, leading and
    trailing ``_`` go; a token starting with a digit (or empty) gets a ``kinect2_``
    prefix, e.g. ``'mock-3f2a'`` -> ``'mock_3f2a'``, ``'012345'`` -> ``'kinect2_012345'``.
    """
    token = re.sub('_+', '_', _NOT_NAME.sub('_', str(device_id))).strip('_')
    if not token or token[0].isdigit():
        token = 'kinect2_' + token if token else 'kinect2'
    return token


def frame_id_for(template, device_name):
    """Return the frame id for *device_name* from *template* (``{device}`` substituted)."""
    return template.replace('{device}', device_name)


def stamp_from_ns(stamp, time_ns):
    """Set the ``builtin_interfaces/Time`` *stamp* to *time_ns* (ns since the epoch)."""
    stamp.sec, stamp.nanosec = divmod(int(time_ns), 1000000000)
    return stamp


def is_bigendian(pixels):
    """Return True if the numpy array *pixels* holds big-endian values."""
    order = pixels.dtype.byteorder
    return order == '>' or (order == '=' and sys.byteorder == 'big')


def fill_image(msg, pixels, frame_id, stamp_ns):
    """Fill the ``sensor_msgs/Image`` *msg* from a (height, width) uint16 array.

    Encoding ``16UC1``: depth in millimetres, 0 where there is no reading (REP 118).
    The bytes are copied once, with no Python-level loop.
    """
    if pixels.ndim != 2 or pixels.dtype.itemsize != 2 or pixels.dtype.kind != 'u':
        raise ValueError('expected a 2-D uint16 array, got {0} {1}'.format(
            pixels.dtype, pixels.shape))
    if not pixels.flags.c_contiguous:
        pixels = pixels.copy(order='C')
    stamp_from_ns(msg.header.stamp, stamp_ns)
    msg.header.frame_id = frame_id
    msg.height, msg.width = pixels.shape
    msg.encoding = '16UC1'
    msg.is_bigendian = is_bigendian(pixels)
    msg.step = pixels.strides[0]
    data = array.array('B')
    data.frombytes(memoryview(pixels).cast('B'))
    msg.data = data
    return msg


def camera_info_fields(width, height, intrinsics=None):
    """Return the ``CameraInfo`` fields (a dict) for a *width* x *height* depth image.

    *intrinsics* is a device's ``depth_camera`` record (keys fx, fy, cx, cy and
    optionally k1, k2, k3, p1, p2), or None for :py:data:`DEFAULT_DEPTH_INTRINSICS`.
    Missing or non-numeric keys fall back to the defaults. Distortion: plumb_bob,
    ``D = [k1, k2, p1, p2, k3]``.
    """
    values = dict(DEFAULT_DEPTH_INTRINSICS)
    if isinstance(intrinsics, dict):
        for key in values:
            value = intrinsics.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = float(value)
    fx, fy, cx, cy = values['fx'], values['fy'], values['cx'], values['cy']
    return {
        'width': int(width),
        'height': int(height),
        'distortion_model': 'plumb_bob',
        'd': [values['k1'], values['k2'], values['p1'], values['p2'], values['k3']],
        'k': [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        'r': [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        'p': [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


def fill_camera_info(msg, fields, frame_id, stamp_ns):
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
