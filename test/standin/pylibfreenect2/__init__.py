"""A stand-in for pylibfreenect2, for the tests only: the real API, no hardware.

It follows pylibfreenect2 (r9y9/pylibfreenect2 master, ``pylibfreenect2/__init__.py`` and
``pylibfreenect2/libfreenect2.pyx``: a Cython binding that hands libfreenect2's C++
objects through unchecked) and, under it, libfreenect2 (OpenKinect/libfreenect2 master:
``src/libfreenect2.cpp``, ``src/frame_listener_impl.cpp``, ``src/packet_pipeline.cpp``),
point by point; what each piece does and where that comes from is said beside it. The
parts that need no sensor (types, signatures, return values, errors) are checked against
the real binding by ``test/test_freenect2_real.py``; this stand-in exists for the parts
that need one: frames arriving, a sensor that cannot be opened or started, an unplug.

Where the real binding would crash the process (a NULL device or frame, a frame used
after ``release()``, a pipeline handed to libfreenect2 twice), the stand-in raises
:py:class:`WouldCrash`, a ``BaseException`` that no ``except Exception`` can swallow; where
libfreenect2 calls ``exit(-1)`` (the OpenGL pipeline without a window) it raises
``SystemExit(255)``.

Sensors are scripted by the test through :py:data:`SCENARIO` (or, for a process started
by the test, the environment variable ``STANDIN_FREENECT2``, JSON: see
:py:func:`_scenario_from_env`).
"""
import enum
import json
import os
import sys
import threading
import weakref

import numpy as np

__all__ = ['FrameType', 'LoggerLevel', 'Frame', 'FrameMap', 'FrameListener',
           'SyncMultiFrameListener', 'IrCameraParams', 'ColorCameraParams',
           'Freenect2Device', 'Freenect2',
           'PacketPipeline', 'CpuPacketPipeline', 'SCENARIO', 'Sensor', 'WouldCrash']

__version__ = '0.1.5.dev0'

DEPTH_WIDTH, DEPTH_HEIGHT = 512, 424
COLOR_WIDTH, COLOR_HEIGHT = 1920, 1080

#: libfreenect2 ``Frame::Format`` (frame_listener.hpp): set by the processors, not
#: wrapped by pylibfreenect2 (its Frame has no ``format``).
FORMAT_INVALID, FORMAT_FLOAT, FORMAT_BGRX, FORMAT_RGBX = 0, 2, 4, 5

#: libfreenect2 ``Frame::timestamp``: "Unit: 0.125 millisecond. Usually incrementing by
#: 266 (30Hz) or 533 (15Hz)" (include/libfreenect2/frame_listener.hpp).
TICKS_PER_SECOND = 8000


class WouldCrash(BaseException):
    """Raised where the real binding would crash the process (segfault, use after free)."""


class FrameType(enum.IntEnum):
    """pylibfreenect2/__init__.py: ``FrameType(IntEnum)``, libfreenect2's Frame::Type."""

    Color = 1
    Ir = 2
    Depth = 4


class LoggerLevel(enum.IntEnum):
    """pylibfreenect2/__init__.py: ``LoggerLevel(IntEnum)``, libfreenect2's Logger::Level."""

    NONE = 0
    Error = 1
    Warning = 2  # noqa: A003 (the real name)
    Info = 3
    Debug = 4


def _float32(value):
    """Convert as Cython does for a C float: a str is a TypeError, not parsed."""
    if isinstance(value, (str, bytes)):
        raise TypeError('must be real number, not {0}'.format(type(value).__name__))
    return float(np.float32(float(value)))


class _CFrame(object):
    """A ``libfreenect2::Frame``: a buffer and its metadata (uint32, float32 fields)."""

    def __init__(self, width, height, bytes_per_pixel, data=None):
        self.width, self.height = int(width), int(height)
        self.bytes_per_pixel = int(bytes_per_pixel)
        size = self.width * self.height * self.bytes_per_pixel
        self.data = np.zeros(size, np.uint8) if data is None else data
        self.timestamp = self.sequence = 0
        self.exposure = self.gain = self.gamma = 0.0
        self.status = 0
        self.format = FORMAT_INVALID  # Frame::Format; the processors set it
        self.deleted = False

    def delete(self):
        """``delete frame``: the memory goes back to the allocator (garbage from now on)."""
        self.deleted = True
        self.data[...] = 0xAB


class Frame(object):
    """pyx ``cdef class Frame``: a ``libfreenect2::Frame*`` and read-only properties.

    ``Frame(width, height, bytes_per_pixel)`` allocates a frame of its own; a frame from
    a :py:class:`FrameMap` only points at the listener's, which ``release()`` deletes.
    ``asarray(np.float32)`` is a (height, width) view of the buffer, ``asarray(np.uint8)`` a
    (height, width, 4) one (pyx ``__uint8_data``: always 4 bytes a pixel).
    """

    def __init__(self, width=None, height=None, bytes_per_pixel=None, frame_type=-1,
                 numpy_array=None):
        """Wrap nothing (a NULL frame), or allocate *width* x *height* x *bytes_per_pixel*."""
        sizes = (width, height, bytes_per_pixel)
        # pyx: assert all_none or all_not_none
        assert all(v is None for v in sizes) or all(v is not None for v in sizes)
        self._frame_type = int(frame_type)
        self._ptr = None
        if width is not None:
            data = None
            if numpy_array is not None:
                array = np.asarray(numpy_array)
                if array.dtype != np.float32 or array.ndim != 2:
                    raise ValueError('Buffer dtype mismatch, expected float32_t, ndim 2')
                data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            self._ptr = _CFrame(width, height, bytes_per_pixel, data)

    def _c(self):
        if self._ptr is None:
            raise WouldCrash('NULL libfreenect2::Frame* dereferenced (a FrameMap key the '
                             'listener did not deliver): the real binding segfaults')
        if self._ptr.deleted:
            raise WouldCrash('libfreenect2::Frame used after the listener released it')
        return self._ptr

    timestamp = property(lambda self: self._c().timestamp,
                         doc='``uint32``: device clock, 0.125 ms ticks.')
    sequence = property(lambda self: self._c().sequence, doc='``uint32`` frame counter.')
    width = property(lambda self: self._c().width, doc='Pixels per line.')
    height = property(lambda self: self._c().height, doc='Lines.')
    bytes_per_pixel = property(lambda self: self._c().bytes_per_pixel, doc='Bytes a pixel.')
    exposure = property(lambda self: self._c().exposure, doc='float32.')
    gain = property(lambda self: self._c().gain, doc='float32.')
    gamma = property(lambda self: self._c().gamma, doc='float32.')

    def asarray(self, dtype=None):
        """Return a view of the frame's buffer (valid until the listener's ``release``)."""
        if dtype is None and self._frame_type < 0:
            raise ValueError('Cannot determine type of data. Specify dtype explicitly.')
        if dtype is None:
            dtype = np.uint8 if self._frame_type == FrameType.Color else np.float32
        if dtype != np.uint8 and dtype != np.float32:
            raise ValueError('np.uint8 or np.float32 is only supported')
        frame = self._c()
        data = frame.data[:frame.height * frame.width * 4]
        if dtype == np.uint8:
            return data.reshape(frame.height, frame.width, 4)
        return data.view(np.float32).reshape(frame.height, frame.width)


def _frame_type_of(key):
    """Map *key* as pyx ``intenum_to_frame_type`` / ``str_to_int_frame_type`` do."""
    if isinstance(key, str):
        key = {'color': FrameType.Color, 'ir': FrameType.Ir,
               'depth': FrameType.Depth}.get(key.lower())
    if key is None or key not in (1, 2, 4):
        raise ValueError('Not supported')
    return FrameType(key)


class FrameMap(object):
    """pyx ``cdef class FrameMap`` over ``std::map<Frame::Type, Frame*>``.

    ``frames['depth']``, ``frames[FrameType.Depth]`` or ``frames[4]``; other str or int
    keys raise ValueError, other types KeyError. A type the listener did not deliver is
    *not* an error: ``std::map::operator[]`` inserts a NULL pointer and the pyx wraps it,
    so the returned frame crashes on first use.
    """

    def __init__(self, take_ownership=False):
        """Make an empty map."""
        self._map = {}
        self._take_ownership = bool(take_ownership)

    def __getitem__(self, key):
        """Return the frame of *key* (a NULL frame when the map has none)."""
        if not isinstance(key, (int, str)):
            raise KeyError('')
        frame_type = _frame_type_of(key)
        ptr = self._map.setdefault(frame_type, None)
        frame = Frame(frame_type=int(key) if isinstance(key, int) else int(frame_type))
        frame._ptr = ptr
        return frame


class FrameListener(object):
    """pyx ``cdef class FrameListener``: the base the device's setters accept."""


class SyncMultiFrameListener(FrameListener):
    """libfreenect2::SyncMultiFrameListener (src/frame_listener_impl.cpp), as the pyx wraps it.

    - Frames of a type not in *frame_types* are refused (``onNewFrame`` returns false).
    - A frame map is ready when every subscribed type has a frame; until then (and only
      until ``waitForNewFrame`` takes it) a newer frame of a type replaces the older.
    - From ``waitForNewFrame`` until ``release()``, every new frame is dropped.
    - ``waitForNewFrame(frame_map=None, milliseconds=-1)``: with ``milliseconds >= 0`` it
      waits that long and returns None on timeout, but only in a libfreenect2 built with
      ENABLE_CXX11=ON (``SCENARIO.cxx11``); the default build ignores the timeout and
      blocks until a frame comes. The timed path does not mark the frame unreleased
      (as in libfreenect2).
    """

    def __init__(self, frame_types=FrameType.Color | FrameType.Ir | FrameType.Depth):
        """Listen for *frame_types*, a bit mask of FrameType (``unsigned int``)."""
        if not isinstance(frame_types, int):
            raise TypeError("'{0}' object cannot be interpreted as an integer".format(
                type(frame_types).__name__))
        if frame_types < 0:
            raise OverflowError("can't convert negative value to unsigned int")
        self._subscribed = int(frame_types)
        self._ready = 0
        self._next = {}
        self._released = True
        self._cond = threading.Condition()

    def _on_new_frame(self, frame_type, frame):
        """libfreenect2 ``onNewFrame``: True if the listener took the frame."""
        if not self._subscribed & frame_type:
            return False
        with self._cond:
            if not self._released:
                return False
            old = self._next.get(frame_type)
            if old is not None:
                old.delete()
            self._next[frame_type] = frame
            self._ready |= frame_type
            self._cond.notify_all()
        return True

    def _has_new_frame(self):
        return self._ready == self._subscribed

    def hasNewFrame(self):
        """Return True when every subscribed frame type has a frame waiting."""
        with self._cond:
            return self._has_new_frame()

    def waitForNewFrame(self, frame_map=None, milliseconds=-1):
        """Wait for a frame map (see the class); return it, or None on a timeout."""
        if frame_map is not None and not isinstance(frame_map, FrameMap):
            raise TypeError("Argument 'frame_map' has incorrect type")
        milliseconds = int(milliseconds)
        owned = frame_map is None
        if owned:
            frame_map = FrameMap(take_ownership=False)
        with self._cond:
            if milliseconds >= 0 and SCENARIO.cxx11:
                if not self._cond.wait_for(self._has_new_frame, milliseconds / 1000.0):
                    timed_out = True
                else:
                    timed_out = False
                    self._take(frame_map)
            else:
                while not self._has_new_frame():
                    self._cond.wait()
                timed_out = False
                self._take(frame_map)
                self._released = False
        if not timed_out:
            return frame_map
        if owned:
            self.release(frame_map)
        return None

    def _take(self, frame_map):
        frame_map._map = dict(self._next)
        self._next = {}
        self._ready = 0

    def release(self, frame_map):
        """Delete the map's frames (their buffers are garbage from now on) and clear it."""
        for frame in frame_map._map.values():
            if frame is not None:
                frame.delete()
        frame_map._map.clear()
        with self._cond:
            self._released = True


class IrCameraParams(object):
    """libfreenect2::Freenect2Device::IrCameraParams: fx, fy, cx, cy, k1, k2, k3, p1, p2.

    C floats (float32), settable; all 0 in a fresh one. A device's are read from the
    sensor by ``startStreams``; before (or when it failed) they are never set.
    """

    _NAMES = ('fx', 'fy', 'cx', 'cy', 'k1', 'k2', 'k3', 'p1', 'p2')

    def __init__(self, *args, **kwargs):
        """Make a zeroed parameter set (arguments are ignored, as by the Cython class)."""
        for name in self._NAMES:
            setattr(self, name, 0.0)

    def __setattr__(self, name, value):
        """Store *value* as a C float."""
        if name not in self._NAMES:
            raise AttributeError(name)
        object.__setattr__(self, name, _float32(value))


class ColorCameraParams(object):
    """libfreenect2::Freenect2Device::ColorCameraParams as the pyx wraps it.

    fx, fy, cx, cy, then the depth-to-colour mapping terms shift_d, shift_m, mx_x3y0 ...
    my_x0y0 (libfreenect2.hpp; ``Registration`` uses them); no distortion coefficients.
    C floats, settable; all 0 in a fresh one, and in a device's until ``startStreams``
    read them (after the IR ones).
    """

    _NAMES = ('fx', 'fy', 'cx', 'cy', 'shift_d', 'shift_m',
              'mx_x3y0', 'mx_x0y3', 'mx_x2y1', 'mx_x1y2', 'mx_x2y0', 'mx_x0y2', 'mx_x1y1',
              'mx_x1y0', 'mx_x0y1', 'mx_x0y0',
              'my_x3y0', 'my_x0y3', 'my_x2y1', 'my_x1y2', 'my_x2y0', 'my_x0y2', 'my_x1y1',
              'my_x1y0', 'my_x0y1', 'my_x0y0')

    def __init__(self, *args, **kwargs):
        """Make a zeroed parameter set (arguments are ignored, as by the Cython class)."""
        for name in self._NAMES:
            setattr(self, name, 0.0)

    def __setattr__(self, name, value):
        """Store *value* as a C float."""
        if name not in self._NAMES:
            raise AttributeError(name)
        object.__setattr__(self, name, _float32(value))


#: Colour camera parameters of one Kinect v2 as libfreenect2 reads them (the defaults of
#: a scripted sensor).
DEFAULT_COLOR_PARAMS = {
    'fx': 1081.37, 'fy': 1081.37, 'cx': 959.5, 'cy': 539.5, 'shift_d': 863.0,
    'shift_m': 52.0, 'mx_x3y0': 0.000449, 'mx_x0y3': 1.91e-05, 'mx_x2y1': 4.28e-05,
    'mx_x1y2': 0.000243, 'mx_x2y0': -0.00129, 'mx_x0y2': 0.000337, 'mx_x1y1': 0.00144,
    'mx_x1y0': 0.640, 'mx_x0y1': 0.00473, 'mx_x0y0': 0.132, 'my_x3y0': 4.5e-05,
    'my_x0y3': 0.000727, 'my_x2y1': 0.000168, 'my_x1y2': 5.84e-05, 'my_x2y0': 0.000323,
    'my_x0y2': -0.00175, 'my_x1y1': 0.000671, 'my_x1y0': -0.00455, 'my_x0y1': 0.640,
    'my_x0y0': 0.0142}


class PacketPipeline(object):
    """pyx ``cdef class PacketPipeline``; libfreenect2 owns (and deletes) one handed to it."""

    name = None
    _owned_by_device = False

    def _hand_over(self):
        if self._owned_by_device:
            raise WouldCrash('a PacketPipeline handed to openDevice twice: libfreenect2 '
                             'owns (and deletes) it, so this is a use after free')
        self._owned_by_device = True


class CpuPacketPipeline(PacketPipeline):
    """Always compiled in (pyx ``cdef class CpuPacketPipeline``)."""

    name = 'cpu'

    def __init__(self):
        """Make the pipeline (no arguments)."""


def _has_display():
    return bool(os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY'))


class _OpenGLPacketPipeline(PacketPipeline):
    """opengl_packet_pipeline.pxi: ``OpenGLPacketPipeline(debug=False)``.

    libfreenect2's OpenGLDepthPacketProcessor constructor calls ``exit(-1)`` when GLFW
    cannot initialise (no display) or cannot open its window (no OpenGL 3.1): the process
    ends. ``SCENARIO.gl_window`` False scripts a display without a usable OpenGL.
    """

    name = 'opengl'

    def __init__(self, debug=False):
        """Make the pipeline, or end the process as libfreenect2 does."""
        if not _has_display():
            sys.stderr.write('[Error] [OpenGLDepthPacketProcessor] Failed to initialize '
                             'GLFW.\n')
            raise SystemExit(255)
        if not SCENARIO.gl_window:
            sys.stderr.write('[Error] [OpenGLDepthPacketProcessor] Failed to create opengl '
                             'window.\n')
            raise SystemExit(255)


class _OpenCLPacketPipeline(PacketPipeline):
    """opencl_packet_pipeline.pxi: ``OpenCLPacketPipeline(device_id=-1)``; never raises."""

    name = 'opencl'

    def __init__(self, device_id=-1):
        """Make the pipeline (an unusable OpenCL device only shows as missing frames)."""


class _OpenCLKdePacketPipeline(_OpenCLPacketPipeline):
    """opencl_kde_packet_pipeline.pxi: ``OpenCLKdePacketPipeline(device_id=-1)``."""

    name = 'openclkde'


class _CudaPacketPipeline(PacketPipeline):
    """cuda_packet_pipeline.pxi: ``CudaPacketPipeline(device_id=-1)``; never raises."""

    name = 'cuda'

    def __init__(self, device_id=-1):
        """Make the pipeline (an unusable CUDA device only shows as missing frames)."""


_COMPILED_IN = {
    'OpenGLPacketPipeline': ('opengl', _OpenGLPacketPipeline),
    'OpenCLPacketPipeline': ('opencl', _OpenCLPacketPipeline),
    'OpenCLKdePacketPipeline': ('opencl', _OpenCLKdePacketPipeline),
    'CudaPacketPipeline': ('cuda', _CudaPacketPipeline),
}
for _name, (_, _cls) in _COMPILED_IN.items():
    _cls.__name__ = _cls.__qualname__ = _name
del _name, _, _cls


def _default_pipeline():
    """libfreenect2 ``createDefaultPacketPipeline``: OpenGL, else CUDA, else OpenCL, else CPU."""
    for name in ('OpenGLPacketPipeline', 'CudaPacketPipeline', 'OpenCLPacketPipeline'):
        if _COMPILED_IN[name][0] in SCENARIO.pipelines:
            return _COMPILED_IN[name][1]()
    return CpuPacketPipeline()


class Sensor(object):
    """A scripted Kinect v2 on the (imaginary) USB bus.

    Every image (*frames*, *ir_frames*, *color_frames*) is given, and delivered, as
    libfreenect2 hands it out: mirrored (the backend flips it; kinect2_bridge does too).
    *frames* is a list of (424, 512) float32 arrays delivered in turn (cycled) at *fps*,
    each with an IR frame before it (as libfreenect2's depth processors do), timestamps
    in 0.125 ms ticks (*timestamp_step* a frame; by default 8000 / *fps* rounded down:
    266 at 30 Hz) and sequence numbers from *first_sequence*. After *unplug_after* frames
    the sensor goes silent as an unplugged one does (USB transfers stop; libfreenect2
    reports it only in its log, the listener just waits). *open_fails*: libfreenect2
    cannot open it (busy, permissions, USB 2). *start_fails*: ``startStreams`` fails (it
    stops answering), so its camera parameters are never read.

    IR: *ir_frames*, (424, 512) float32 amplitude 0-65535 (libfreenect2's range), cycled
    in step with *frames* (the IR of the same capture: same sequence and timestamp);
    default all 1000.0. Colour (when ``startStreams`` enables it and a colour listener is
    set): *color_frames*, (1080, 1920, 4) uint8 BGRX pixels cycled at *color_fps* (30, or
    15 in low light; default *fps*, at most 30), with their own sequence numbers from
    *first_sequence* and timestamps on the same 0.125 ms clock as depth. The decoder's
    format is *color_format*: ``FORMAT_BGRX`` (TurboJPEG, VA-API) or ``FORMAT_RGBX``
    (Tegra; the frame then holds R, G, B, X). *color_stops_after*: colour frames before
    the colour stream goes silent while depth goes on. *color_params*: the
    ``ColorCameraParams`` startStreams reads.
    """

    def __init__(self, serial, frames, fps=30.0, ir_params=None, unplug_after=None,
                 timestamp_step=None, first_sequence=1000, open_fails=False,
                 start_fails=False, ir_frames=None, color_frames=None, color_fps=None,
                 color_format=FORMAT_BGRX, color_params=None, color_stops_after=None):
        """Describe the sensor."""
        self.serial = serial
        self.frames = [np.ascontiguousarray(f, dtype=np.float32) for f in frames]
        self.ir_frames = None if ir_frames is None else [
            np.ascontiguousarray(f, dtype=np.float32) for f in ir_frames]
        self._color_frames = None if color_frames is None else [
            np.ascontiguousarray(f, dtype=np.uint8) for f in color_frames]
        self.color_fps = float(color_fps or min(float(fps), 30.0))  # 30 fps at most
        self.color_format = int(color_format)
        self.color_params = dict(color_params or DEFAULT_COLOR_PARAMS)
        self.color_stops_after = color_stops_after
        self.color_delivered = 0  # colour frames that left the sensor, across opens
        self.fps = float(fps)
        self.ir_params = dict(ir_params or {'fx': 366.1, 'fy': 366.2, 'cx': 258.3,
                                            'cy': 207.4, 'k1': 0.091, 'k2': -0.271,
                                            'k3': 0.094, 'p1': 0.0011, 'p2': -0.0007})
        self.unplug_after = unplug_after
        if timestamp_step is None:
            timestamp_step = int(TICKS_PER_SECOND / self.fps)
        self.timestamp_step = timestamp_step
        self.first_sequence = first_sequence
        self.open_fails = open_fails
        self.start_fails = start_fails
        self.delivered = 0  # frames that left the sensor, across opens
        self.holder = None  # the _Device that has it open
        self.calls = []

    @property
    def color_frames(self):
        """Return the BGRX colour frames (by default a synthetic gradient, made on first use)."""
        if self._color_frames is None:
            rows = np.arange(COLOR_HEIGHT, dtype=np.uint16)[:, None]
            columns = np.arange(COLOR_WIDTH, dtype=np.uint16)[None, :]
            frame = np.empty((COLOR_HEIGHT, COLOR_WIDTH, 4), np.uint8)
            frame[..., 0] = columns % 256
            frame[..., 1] = rows % 256
            frame[..., 2] = (rows + columns) % 251
            frame[..., 3] = 255
            self._color_frames = [frame]
        return self._color_frames


class _Scenario(object):
    """What the stand-in pretends is connected and compiled in."""

    def __init__(self):
        self.reset()

    def reset(self, sensors=(), pipelines=('cpu',), unusable=(), gl_window=True,
              cxx11=False):
        """Script the world.

        *pipelines*: the optional pipelines compiled in (opengl, opencl, cuda; the CPU one
        always is). *unusable*: pipelines whose processor cannot run here (a CUDA or
        OpenCL device that is missing or broken): libfreenect2 skips their packets, so
        no frame comes. *gl_window* False: a display without a usable OpenGL 3.1.
        *cxx11*: libfreenect2 built with ENABLE_CXX11=ON (waitForNewFrame's timeout works).
        """
        self.sensors = list(sensors)
        self.pipelines = set(pipelines)
        self.unusable = set(unusable)
        self.gl_window = gl_window
        self.cxx11 = cxx11
        self.opened = []


#: The scripted world; tests call ``SCENARIO.reset(sensors=[...], pipelines=[...])``.
SCENARIO = _Scenario()


def _scenario_from_env():
    """Script the world from ``STANDIN_FREENECT2`` (for processes the test starts).

    JSON: ``{"pipelines": ["cpu"], "unusable": [], "gl_window": true, "cxx11": false,
    "sensors": [{"serial": "...", "fps": 30, "values": [...], "ir_params": {...},
    "unplug_after": null, "open_fails": false, "start_fails": false, "ir_values": [...],
    "color_fps": 30, "color_format": 4, "color_stops_after": null, "color_params": {...}}]}``;
    each sensor's frames are 512 x 424 filled row by row with its ``values`` repeated
    (frame k rolled by k columns, for k in 0..7, delivered in turn), its IR frames likewise
    from ``ir_values`` (default all 1000.0); colour is the default gradient.
    """
    spec = os.environ.get('STANDIN_FREENECT2')
    if not spec:
        return
    spec = json.loads(spec)
    sensors = []
    for item in spec.get('sensors', []):
        base = np.resize(np.array(item.get('values', [1000.0]), np.float32),
                         (DEPTH_HEIGHT, DEPTH_WIDTH))
        frames = [np.roll(base, k, axis=1) for k in range(8)]
        ir_frames = None
        if item.get('ir_values'):
            ir_base = np.resize(np.array(item['ir_values'], np.float32),
                                (DEPTH_HEIGHT, DEPTH_WIDTH))
            ir_frames = [np.roll(ir_base, k, axis=1) for k in range(8)]
        sensors.append(Sensor(item['serial'], frames, fps=item.get('fps', 30.0),
                              ir_params=item.get('ir_params'),
                              unplug_after=item.get('unplug_after'),
                              open_fails=item.get('open_fails', False),
                              start_fails=item.get('start_fails', False),
                              ir_frames=ir_frames, color_fps=item.get('color_fps'),
                              color_format=item.get('color_format', FORMAT_BGRX),
                              color_params=item.get('color_params'),
                              color_stops_after=item.get('color_stops_after')))
    SCENARIO.reset(sensors, spec.get('pipelines', ['cpu']), spec.get('unusable', []),
                   spec.get('gl_window', True), spec.get('cxx11', False))


class _Device(object):
    """A ``libfreenect2::Freenect2DeviceImpl``: Created -> Open -> Streaming -> Open -> Closed.

    ``startStreams`` only starts an Open device and returns false otherwise (the pyx
    drops the bool); ``stop`` only stops a Streaming one; ``close`` stops first and
    detaches the listeners; a closed device stays closed.
    """

    def __init__(self, context, sensor, pipeline):
        self.context = weakref.ref(context)  # a plain pointer: it does not keep it alive
        self.sensor = sensor
        self.pipeline = pipeline
        self.state = 'Created'
        self.listener = None
        self.color_listener = None
        self.ir_params = IrCameraParams()
        self.color_params = ColorCameraParams()
        self.firmware = b'<unknown>'
        self.deleted = False
        self._thread = None
        self._color_thread = None
        self._stop = threading.Event()

    def open_device(self):
        if self.sensor.open_fails:
            return False
        self.state = 'Open'
        self.sensor.holder = self
        return True

    def start_streams(self, rgb, depth):
        self.sensor.calls.append('startStreams({0}, {1})'.format(bool(rgb), bool(depth)))
        if self.state != 'Open' or self.sensor.start_fails or self._unplugged():
            return False
        params = IrCameraParams()
        for name, value in self.sensor.ir_params.items():
            setattr(params, name, value)
        self.ir_params = params
        # libfreenect2.cpp startStreams reads the RGB camera parameters after the depth
        # ones, whether or not colour is enabled.
        color_params = ColorCameraParams()
        for name, value in self.sensor.color_params.items():
            setattr(color_params, name, value)
        self.color_params = color_params
        self.firmware = b'2.3.3913.0.7'
        self.state = 'Streaming'
        self._stop.clear()
        if depth:
            self._thread = threading.Thread(target=self._stream, daemon=True,
                                            name='standin-freenect2-' + self.sensor.serial)
            self._thread.start()
        if rgb:
            self._color_thread = threading.Thread(
                target=self._stream_color, daemon=True,
                name='standin-freenect2-color-' + self.sensor.serial)
            self._color_thread.start()
        return True

    def _unplugged(self):
        return _is_unplugged(self.sensor)

    def _stream(self):
        sensor = self.sensor
        period = 1.0 / sensor.fps
        while not self._stop.wait(period):
            if self._unplugged():
                return  # unplugged: nothing arrives any more
            count = sensor.delivered
            sensor.delivered += 1
            if self.pipeline.name in SCENARIO.unusable:
                continue  # the processor cannot run: libfreenect2 skips the packet
            listener = self.listener
            if listener is None:
                continue
            data = sensor.frames[count % len(sensor.frames)]
            ir = np.full_like(data, 1000.0) if sensor.ir_frames is None else \
                sensor.ir_frames[count % len(sensor.ir_frames)]
            for frame_type, pixels in ((FrameType.Ir, ir), (FrameType.Depth, data)):
                frame = _CFrame(DEPTH_WIDTH, DEPTH_HEIGHT, 4,
                                pixels.copy().reshape(-1).view(np.uint8))
                frame.format = FORMAT_FLOAT
                frame.timestamp = (count * sensor.timestamp_step) & 0xFFFFFFFF
                frame.sequence = (sensor.first_sequence + count) & 0xFFFFFFFF
                listener._on_new_frame(frame_type, frame)

    def _stream_color(self):
        """Stream colour: decoded JPEG frames at the colour camera's rate."""
        sensor = self.sensor
        period = 1.0 / sensor.color_fps
        while not self._stop.wait(period):
            if self._unplugged():
                return
            if (sensor.color_stops_after is not None
                    and sensor.color_delivered >= sensor.color_stops_after):
                continue  # the colour stream went silent; depth goes on
            count = sensor.color_delivered
            sensor.color_delivered += 1
            listener = self.color_listener
            if listener is None:
                continue
            bgrx = sensor.color_frames[count % len(sensor.color_frames)]
            data = np.empty_like(bgrx)
            if sensor.color_format == FORMAT_RGBX:
                data[..., 0], data[..., 1] = bgrx[..., 2], bgrx[..., 1]
                data[..., 2], data[..., 3] = bgrx[..., 0], bgrx[..., 3]
            else:
                data[...] = bgrx
            frame = _CFrame(COLOR_WIDTH, COLOR_HEIGHT, 4, data.reshape(-1))
            frame.format = sensor.color_format
            # One device clock for both cameras: the tick count depth has reached.
            frame.timestamp = (sensor.delivered * sensor.timestamp_step) & 0xFFFFFFFF
            frame.sequence = (sensor.first_sequence + count) & 0xFFFFFFFF
            frame.exposure, frame.gain, frame.gamma = 12.5, 1.0, 1.0
            listener._on_new_frame(FrameType.Color, frame)

    def stop(self):
        self.sensor.calls.append('stop')
        if self.state != 'Streaming':
            return False
        self._stop.set()
        for thread in (self._thread, self._color_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(5.0)
        self._thread = self._color_thread = None
        self.state = 'Open'
        return True

    def close(self):
        self.sensor.calls.append('close')
        if self.state == 'Closed':
            return True
        if self.state == 'Streaming':
            self.stop()
        self.listener = self.color_listener = None
        self.state = 'Closed'
        if self.sensor.holder is self:
            self.sensor.holder = None
        return True


class Freenect2Device(object):
    """pyx ``cdef class Freenect2Device``: one ``libfreenect2::Freenect2Device*``, unchecked.

    Like the Cython object, it holds a single pointer right after the object header
    (``__slots__``: an unset slot is a NULL pointer), so code that inspects the pointer
    sees the same layout in both. Every method of a NULL device crashes.
    """

    __slots__ = ('_ptr',)

    def _impl(self):
        try:
            device = self._ptr
        except AttributeError:
            device = None
        if device is None:
            raise WouldCrash('method called on a NULL Freenect2Device (openDevice failed): '
                             'the real binding segfaults')
        if device.deleted:
            raise WouldCrash('Freenect2Device used after its Freenect2 context was deleted')
        return device

    def getSerialNumber(self):
        """Return the serial number (bytes)."""
        return self._impl().sensor.serial.encode()

    def getFirmwareVersion(self):
        """Return the firmware version (bytes; ``<unknown>`` until startStreams)."""
        return self._impl().firmware

    def getIrCameraParams(self):
        """Return a copy of the IR (depth) camera parameters startStreams read."""
        params = IrCameraParams()
        for name in IrCameraParams._NAMES:
            setattr(params, name, getattr(self._impl().ir_params, name))
        return params

    def getColorCameraParams(self):
        """Return a copy of the colour camera parameters startStreams read."""
        params = ColorCameraParams()
        for name in ColorCameraParams._NAMES:
            setattr(params, name, getattr(self._impl().color_params, name))
        return params

    def setColorFrameListener(self, listener):
        """Set the listener of colour frames."""
        self._listener_arg(listener)
        device = self._impl()
        device.sensor.calls.append('setColorFrameListener')
        device.color_listener = listener

    def setIrAndDepthFrameListener(self, listener):
        """Set the listener of IR and depth frames."""
        self._listener_arg(listener)
        device = self._impl()
        device.sensor.calls.append('setIrAndDepthFrameListener')
        device.listener = listener

    @staticmethod
    def _listener_arg(listener):
        if listener is None:  # Cython lets None through a typed argument
            raise WouldCrash('None listener dereferenced: the real binding segfaults')
        if not isinstance(listener, FrameListener):
            raise TypeError("Argument 'listener' has incorrect type")

    def start(self):
        """``startStreams(True, True)``; returns None (the pyx drops libfreenect2's bool)."""
        self._impl().start_streams(True, True)

    def startStreams(self, rgb, depth):
        """Start the streams; returns None, so a failure (or a device not open) is silent."""
        self._impl().start_streams(rgb, depth)

    def stop(self):
        """Stop the streams (nothing if not streaming); returns None."""
        self._impl().stop()

    def close(self):
        """Close the device (stopping it first); it cannot start again. Returns None."""
        self._impl().close()


def _null_device():
    return Freenect2Device()  # _ptr unset: NULL


class Freenect2(object):
    """libfreenect2::Freenect2: enumerates and opens the sensors; owns what it opened.

    Deleting it deletes its devices (libfreenect2 ``clearDevices``): a device wrapper
    used after its context is gone crashes.
    """

    def __init__(self):
        """Make a context (enumeration happens on first need)."""
        self._enumerated = None
        self._devices = []

    def _bus(self):
        if self._enumerated is None:
            self._enumerated = [s for s in SCENARIO.sensors if not _is_unplugged(s)]
        return self._enumerated

    def enumerateDevices(self):
        """Enumerate again; return the number of sensors connected."""
        self._enumerated = None
        return len(self._bus())

    def getDeviceSerialNumber(self, idx):
        """Return the serial of sensor *idx* (bytes), ``b''`` for an index out of range."""
        if not isinstance(idx, int):
            raise TypeError("'{0}' object cannot be interpreted as an integer".format(
                type(idx).__name__))
        bus = self._bus()
        if idx < 0 or idx >= len(bus):
            return b''
        return bus[idx].serial.encode()

    def getDefaultDeviceSerialNumber(self):
        """Return the first sensor's serial (``b''`` when none)."""
        return self.getDeviceSerialNumber(0)

    def openDevice(self, name, pipeline=None):
        """Open a sensor by serial (bytes) or index (int); a NULL device when it cannot.

        A str serial raises TypeError (Cython's ``std::string`` conversion: "expected
        bytes, str found"); anything else ValueError. The pipeline (a fresh one each
        time) passes to libfreenect2, which deletes it if the open fails.
        """
        if pipeline is not None and not isinstance(pipeline, PacketPipeline):
            raise TypeError("Argument 'pipeline' has incorrect type (expected "
                            'pylibfreenect2.libfreenect2.PacketPipeline, got {0})'.format(
                                type(pipeline).__name__))
        if isinstance(name, int):
            index = name
        elif isinstance(name, bytes):
            index = None
        elif isinstance(name, str):
            raise TypeError('expected bytes, str found')
        else:
            raise ValueError('device name must be of str, bytes or integer type')
        if pipeline is None:
            pipeline = _default_pipeline()
        pipeline._hand_over()
        bus = self._bus()
        if index is None:
            matches = [i for i, s in enumerate(bus) if s.serial.encode() == name]
            if not matches:
                return _null_device()
            index = matches[0]
        if index < 0:
            raise WouldCrash('openDevice with a negative index reads before the device list '
                             'of libfreenect2')
        if index >= len(bus):
            return _null_device()  # "requested device N is not connected!"
        sensor = bus[index]
        holder = sensor.holder
        wrapper = Freenect2Device()
        if holder is not None and holder.state != 'Closed':
            if holder.context() is self:
                wrapper._ptr = holder  # "device ... is already be open!": the same device
                return wrapper
            return wrapper  # libusb: interfaces claimed by another context: NULL
        device = _Device(self, sensor, pipeline)
        if not device.open_device():
            return wrapper
        self._devices.append(device)
        SCENARIO.opened.append(device)
        wrapper._ptr = device
        return wrapper

    def openDefaultDevice(self, pipeline=None):
        """Open the first sensor."""
        return self.openDevice(0, pipeline)

    def __del__(self):
        """Delete the devices this context opened (closing them), as libfreenect2 does."""
        for device in self._devices:
            if device.state != 'Closed':
                device.close()
            device.deleted = True


def _is_unplugged(sensor):
    return sensor.unplug_after is not None and sensor.delivered >= sensor.unplug_after


def __getattr__(name):
    """Pipelines other than the CPU one exist only when compiled in (pyx ``IF`` blocks)."""
    if name in _COMPILED_IN and _COMPILED_IN[name][0] in SCENARIO.pipelines:
        return _COMPILED_IN[name][1]
    raise AttributeError("module 'pylibfreenect2' has no attribute {0!r}".format(name))


_scenario_from_env()
