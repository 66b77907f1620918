"""Real Kinect v2 sensors through pylibfreenect2 (libfreenect2's Python binding).

:py:class:`Freenect2Kinect` has the interface of :py:class:`~streamkinect2.mock.MockKinect`
(``unique_kinect_id`` — the sensor's serial number —, the ``on_depth_frame`` signal,
``start``/``stop``, the with-statement, ``depth_camera``), so a
:py:class:`~streamkinect2.server.Server` serves it like the mock, plus ``close()``, which
releases the sensor. pylibfreenect2 is an optional dependency: this module imports
without it, and opening a sensor without it raises one :py:class:`Freenect2Unavailable`
saying how to install it (``docs/freenect2.md``).

pylibfreenect2 (r9y9/pylibfreenect2) hands libfreenect2's C++ API through unchecked, so
this module checks what it does not:

- serial numbers are ``bytes`` to it (a ``str`` is a TypeError);
- ``openDevice`` wraps whatever libfreenect2 returns, NULL included (a sensor in use,
  without permission, on USB 2), and the first call on a NULL device segfaults:
  :py:func:`is_null_device` reads the pointer first;
- ``startStreams`` drops libfreenect2's bool: camera parameters that were never read
  (``fx <= 0``) tell that the streams did not start (:py:func:`read_depth_camera`);
- ``OpenGLPacketPipeline()`` ends the process (libfreenect2 calls ``exit(-1)``) when it
  cannot open a window: it is never built without a display, and with one it is built
  in a child process first;
- CUDA and OpenCL pipelines build without error even where they cannot process, and then
  deliver nothing: no frame within *start_timeout* seconds of the start counts as a
  pipeline failure, and the sensor is opened again with the next pipeline.

Orientation: libfreenect2's frames are mirrored (the scene's left on the image's right).
Depth, IR and colour frames from this device are un-mirrored, like kinect2_bridge's (which
flips libfreenect2's frames horizontally), the mock's and the recorded captures': a pixel
at libfreenect2's column x is at column ``width - 1 - x`` here. Depth and IR cost nothing
extra (the conversion writes the flipped view into the copy it makes anyway); colour is
copied reversed a uint32 a pixel (about 1.4 ms a frame here, a plain copy 0.3). Camera
records (:py:func:`read_depth_camera`, :py:func:`read_color_camera`) describe these
un-mirrored frames: libfreenect2's values with ``cx`` taken to ``width - 1 - cx`` and
``p2`` negated (:py:func:`.factory_model.mirror_intrinsics`), so a CameraInfo filled from
them matches the pixels; the colour record's depth-to-colour mapping terms stay
libfreenect2's own (defined on its mirrored images: :py:mod:`.factory_model` mirrors the
records back before using them).

libfreenect2 delivers depth as float32 millimetres; :py:func:`depth_to_uint16` turns it
into the uint16 millimetres of REP 118, invalid readings 0. IR comes as float32 amplitude
0-65535 (:py:func:`ir_to_uint16`), colour as 1920 x 1080 BGRX (RGBX from the Tegra
decoder: :py:func:`frame_format` reads the frame's format, which pylibfreenect2 does not
expose, and :py:func:`color_to_bgrx` swaps). Its frame timestamps count 0.125 ms ticks
(:py:data:`DEVICE_TICK_NS`) on one clock for both cameras; frames carry them as
``device_timestamp``.
"""
import ctypes
import logging
import math
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from blinker import Signal
import numpy as np
import numpy.typing as npt

from .common import send_isolated
from .device import (COLOR_HEIGHT, COLOR_WIDTH, ColorFrame, DEPTH_HEIGHT, DEPTH_WIDTH,
                     DepthFrame, DeviceLifetime, INTRINSIC_KEYS, IrFrame, STREAMS)
from .factory_model import mirror_intrinsics

__all__ = ['Freenect2Kinect', 'Freenect2Unavailable', 'color_to_bgrx', 'depth_to_uint16',
           'frame_format', 'ir_to_uint16', 'is_null_device', 'list_serials', 'open_devices',
           'pipeline_candidates', 'read_color_camera', 'read_depth_camera',
           'COLOR_MAPPING_KEYS', 'DEVICE_TICK_NS', 'FORMAT_BGRX', 'FORMAT_RGBX', 'PIPELINES']

log = logging.getLogger(__name__)

#: Packet pipelines by name, best first for ``'auto'``; each falls back to the ones after
#: it. pylibfreenect2 defines the OpenGL, OpenCL and CUDA classes only when libfreenect2
#: was built with them.
PIPELINES: Tuple[Tuple[str, str], ...] = (
    ('cuda', 'CudaPacketPipeline'), ('opencl', 'OpenCLPacketPipeline'),
    ('opengl', 'OpenGLPacketPipeline'), ('cpu', 'CpuPacketPipeline'))

#: Nanoseconds per tick of libfreenect2's frame timestamp (``Frame::timestamp``: "Unit:
#: 0.125 millisecond. Usually incrementing by 266 (30Hz) or 533 (15Hz)"), the unit of
#: this device's ``device_timestamp``.
DEVICE_TICK_NS: int = 125000

#: libfreenect2 ``Frame::Format`` values of colour frames: B, G, R, unused (the TurboJPEG,
#: VA-API and VideoToolbox decoders) or R, G, B, unused (the Tegra decoder).
FORMAT_BGRX: int = 4
FORMAT_RGBX: int = 5

#: The depth-to-colour mapping terms of libfreenect2's ``ColorCameraParams`` (besides fx,
#: fy, cx, cy), as it names them; ``Registration`` uses them.
COLOR_MAPPING_KEYS: Tuple[str, ...] = (
    'shift_d', 'shift_m',
    'mx_x3y0', 'mx_x0y3', 'mx_x2y1', 'mx_x1y2', 'mx_x2y0', 'mx_x0y2', 'mx_x1y1', 'mx_x1y0',
    'mx_x0y1', 'mx_x0y0',
    'my_x3y0', 'my_x0y3', 'my_x2y1', 'my_x1y2', 'my_x2y0', 'my_x0y2', 'my_x1y1', 'my_x1y0',
    'my_x0y1', 'my_x0y0')

#: Seconds between two looks at the listener (see :py:meth:`Freenect2Kinect._run`).
POLL_PERIOD = 0.002
#: Seconds ``stop()`` waits for the device thread (it may be reopening the sensor).
STOP_TIMEOUT = 15.0
#: Seconds the child process that tries the OpenGL pipeline may take.
OPENGL_PROBE_TIMEOUT = 30.0

INSTALL_HINT = (
    'Real Kinect v2 sensors need libfreenect2 and its Python binding pylibfreenect2: build '
    'and install libfreenect2 (https://github.com/OpenKinect/libfreenect2), then build '
    'pylibfreenect2 from its master branch against it (the 0.1.4 release on PyPI does not '
    'build with Cython 3): "pip install cython numpy wheel \'setuptools<81\'", then '
    '"LIBFREENECT2_INSTALL_PREFIX=<prefix> pip install --no-build-isolation '
    'git+https://github.com/r9y9/pylibfreenect2" (see docs/freenect2.md). Without a '
    'sensor, use the mock device instead (server node parameter device:=mock, or '
    'streamkinect2-mock-server).')

OPEN_FAILED = (
    'could not open sensor {0}: libfreenect2 returned no device. Likely causes: it is in '
    'use by another process (another server node, Protonect); it is on a USB 2 port, or on '
    'a USB 3 controller without the bandwidth (one sensor per USB 3 controller); no '
    'permission on its USB device (install the udev rules of libfreenect2, '
    'platform/linux/udev/90-kinect2.rules, then replug it). The libfreenect2 log lines '
    'above say which.')

START_FAILED = (
    'could not start sensor {0}: its {2} camera parameters read back empty (fx = {1:g}), '
    'so libfreenect2 did not start its streams (pylibfreenect2 drops the result of '
    'startStreams). Likely causes: the sensor stopped answering on USB (replug it; check '
    'its power supply and that it is on a USB 3 port); the libfreenect2 log lines above '
    'say which command failed.')

NO_FRAME = (
    'no depth frame within {0:.1f} s of start with {1}. Likely causes: the depth stream of '
    'the sensor does not get through (a USB 2 port, or a USB 3 controller shared with '
    'another sensor or without the bandwidth: the libfreenect2 log shows failed or '
    'incomplete transfers); or no pipeline can process depth on this machine.')


NO_COLOR = (
    'Kinect {0}: no colour frame for {1:.1f} s {2} while depth flows; colour is lost, depth '
    'goes on. Likely causes: the colour stream does not get through USB (a USB 3 '
    'controller without the bandwidth for both streams: the libfreenect2 log shows failed '
    'or incomplete transfers), or its JPEG decoder failed (libfreenect2 log).')


class Freenect2Unavailable(RuntimeError):
    """pylibfreenect2 cannot be used, or a sensor cannot be opened or started."""


def _import_pylibfreenect2() -> Any:
    try:
        import pylibfreenect2
    except ImportError as err:
        if getattr(err, 'name', None) == 'pylibfreenect2':
            reason = 'pylibfreenect2 is not installed ({0}). {1}'.format(err, INSTALL_HINT)
        elif getattr(err, 'name', None) == 'pkg_resources':
            reason = ('pylibfreenect2 cannot be imported: it needs pkg_resources, which '
                      'setuptools 81 and later no longer ship; install "setuptools<81" '
                      'in its environment ({0})'.format(err))
        elif 'libfreenect2' in str(err):
            reason = ('pylibfreenect2 cannot load libfreenect2 ({0}): add the lib '
                      'directory of its install prefix to LD_LIBRARY_PATH (e.g. '
                      '$HOME/freenect2/lib). {1}'.format(err, INSTALL_HINT))
        else:
            reason = 'pylibfreenect2 cannot be imported ({0}). {1}'.format(err, INSTALL_HINT)
        raise Freenect2Unavailable(reason) from None
    return pylibfreenect2


def depth_to_uint16(depth: npt.ArrayLike, min_depth: float = 500, max_depth: float = 4500,
                    out: Optional[npt.NDArray[np.uint16]] = None) -> npt.NDArray[np.uint16]:
    """Return float32 millimetres *depth* as uint16 millimetres (REP 118).

    Values are rounded to the nearest millimetre (halves to even); NaN, infinities,
    values below *min_depth* or above *max_depth* (millimetres; at most 65535) become 0,
    "no reading". *out*, a uint16 array of the same shape, is reused if given.
    """
    millimetres = np.asarray(depth, dtype=np.float32)
    low = max(float(min_depth), 0.5)   # anything that would round to 0 is no reading
    high = min(float(max_depth), 65535.0)
    if out is None:
        out = np.empty(millimetres.shape, np.uint16)
    with np.errstate(invalid='ignore'):
        valid = (millimetres >= low) & (millimetres <= high)  # False for NaN
    out[...] = 0
    np.copyto(out, np.rint(millimetres), casting='unsafe', where=valid)
    return out


def ir_to_uint16(ir: npt.ArrayLike,
                 out: Optional[npt.NDArray[np.uint16]] = None) -> npt.NDArray[np.uint16]:
    """Return libfreenect2's float32 IR amplitude *ir* (0 to 65535) as uint16.

    Rounded to the nearest integer (halves to even) and clipped to 0..65535; NaN becomes
    0. *out*, a uint16 array of the same shape, is reused if given.
    """
    amplitude = np.asarray(ir, dtype=np.float32)
    if out is None:
        out = np.empty(amplitude.shape, np.uint16)
    with np.errstate(invalid='ignore'):
        clipped = np.clip(np.rint(amplitude), 0.0, 65535.0)
    out[...] = 0
    np.copyto(out, clipped, casting='unsafe', where=~np.isnan(clipped))
    return out


class _CFrameHeader(ctypes.Structure):
    """The start of a ``libfreenect2::Frame`` (include/libfreenect2/frame_listener.hpp)."""

    _fields_ = [('vtable', ctypes.c_void_p),  # it has a virtual destructor
                ('width', ctypes.c_size_t), ('height', ctypes.c_size_t),
                ('bytes_per_pixel', ctypes.c_size_t), ('data', ctypes.c_void_p),
                ('timestamp', ctypes.c_uint32), ('sequence', ctypes.c_uint32),
                ('exposure', ctypes.c_float), ('gain', ctypes.c_float),
                ('gamma', ctypes.c_float), ('status', ctypes.c_uint32),
                ('format', ctypes.c_int)]


#: pylibfreenect2's ``cdef class Frame``: object header, Cython's vtable pointer, the
#: ``libfreenect2::Frame*``, ``bool take_ownership``, ``int frame_type``.
_FRAME_PTR_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
_FRAME_BASICSIZE = _FRAME_PTR_OFFSET + ctypes.sizeof(ctypes.c_void_p) + 8


def frame_format(frame: Any) -> Optional[int]:
    """Return the libfreenect2 ``Frame::Format`` of *frame*, a pylibfreenect2 ``Frame``.

    A binding that has a ``format`` attribute answers it; r9y9/pylibfreenect2 does not
    wrap the field, so this reads it from the C++ frame (as :py:func:`is_null_device`
    reads the device pointer), after checking that the layout is the one expected: the
    frame's width, height, bytes per pixel and data pointer where the binding says.
    Returns None when it cannot tell (another layout, a NULL frame).
    """
    value = getattr(frame, 'format', None)
    if value is not None:
        return int(value)
    cls = type(frame)
    if (platform.python_implementation() != 'CPython' or cls.__name__ != 'Frame'
            or cls.__module__ != 'pylibfreenect2.libfreenect2' or cls.__itemsize__
            or cls.__basicsize__ != _FRAME_BASICSIZE):
        return None
    pointer = ctypes.c_void_p.from_address(id(frame) + _FRAME_PTR_OFFSET).value
    if not pointer:
        return None
    header = _CFrameHeader.from_address(pointer)
    if ((header.width, header.height, header.bytes_per_pixel)
            != (frame.width, frame.height, frame.bytes_per_pixel)
            or header.data != frame.asarray(np.uint8).ctypes.data):
        return None
    return int(header.format)


def color_to_bgrx(frame: Any) -> npt.NDArray[np.uint8]:
    """Return an un-mirrored copy of the colour *frame* (a pylibfreenect2 ``Frame``), BGRX.

    (height, width, 4) uint8, C-contiguous, from ``asarray(np.uint8)`` flipped
    horizontally (libfreenect2's frames are mirrored; see the module docstring); an RGBX
    frame (libfreenect2's Tegra decoder) has its R and B swapped, any other format is
    taken as BGRX (what every other decoder gives). A copy: the frame's buffer is gone at
    the listener's release.
    """
    pixels = np.ascontiguousarray(frame.asarray(np.uint8))
    out = np.empty(pixels.shape, np.uint8)
    # The flip as one uint32 a pixel: numpy copies reversed rows of those about 6 times
    # faster than of 4-byte pixels (1.4 ms a frame instead of 10).
    np.copyto(out.view(np.uint32)[..., 0], pixels.view(np.uint32)[:, ::-1, 0])
    if frame_format(frame) == FORMAT_RGBX:
        red = out[..., 0].copy()
        out[..., 0] = out[..., 2]
        out[..., 2] = red
    return out


def _streams(streams: Optional[Iterable[str]]) -> Tuple[str, ...]:
    """Return the streams to offer for *streams* (None or empty: all), depth always in."""
    asked = [str(name).strip() for name in streams or () if str(name).strip()]
    asked = asked or list(STREAMS)
    unknown = [name for name in asked if name not in STREAMS]
    if unknown:
        raise ValueError('unknown stream(s) {0}: of {1}'.format(
            ', '.join(unknown), ', '.join(STREAMS)))
    return tuple(name for name in STREAMS if name == 'depth' or name in asked)


def _text(value: object) -> str:
    return value.decode('ascii', 'replace') if isinstance(value, bytes) else str(value)


def _serials(context: Any) -> Dict[str, bytes]:
    """Return ``{serial str: serial bytes}`` of the sensors *context* enumerates, in order."""
    raw = [context.getDeviceSerialNumber(i) for i in range(context.enumerateDevices())]
    return {_text(serial): serial for serial in raw}


def list_serials() -> List[str]:
    """Return the serial numbers (str) of the connected sensors."""
    lib = _import_pylibfreenect2()
    return list(_serials(lib.Freenect2()))


def is_null_device(device: Any) -> Optional[bool]:
    """Tell whether *device*, a pylibfreenect2 ``Freenect2Device``, wraps a NULL pointer.

    pylibfreenect2 wraps whatever libfreenect2's ``openDevice`` returns and offers no way
    to ask; the first method call on a NULL device segfaults. Its ``Freenect2Device`` is a
    Cython object holding one C pointer right after the object header: this reads it.
    Returns None for an object without that layout (it cannot tell).
    """
    cls = type(device)
    if (platform.python_implementation() != 'CPython' or cls.__itemsize__
            or cls.__basicsize__ != object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)):
        return None
    return ctypes.c_void_p.from_address(id(device) + object.__basicsize__).value is None


def read_depth_camera(params: Any, serial: str) -> Dict[str, float]:
    """Return the depth camera record of *params* (an ``IrCameraParams``) of sensor *serial*.

    The record describes this device's un-mirrored frames (module docstring).

    libfreenect2 reads the parameters from the sensor in ``startStreams``; if that failed
    (pylibfreenect2 drops its result) they were never set: ``fx`` not above 0 raises
    :py:class:`Freenect2Unavailable` naming the likely causes.
    """
    camera: Dict[str, float] = {'width': DEPTH_WIDTH, 'height': DEPTH_HEIGHT}
    for name in INTRINSIC_KEYS:
        camera[name] = float(getattr(params, name))
    if not (math.isfinite(camera['fx']) and camera['fx'] > 0):
        raise Freenect2Unavailable(START_FAILED.format(serial, camera['fx'], 'depth'))
    return mirror_intrinsics(camera, DEPTH_WIDTH)


def read_color_camera(params: Any, serial: str) -> Dict[str, float]:
    """Return the colour camera record of *params* (a ``ColorCameraParams``) of *serial*.

    ``width``, ``height``, fx, fy, cx, cy; k1, k2, k3, p1, p2 are 0 (libfreenect2 gives no
    distortion coefficients); then libfreenect2's depth-to-colour mapping terms
    (:py:data:`COLOR_MAPPING_KEYS`). Like :py:func:`read_depth_camera`, ``fx`` not above 0
    (never read: the start failed) raises :py:class:`Freenect2Unavailable`.
    """
    camera: Dict[str, float] = {'width': COLOR_WIDTH, 'height': COLOR_HEIGHT}
    for name in INTRINSIC_KEYS:
        camera[name] = float(getattr(params, name)) if name in ('fx', 'fy', 'cx', 'cy') \
            else 0.0
    for name in COLOR_MAPPING_KEYS:
        camera[name] = float(getattr(params, name))
    if not (math.isfinite(camera['fx']) and camera['fx'] > 0):
        raise Freenect2Unavailable(START_FAILED.format(serial, camera['fx'], 'colour'))
    return mirror_intrinsics(camera, COLOR_WIDTH)


def _has_display() -> bool:
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


_OPENGL_PROBE = ('import sys; sys.path.insert(0, {0!r}); import pylibfreenect2; '
                 'pylibfreenect2.OpenGLPacketPipeline()')


def _opengl_failure(lib: Any) -> Optional[str]:
    """Build an OpenGLPacketPipeline in a child process; return None, or why it failed."""
    path = os.path.dirname(os.path.dirname(os.path.abspath(lib.__file__)))
    try:
        proc = subprocess.run([sys.executable, '-c', _OPENGL_PROBE.format(path)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=OPENGL_PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return 'it did not finish within {0:.0f} s'.format(OPENGL_PROBE_TIMEOUT)
    except OSError as err:
        return str(err)
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in proc.stdout.decode('utf-8', 'replace').splitlines()
             if line.strip()]
    return 'exit status {0}: {1}'.format(proc.returncode, lines[-1] if lines else 'no output')


def pipeline_candidates(lib: Any, name: str = 'auto') -> List[str]:
    """Return the names of the packet pipelines to try for *name*, in order.

    *name* is one of cuda, opencl, opengl, cpu or auto. ``auto``: every pipeline this
    build has, best first; otherwise *name* and the ones after it (a fallback is logged).
    Left out: pipelines not in this build of pylibfreenect2, and OpenGL without a display
    or when a child process cannot build it (libfreenect2 would end this process). Raises
    ValueError for an unknown name, :py:class:`Freenect2Unavailable` if none is left.
    """
    names = [n for n, _ in PIPELINES]
    if name != 'auto' and name not in names:
        raise ValueError('unknown pipeline {0!r}: one of auto, {1}'.format(
            name, ', '.join(names)))
    candidates = []
    for candidate, class_name in PIPELINES[0 if name == 'auto' else names.index(name):]:
        if getattr(lib, class_name, None) is None:
            log.log(logging.WARNING if candidate == name else logging.DEBUG,
                    'libfreenect2 pipeline %r is not available in this build', candidate)
            continue
        if candidate == 'opengl':
            if not _has_display():
                log.log(logging.WARNING if candidate == name else logging.INFO,
                        "libfreenect2 pipeline 'opengl' needs a display (DISPLAY and "
                        'WAYLAND_DISPLAY are unset): libfreenect2 ends the process when it '
                        'cannot open its OpenGL window; skipped')
                continue
            failure = _opengl_failure(lib)
            if failure is not None:
                log.warning("libfreenect2 pipeline 'opengl' is not usable here (a child "
                            'process could not build it, %s): libfreenect2 would end this '
                            'process; skipped', failure)
                continue
        candidates.append(candidate)
    if not candidates:
        raise Freenect2Unavailable('no libfreenect2 packet pipeline can be used (asked for '
                                   '{0!r})'.format(name))
    if name != 'auto' and candidates[0] != name:
        log.warning('Falling back from pipeline %r to %r', name, candidates[0])
    return candidates


class Freenect2Kinect(DeviceLifetime):
    """A Kinect v2 sensor, opened by serial number, with the interface of ``MockKinect``.

    *streams* are those it offers (:py:attr:`streams`): ``depth`` always, ``ir`` and
    ``color`` unless left out. ``start()`` starts them (raising
    :py:class:`Freenect2Unavailable` if the sensor does not start), ``stop()`` stops them
    (``start()`` streams again), ``close()`` releases the sensor. Frames are read on the
    device's own thread: depth converted to uint16 millimetres, IR to uint16 amplitude
    (the same ``sequence`` and timestamps as the depth of that capture), colour to BGRX
    pixels; each carries the sensor's ``sequence`` and ``timestamp``
    (``device_timestamp``, :py:data:`DEVICE_TICK_NS` ns ticks, one clock for both
    cameras) and the host capture time.

    Colour has a listener of its own, apart from IR and depth (libfreenect2's
    ``SyncMultiFrameListener`` waits for every type it listens for, so colour at 15 fps in
    low light would throttle depth); the thread polls both. A colour stream silent for
    *frame_timeout* seconds (*start_timeout* before its first frame) while depth flows is
    reported once by :py:attr:`on_stream_lost` and the log, and depth goes on; it is
    reported back in the log when it comes again.

    No frame within *start_timeout* seconds of a start is a pipeline failure: the sensor
    is closed and opened again with the next of *pipeline*'s candidates (the log says
    which works). When no pipeline delivers, or no frame has come for *frame_timeout*
    seconds since the last, or the sensor fails, it is lost: closed, reported in the log
    and by :py:attr:`on_device_lost` (sender the device), and the thread ends. Use
    :py:func:`open_devices` to make them.
    """

    #: Emitted with keyword argument ``depth_frame`` for each new frame (device thread).
    on_depth_frame = Signal()
    #: Emitted with keyword argument ``ir_frame`` (an ``IrFrame``) for each capture.
    on_ir_frame = Signal()
    #: Emitted with keyword argument ``color_frame`` (a ``ColorFrame`` of BGRX pixels).
    on_color_frame = Signal()
    #: Emitted (no arguments) when the sensor stops delivering: unplugged or failed.
    on_device_lost = Signal()
    #: Emitted with keyword argument ``stream`` (``'color'``) when that stream stops while
    #: depth goes on.
    on_stream_lost = Signal()

    #: Nanoseconds per tick of ``device_timestamp`` (for pairing colour with depth).
    device_tick_ns: int = DEVICE_TICK_NS

    def __init__(self, context: Any, serial: Union[str, bytes],
                 pipeline: Union[str, Sequence[str]] = 'auto', min_depth: float = 500,
                 max_depth: float = 4500, frame_timeout: float = 2.0,
                 start_timeout: float = 5.0, lib: Any = None,
                 streams: Optional[Iterable[str]] = None) -> None:
        """Open sensor *serial* (str or bytes) through the ``Freenect2`` *context*.

        *pipeline* is a pipeline name (see :py:func:`pipeline_candidates`) or a list of
        candidate names it returned. *streams*: the streams to offer, of ``depth``, ``ir``
        and ``color`` (None or empty: all three; depth is always offered). Raises
        ValueError for an unknown stream, :py:class:`Freenect2Unavailable` if the sensor
        cannot be opened.
        """
        #: The streams offered, in the order of :py:data:`~streamkinect2.device.STREAMS`.
        self.streams: Tuple[str, ...] = _streams(streams)
        self._lib: Any = lib or _import_pylibfreenect2()
        self._context: Any = context  # libfreenect2 deletes its devices with the context
        self._serial = serial if isinstance(serial, bytes) else str(serial).encode('ascii')
        self.unique_kinect_id: str = _text(serial)
        self.min_depth: float = min_depth
        self.max_depth: float = max_depth
        self.frame_timeout = float(frame_timeout)
        self.start_timeout = float(start_timeout)
        if isinstance(pipeline, str):
            pipeline = pipeline_candidates(self._lib, pipeline)
        self._candidates = list(pipeline)
        self._lock = threading.RLock()  # the device and listener, between threads
        self._device: Optional[Any] = None  # None once closed
        self._listener: Optional[Any] = None
        self._thread: Optional[threading.Thread] = None
        self._stop_event = threading.Event()
        #: The pipeline the sensor is open with (set by ``_open``, which succeeds or raises).
        self.pipeline_name: str
        #: Intrinsics of the depth camera, read at start (None before the first start).
        self.depth_camera: Optional[Dict[str, float]] = None
        #: The colour camera record (:py:func:`read_color_camera`), read at start when
        #: colour is offered (None before).
        self.color_camera: Optional[Dict[str, float]] = None
        self._color_listener: Optional[Any] = None
        #: True once the sensor is lost (see :py:attr:`on_device_lost`).
        self.lost = False
        self._open(self._candidates)

    def _open(self, candidates: Sequence[str]) -> None:
        """Open the sensor with the first of *candidates* whose pipeline builds."""
        lib = self._lib
        for name in candidates:
            try:
                # A fresh pipeline each time: libfreenect2 owns (and deletes) the one it got.
                pipeline = getattr(lib, dict(PIPELINES)[name])()
            except Exception as err:
                log.warning('Kinect %s: libfreenect2 pipeline %r failed to build: %s',
                            self.unique_kinect_id, name, err)
                continue
            device = self._context.openDevice(self._serial, pipeline=pipeline)
            null = is_null_device(device)
            if null:
                raise Freenect2Unavailable(OPEN_FAILED.format(self.unique_kinect_id))
            if null is None:
                log.warning('Kinect %s: this pylibfreenect2 cannot be checked for a failed '
                            'open (a NULL device crashes on first use)',
                            self.unique_kinect_id)
            types = lib.FrameType.Depth | (lib.FrameType.Ir if 'ir' in self.streams else 0)
            listener = lib.SyncMultiFrameListener(int(types))
            device.setIrAndDepthFrameListener(listener)
            color_listener = None
            if 'color' in self.streams:
                color_listener = lib.SyncMultiFrameListener(int(lib.FrameType.Color))
                device.setColorFrameListener(color_listener)
            self._device, self._listener, self.pipeline_name = device, listener, name
            self._color_listener = color_listener
            log.info('Kinect %s opened with the %s pipeline', self.unique_kinect_id, name)
            return
        raise Freenect2Unavailable('could not open sensor {0}: no libfreenect2 pipeline of '
                                   '{1} could be built'.format(self.unique_kinect_id,
                                                               ', '.join(candidates)))

    def _start_streams(self) -> None:
        """Start the depth stream of the open sensor and read its camera parameters."""
        device, listener = self._device, self._listener
        if device is None or listener is None:
            raise Freenect2Unavailable('Kinect {0} is closed; open it again'.format(
                self.unique_kinect_id))
        for waiting in (listener, self._color_listener):
            # Left from before the last stop(): not this run's.
            if waiting is not None and waiting.hasNewFrame():
                waiting.release(waiting.waitForNewFrame())
        device.startStreams(self._color_listener is not None, True)
        try:
            self.depth_camera = read_depth_camera(device.getIrCameraParams(),
                                                  self.unique_kinect_id)
            if self._color_listener is not None:
                self.color_camera = read_color_camera(device.getColorCameraParams(),
                                                      self.unique_kinect_id)
        except Freenect2Unavailable:
            device.stop()
            raise

    def _close_device(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            device.stop()
            device.close()

    def start(self) -> None:
        """Start streaming depth (only warns if already running).

        Raises :py:class:`Freenect2Unavailable` if the sensor was lost or closed, or its
        streams do not start.
        """
        if self.lost:
            raise Freenect2Unavailable('Kinect {0} was lost; open it again'.format(
                self.unique_kinect_id))
        if self._thread is not None:
            log.warning('Kinect %s already running', self.unique_kinect_id)
            return
        with self._lock:
            if self._device is None:
                raise Freenect2Unavailable('Kinect {0} is closed; open it again'.format(
                    self.unique_kinect_id))
            self._start_streams()
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='Freenect2Kinect-' + self.unique_kinect_id)
        self._thread.start()

    def stop(self) -> None:
        """Stop streaming and wait for the thread; the sensor stays open for ``start()``."""
        thread = self._thread
        if thread is None:
            log.warning('Kinect %s not running', self.unique_kinect_id)
            return
        self._stop_event.set()
        if threading.current_thread() is not thread:
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                log.warning('Kinect %s: its thread is still busy after %.0f s',
                            self.unique_kinect_id, STOP_TIMEOUT)
        self._thread = None
        with self._lock:
            if self._device is not None:
                self._device.stop()

    def close(self) -> None:
        """Stop streaming if it does, and release the sensor: it cannot start again."""
        if self._thread is not None:
            self.stop()
        with self._lock:
            self._close_device()

    def _reopen(self) -> bool:
        """Open the sensor again with the next pipeline and start it; False if none is left."""
        index = self._candidates.index(self.pipeline_name)
        rest = self._candidates[index + 1:]
        if not rest:
            return False
        log.warning('Kinect %s: no depth frame within %.1f s of start with the %s pipeline; '
                    'reopening with the %s pipeline', self.unique_kinect_id,
                    self.start_timeout, self.pipeline_name, rest[0])
        with self._lock:
            if not self._stop_event.is_set():
                self._close_device()
                self._open(rest)
                self._start_streams()
        return True

    def _read_depth(self, listener: Any) -> None:
        """Take the depth (and IR) frames waiting in *listener*; emit them."""
        captured = time.time_ns()
        frames = listener.waitForNewFrame()
        try:
            depth = frames['depth']
            # [:, ::-1]: un-mirrored, written by the conversion's own copy.
            pixels = depth_to_uint16(depth.asarray(np.float32)[:, ::-1], self.min_depth,
                                     self.max_depth)
            sequence, device_time = depth.sequence, depth.timestamp
            ir = ir_to_uint16(frames['ir'].asarray(np.float32)[:, ::-1]) \
                if 'ir' in self.streams else None
        finally:
            listener.release(frames)
        send_isolated(self.on_depth_frame, self, depth_frame=DepthFrame(
            pixels, sequence=sequence, timestamp_ns=captured, device_timestamp=device_time))
        if ir is not None:
            send_isolated(self.on_ir_frame, self, ir_frame=IrFrame(
                ir, sequence=sequence, timestamp_ns=captured, device_timestamp=device_time))

    def _read_color(self, listener: Any) -> None:
        """Take the colour frame waiting in *listener*; emit it."""
        captured = time.time_ns()
        frames = listener.waitForNewFrame()
        try:
            color = frames['color']
            pixels = color_to_bgrx(color)
            sequence, device_time = color.sequence, color.timestamp
        finally:
            listener.release(frames)
        send_isolated(self.on_color_frame, self, color_frame=ColorFrame(
            pixels, sequence=sequence, timestamp_ns=captured, device_timestamp=device_time))

    def _run(self) -> None:
        started = last_frame = last_color = time.monotonic()
        streaming = False  # a depth frame has come since the start
        color_seen = False  # a colour frame has come since the start
        color_silent = False  # reported lost, not back yet
        tried = [self.pipeline_name]
        try:
            while not self._stop_event.is_set():
                listener, color_listener = self._listener, self._color_listener
                if listener is None:
                    raise Freenect2Unavailable('the sensor was closed')
                # Poll rather than block: waitForNewFrame(milliseconds=) ignores its
                # timeout in libfreenect2's default build (ENABLE_CXX11=OFF), and would
                # block for good on a silent sensor. Polling both listeners, neither
                # stream waits for the other.
                got = False
                if color_listener is not None and color_listener.hasNewFrame():
                    self._read_color(color_listener)
                    last_color, color_seen, got = time.monotonic(), True, True
                    if color_silent:
                        color_silent = False
                        log.info('Kinect %s: colour frames are back', self.unique_kinect_id)
                if listener.hasNewFrame():
                    self._read_depth(listener)
                    last_frame, got = time.monotonic(), True
                    if not streaming:
                        streaming = True
                        log.info('Kinect %s streaming depth with the %s pipeline',
                                 self.unique_kinect_id, self.pipeline_name)
                if got:
                    continue
                now = time.monotonic()
                if not streaming and now - started > self.start_timeout:
                    if not self._reopen():
                        raise Freenect2Unavailable(NO_FRAME.format(
                            self.start_timeout, 'the {0} pipeline'.format(tried[0])
                            if len(tried) == 1 else 'any pipeline ({0})'.format(
                                ', '.join(tried))))
                    tried.append(self.pipeline_name)
                    started = last_color = time.monotonic()
                    continue
                if streaming and now - last_frame > self.frame_timeout:
                    raise Freenect2Unavailable('no frame for {0:.1f} s'.format(
                        self.frame_timeout))
                color_timeout = self.frame_timeout if color_seen else max(
                    self.frame_timeout, self.start_timeout)
                # Lost only while depth flows: depth frames kept coming for the whole
                # timeout after the last colour frame (a silent sensor is lost as a whole).
                if (color_listener is not None and not color_silent
                        and last_frame - last_color > color_timeout):
                    color_silent = True
                    log.error(NO_COLOR.format(self.unique_kinect_id, now - last_color,
                                              'since the last' if color_seen else
                                              'since the start'))
                    send_isolated(self.on_stream_lost, self, stream='color')
                self._stop_event.wait(POLL_PERIOD)
        except Exception as err:
            self.lost = True
            log.error('Kinect %s lost: %s', self.unique_kinect_id, err)
            with self._lock:
                try:
                    self._close_device()
                except Exception as close_err:  # an unplugged sensor may refuse
                    log.warning('Closing Kinect %s: %s', self.unique_kinect_id, close_err)
            send_isolated(self.on_device_lost, self)


def open_devices(serials: Optional[Iterable[str]] = None, pipeline: str = 'auto',
                 min_depth: float = 500, max_depth: float = 4500, frame_timeout: float = 2.0,
                 start_timeout: float = 5.0,
                 streams: Optional[Iterable[str]] = None) -> List[Freenect2Kinect]:
    """Open the sensors with the given serial numbers (None or empty: every one).

    Each offers *streams* (see :py:class:`Freenect2Kinect`; None or empty: depth, IR and
    colour).

    A sensor that cannot be opened is logged, with the likely causes, and left out; the
    others are returned. Raises :py:class:`Freenect2Unavailable` if pylibfreenect2 is
    missing, no sensor is connected, a serial asked for is not connected (the message
    lists those that are), or none of them can be opened (the message says why for each);
    ValueError for an unknown *pipeline* or stream.
    """
    streams = _streams(streams)  # ValueError before any sensor is touched
    lib = _import_pylibfreenect2()
    context = lib.Freenect2()
    available = _serials(context)
    if not available:
        raise Freenect2Unavailable('no Kinect v2 sensor found (is it plugged into a USB 3 '
                                   'port, with the udev rules of libfreenect2 installed?)')
    # Each once: libfreenect2 hands out the same device again for a serial already open.
    wanted = list(dict.fromkeys(str(s) for s in serials)) if serials else list(available)
    missing = [s for s in wanted if s not in available]
    if missing:
        raise Freenect2Unavailable('Kinect v2 sensor(s) {0} not connected; connected: '
                                   '{1}'.format(', '.join(missing), ', '.join(available)))
    candidates = pipeline_candidates(lib, pipeline)
    devices: List[Freenect2Kinect] = []
    failures: List[str] = []
    for serial in wanted:
        try:
            devices.append(Freenect2Kinect(context, available[serial], candidates, min_depth,
                                           max_depth, frame_timeout, start_timeout, lib=lib,
                                           streams=streams))
        except Freenect2Unavailable as err:
            failures.append(str(err))
    if not devices:
        raise Freenect2Unavailable(' '.join(failures))
    for failure in failures:
        log.error('%s', failure)
    return devices
