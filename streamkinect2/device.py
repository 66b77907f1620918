"""What every device has in common: frames, sensor constants, intrinsics, lifetime.

A device is an object with the interface of :py:class:`~streamkinect2.mock.MockKinect`:
``unique_kinect_id``, an ``on_depth_frame`` signal, ``start()``/``stop()``, the
with-statement and ``is_running``; optionally ``depth_camera`` (intrinsics, see
:py:data:`KINECT2_DEFAULT_DEPTH_CAMERA`). The mock (:py:mod:`.mock`) and the real
sensors (:py:mod:`.freenect2_device`) share :py:class:`DeviceLifetime`; the server takes
any frame that honours the reference's ``DepthFrame`` contract (:py:func:`as_depth_frame`).
"""
import logging
import threading
import time
from types import TracebackType
from typing import Any, Dict, Optional, Tuple, Type, TypeVar, Union

import numpy as np
import numpy.typing as npt

__all__ = ['DepthFrame', 'IrFrame', 'ColorFrame', 'DeviceLifetime', 'as_depth_frame',
           'streams_of', 'STREAMS', 'DEPTH_WIDTH', 'DEPTH_HEIGHT', 'COLOR_WIDTH',
           'COLOR_HEIGHT', 'QHD_WIDTH', 'QHD_HEIGHT', 'KINECT2_DEFAULT_DEPTH_CAMERA',
           'MOCK_CALIBRATION', 'INTRINSIC_KEYS', 'DepthData']

log = logging.getLogger(__name__)

#: What a frame's pixels may be given as: a uint16 array, or a buffer of uint16 values.
DepthData = Union[npt.NDArray[np.uint16], bytes, bytearray, memoryview]
_Device = TypeVar('_Device', bound='DeviceLifetime')

#: Width of a Kinect v2 depth (and IR) frame in pixels.
DEPTH_WIDTH: int = 512
#: Height of a Kinect v2 depth (and IR) frame in pixels.
DEPTH_HEIGHT: int = 424

#: The keys of a camera's intrinsics record, besides ``width`` and ``height``: pixels for
#: fx, fy, cx, cy; Brown-Conrady distortion k1, k2, k3 radial and p1, p2 tangential.
INTRINSIC_KEYS: Tuple[str, ...] = ('fx', 'fy', 'cx', 'cy', 'k1', 'k2', 'k3', 'p1', 'p2')

#: Depth (IR) camera intrinsics used when a device reports none of its own: the factory
#: calibration of one Kinect v2 as read by libfreenect2's ``getIrCameraParams()``, for a
#: 512 x 424 image. Every unit differs a little; a real device's record replaces them.
#: This is the one table of default intrinsics: the mock reports it, and the client node
#: falls back on it.
KINECT2_DEFAULT_DEPTH_CAMERA: Dict[str, float] = {
    'width': DEPTH_WIDTH, 'height': DEPTH_HEIGHT,
    'fx': 365.456, 'fy': 365.456, 'cx': 254.878, 'cy': 205.395,
    'k1': 0.0905474, 'k2': -0.26819, 'k3': 0.0950862, 'p1': 0.0, 'p2': 0.0,
}

#: Width and height of a Kinect v2 colour frame (full HD), and of its half ("qhd").
COLOR_WIDTH = 1920
COLOR_HEIGHT = 1080
QHD_WIDTH = 960
QHD_HEIGHT = 540

#: The streams a Kinect v2 offers, in the order they are listed: depth and IR come from
#: one capture of the time-of-flight camera; colour from the other camera.
STREAMS = ('depth', 'ir', 'color')

#: The calibration of one real Kinect v2 (serial 504476242542), as iai_kinect2's
#: calibration tool measured it (the sensor of the synchronised captures in
#: ``shared/data/rgbd``): what the mock reports, so that its colour, IR and depth agree
#: with each other as a real sensor's do. ``depth_camera`` and ``color_camera`` are
#: intrinsics (pixels; plumb_bob k1, k2, k3, p1, p2); ``ir_to_color`` takes points from
#: the IR (depth) camera's frame to the colour camera's: ``rotation`` (row-major 3 x 3)
#: and ``translation`` (metres); ``depth_shift_mm`` is what iai_kinect2 adds to every
#: depth of this sensor.
MOCK_CALIBRATION: Dict[str, Any] = {
    'depth_camera': {
        'width': DEPTH_WIDTH, 'height': DEPTH_HEIGHT,
        'fx': 378.41655563165887, 'fy': 383.19185607185238,
        'cx': 253.66891565288495, 'cy': 190.05466139352319,
        'k1': 0.10208314569573707, 'k2': -0.20310303005835004,
        'p1': -0.011251726612173270, 'p2': 0.0036372169693193522,
        'k3': -0.11137810763396604,
    },
    'color_camera': {
        'width': COLOR_WIDTH, 'height': COLOR_HEIGHT,
        'fx': 1067.4586432328520, 'fy': 1069.9125049102161,
        'cx': 983.57081291721704, 'cy': 531.84671199465856,
        'k1': 0.025501409985990094, 'k2': 0.038819256285229690,
        'p1': 0.00092345753510083292, 'p2': -0.0019774788619851872,
        'k3': -0.13117005680130259,
    },
    'ir_to_color': {
        'rotation': [0.99994077229087008, -0.0022001837794224954, 0.010658850860912497,
                     0.0027440565071297682, 0.99868041210963254, -0.051282595706733533,
                     -0.010531954435150566, 0.051308806845135002, 0.99862729998528710],
        'translation': [-0.052575448041434783, 0.0037233566365695511,
                        -0.028112385927105611],
    },
    'depth_shift_mm': 25.494991387182466,
}


def streams_of(device: Any) -> Tuple[str, ...]:
    """Return the streams *device* offers: its ``streams``, or ``('depth',)`` (reference API)."""
    streams = getattr(device, 'streams', None)
    if not streams:
        return ('depth',)
    return tuple(name for name in STREAMS if name in streams)


class DepthFrame(object):
    """A single frame of depth data.

    ``data``: Python buffer-like object pointing to raw frame data as a C-ordered
    array of uint16 (a numpy array of shape ``(height, width)``).

    ``shape``: pair giving the width and height of the depth frame.

    Beyond the reference API a frame also carries ``sequence`` (the device's frame
    counter), ``timestamp_ns`` / ``timestamp`` (host capture time in nanoseconds /
    seconds since the UNIX epoch) and ``device_timestamp`` (the sensor's own clock, 0 if
    it has none).
    """

    __slots__ = ('data', 'shape', 'sequence', 'timestamp_ns', 'device_timestamp')

    data: npt.NDArray[np.uint16]
    shape: Tuple[int, int]
    sequence: int
    timestamp_ns: int
    device_timestamp: int

    def __init__(self, data: DepthData, shape: Optional[Tuple[int, int]] = None,
                 sequence: int = 0, timestamp_ns: Optional[int] = None,
                 device_timestamp: int = 0) -> None:
        """Wrap *data* (2-D uint16 array, or buffer with *shape* = (width, height))."""
        array: npt.NDArray[Any]
        if isinstance(data, np.ndarray):
            array = data
        else:
            array = np.frombuffer(data, dtype=np.uint16)
        if shape is not None:
            width, height = (int(v) for v in shape)
            if array.size != width * height:
                raise ValueError('depth data holds {0} values, shape {1}x{2} needs {3}'.format(
                    array.size, width, height, width * height))
            array = array.reshape(height, width)
        if array.ndim != 2 or array.dtype != np.uint16:
            raise ValueError('depth data must be a 2-D uint16 array, got {0} {1}'.format(
                array.dtype, array.shape))
        self.data = np.ascontiguousarray(array)
        self.shape = (self.data.shape[1], self.data.shape[0])
        self.sequence = int(sequence)
        self.timestamp_ns = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
        self.device_timestamp = int(device_timestamp)

    @property
    def array(self) -> npt.NDArray[np.uint16]:
        """Return the pixels as a numpy array of shape ``(height, width)``, uint16."""
        return self.data

    @property
    def timestamp(self) -> float:
        """Capture time in seconds since the UNIX epoch."""
        return self.timestamp_ns * 1e-9

    def __repr__(self) -> str:
        """Describe the frame briefly."""
        return '<DepthFrame {0}x{1} seq={2}>'.format(self.shape[0], self.shape[1],
                                                     self.sequence)


class IrFrame(DepthFrame):
    """A single frame of IR amplitude: 2-D uint16, the contract of :py:class:`DepthFrame`.

    It comes from the same capture of the time-of-flight camera as the depth frame with
    the same ``sequence`` and timestamps. Amplitude saturates at 65535.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        """Describe the frame briefly."""
        return '<IrFrame {0}x{1} seq={2}>'.format(self.shape[0], self.shape[1],
                                                  self.sequence)


class ColorFrame(object):
    """A single colour image, as JPEG bytes, as pixels, or both.

    A device makes one from ``pixels``: an (height, width, 4) BGRX or (height, width, 3)
    BGR uint8 array (or from the sensor's own JPEG, when it has it: ``jpeg``). A client
    makes one from the ``jpeg`` bytes it received. ``data`` is the JPEG bytes if there
    are any, else the pixels; :py:attr:`array` is the (height, width, 3) BGR pixels,
    decoded from the JPEG the first time it is asked for, and only then (a client that
    forwards JPEG never decodes). ``shape`` is (width, height). ``sequence``,
    ``timestamp_ns``/``timestamp`` and ``device_timestamp`` as in :py:class:`DepthFrame`;
    ``paired`` is True when they are those of the depth and IR capture this colour frame
    was paired with (nearest in device time, within half a frame period).
    """

    __slots__ = ('jpeg', '_pixels', 'shape', 'sequence', 'timestamp_ns', 'device_timestamp',
                 'paired', '_decoding')

    def __init__(self, pixels: Any = None, jpeg: Optional[bytes] = None,
                 shape: Optional[Tuple[int, int]] = None, sequence: int = 0,
                 timestamp_ns: Optional[int] = None, device_timestamp: int = 0,
                 paired: bool = False) -> None:
        """Wrap *pixels* and/or *jpeg* (at least one; *shape* is needed with *jpeg* alone)."""
        if pixels is None and jpeg is None:
            raise ValueError('a colour frame needs pixels or JPEG bytes')
        if pixels is not None:
            pixels = np.asarray(pixels)
            if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
                raise ValueError('colour pixels must be (height, width, 3 or 4) uint8, got '
                                 '{0} {1}'.format(pixels.dtype, pixels.shape))
            shape = (pixels.shape[1], pixels.shape[0])
        elif shape is None:
            raise ValueError('a colour frame of JPEG bytes alone needs its shape')
        self.jpeg = jpeg
        self._pixels = pixels
        self.shape = (int(shape[0]), int(shape[1]))
        self.sequence = int(sequence)
        self.timestamp_ns = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
        self.device_timestamp = int(device_timestamp)
        self.paired = bool(paired)
        self._decoding = threading.Lock()

    @property
    def data(self) -> Any:
        """Return the JPEG bytes if there are any, else the pixels."""
        return self.jpeg if self.jpeg is not None else self._pixels

    @property
    def pixels(self) -> Optional[npt.NDArray[np.uint8]]:
        """Return the pixels as they were given or decoded (None before decoding)."""
        return self._pixels

    @property
    def array(self) -> npt.NDArray[np.uint8]:
        """Return the (height, width, 3) BGR pixels, decoding the JPEG the first time.

        Threads asking at once (a node publishing the Image while its registration
        worker takes the same frame) wait for one decoding.
        """
        if self._pixels is None:
            with self._decoding:
                if self._pixels is None:
                    import simplejpeg
                    assert self.jpeg is not None
                    self._pixels = simplejpeg.decode_jpeg(self.jpeg, colorspace='BGR')
        pixels = self._pixels
        return pixels[:, :, :3] if pixels.shape[2] == 4 else pixels

    @property
    def timestamp(self) -> float:
        """Capture time in seconds since the UNIX epoch."""
        return self.timestamp_ns * 1e-9

    def __repr__(self) -> str:
        """Describe the frame briefly."""
        return '<ColorFrame {0}x{1} seq={2}{3}>'.format(
            self.shape[0], self.shape[1], self.sequence, '' if self.paired else ' unpaired')


def as_depth_frame(frame: Any, sequence: Optional[int] = None) -> DepthFrame:
    """Return *frame* as a :py:class:`DepthFrame`, or raise ValueError saying why not.

    *frame* may be any object with the reference API's contract: ``data``, a C-ordered
    uint16 buffer, and ``shape``, ``(width, height)``. ``sequence``, ``timestamp_ns`` and
    ``device_timestamp`` are taken from it when it has them; otherwise the sequence is
    *sequence* (the caller's count), the timestamp the time of this call and the device
    timestamp 0.
    """
    if isinstance(frame, DepthFrame):
        return frame
    try:
        data, shape = frame.data, frame.shape
    except AttributeError:
        raise ValueError('a depth frame needs "data" and "shape", got {0}'.format(
            type(frame).__name__)) from None
    try:
        width, height = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError('depth frame shape must be (width, height), got {0!r}'.format(
            shape)) from None
    if not isinstance(data, np.ndarray):
        try:
            data = np.frombuffer(data, dtype=np.uint16)
        except (TypeError, ValueError) as err:
            raise ValueError('depth frame data is not a uint16 buffer: {0}'.format(
                err)) from None
    elif data.dtype != np.uint16:
        raise ValueError('depth frame data must be uint16, got {0}'.format(data.dtype))
    seq = getattr(frame, 'sequence', None)
    if seq is None:
        seq = 0 if sequence is None else sequence
    return DepthFrame(np.ravel(data), shape=(width, height), sequence=seq,
                      timestamp_ns=getattr(frame, 'timestamp_ns', None),
                      device_timestamp=getattr(frame, 'device_timestamp', 0) or 0)


class DeviceLifetime(object):
    """``is_running`` and the with-statement for devices that run a ``_thread``.

    Subclasses provide ``start()`` and ``stop()`` and set ``_thread`` while running. A
    device whose thread ends by itself (an error it cannot recover from) must report
    ``is_running`` False: :py:attr:`is_running` asks the thread, not a flag.
    """

    _thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Start the device (subclasses do it)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the device (subclasses do it)."""
        raise NotImplementedError

    @property
    def is_running(self) -> bool:
        """Tell whether the device thread runs."""
        thread = self._thread
        return thread is not None and (not isinstance(thread, threading.Thread)
                                       or thread.is_alive())

    def __enter__(self: _Device) -> _Device:
        """Start the device."""
        self.start()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        """Stop the device if it still runs."""
        if self._thread is not None:
            self.stop()


class RecurringErrorLog(object):
    """Log an error that may recur every frame: at most once per *period* seconds.

    The first occurrence is logged with its traceback; later ones within *period* are
    only counted, and the count is reported with the next one logged. Thread-safe enough
    for one thread per instance (a device or compressor thread).
    """

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        """Log to *logger* (a :py:class:`logging.Logger`)."""
        self.logger = logger
        self.period = float(period)
        self.count = 0
        self._suppressed = 0
        self._next = 0.0

    def error(self, message: str, *args: Any) -> None:
        """Log ``message % args`` with the current exception, unless logged lately."""
        self.count += 1
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self.period
        if self._suppressed:
            message += ' (and %d more like it in the last %.0f s)'
            args += (self._suppressed, self.period)
            self._suppressed = 0
        self.logger.error(message, *args, exc_info=True)
