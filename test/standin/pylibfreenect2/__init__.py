"""A stand-in for pylibfreenect2, for the tests only: the real API surface, no hardware.

It mirrors pylibfreenect2 (r9y9/pylibfreenect2, ``pylibfreenect2/libfreenect2.pyx`` and
``pylibfreenect2/__init__.py``), the Cython binding of libfreenect2's C++ API, name for
name: ``Freenect2``, ``Freenect2Device``, ``SyncMultiFrameListener``, ``FrameMap``,
``Frame``, ``FrameType``, ``IrCameraParams`` and the packet pipelines. What each piece
does, and where that behaviour comes from, is said beside it. Sensors are scripted by the
test through :py:data:`SCENARIO` (or, for a node in a subprocess, the environment variable
``STANDIN_FREENECT2``, JSON: see :py:func:`_scenario_from_env`).
"""
import enum
import json
import os
import threading

import numpy as np

__all__ = ['FrameType', 'Frame', 'FrameMap', 'SyncMultiFrameListener', 'IrCameraParams',
           'Freenect2Device', 'Freenect2', 'PacketPipeline', 'CpuPacketPipeline',
           'SCENARIO', 'Sensor']

DEPTH_WIDTH, DEPTH_HEIGHT = 512, 424


class FrameType(enum.IntEnum):
    """pylibfreenect2/__init__.py: ``FrameType(IntEnum)``, libfreenect2's Frame::Type."""

    Color = 1
    Ir = 2
    Depth = 4


class Frame(object):
    """libfreenect2::Frame as pylibfreenect2 wraps it.

    Depth is ``float32`` millimetres, 512 x 424 (libfreenect2 docs, Frame::Type Depth:
    "4 bytes of float per pixel", "unit: millimeter", non-positive, NaN and infinity mean
    invalid). ``timestamp`` is the device's clock ("roughly or exactly 0.1 millisecond"
    units) and ``sequence`` the device's frame counter, both ``uint32`` in libfreenect2.
    ``asarray(np.float32)`` returns a (height, width) view of the frame's own buffer, valid
    until the listener's ``release`` (pyx: ``PyArray_SimpleNewFromData`` on ``ptr.data``).
    """

    def __init__(self, data, timestamp, sequence, frame_type=FrameType.Depth):
        """Wrap *data*, a (424, 512) float32 array."""
        self._data = data
        self.timestamp = int(timestamp) & 0xFFFFFFFF
        self.sequence = int(sequence) & 0xFFFFFFFF
        self.width = data.shape[1]
        self.height = data.shape[0]
        self.bytes_per_pixel = 4
        self.exposure = self.gain = self.gamma = 0.0
        self._frame_type = frame_type
        self.released = False

    def asarray(self, dtype=None):
        """Return the pixels: float32 (height, width) for IR and depth, as in the pyx."""
        if self.released:  # the real buffer would be recycled by then
            raise RuntimeError('stand-in: frame used after release()')
        if dtype is None and self._frame_type in (FrameType.Ir, FrameType.Depth):
            dtype = np.float32
        if dtype not in (np.float32, np.uint8):
            raise ValueError('np.uint8 or np.float32 is only supported')
        return self._data if dtype == np.float32 else self._data.view(np.uint8)


class FrameMap(object):
    """libfreenect2::FrameMap: ``frames['depth']``, ``frames[FrameType.Depth]`` or ``[4]``."""

    def __init__(self, take_ownership=False):
        """Make an empty map (pyx: ``FrameMap(take_ownership=False)``)."""
        self._frames = {}

    def __getitem__(self, key):
        """Return the frame of *key* (str, FrameType or int); KeyError otherwise."""
        if isinstance(key, str):
            key = {'color': FrameType.Color, 'ir': FrameType.Ir,
                   'depth': FrameType.Depth}.get(key.lower())
            if key is None:
                raise ValueError('Not supported')
        return self._frames[FrameType(key)]


class FrameListener(object):
    """Base of the listeners (pyx: ``cdef class FrameListener``)."""


class SyncMultiFrameListener(FrameListener):
    """libfreenect2::SyncMultiFrameListener: waits until every requested type has a frame.

    ``waitForNewFrame(frame_map=None)`` blocks with no timeout (this pyx version has no
    ``milliseconds`` argument), so callers poll ``hasNewFrame()`` first. A frame that
    arrives while the previous one is unreleased replaces it (libfreenect2 keeps only the
    newest frame per type in the listener).
    """

    def __init__(self, frame_types=FrameType.Color | FrameType.Ir | FrameType.Depth):
        """Listen for *frame_types* (a bit mask of FrameType)."""
        self.frame_types = int(frame_types)
        self._cond = threading.Condition()
        self._pending = None

    def _deliver(self, frame):
        with self._cond:
            self._pending = frame
            self._cond.notify_all()

    def hasNewFrame(self):
        """Return True if a frame is waiting."""
        with self._cond:
            return self._pending is not None

    def waitForNewFrame(self, frame_map=None):
        """Block until a frame is waiting and return it in a FrameMap."""
        frame_map = FrameMap() if frame_map is None else frame_map
        with self._cond:
            while self._pending is None:
                self._cond.wait()
            frame_map._frames[FrameType.Depth] = self._pending
            self._pending = None
        return frame_map

    def release(self, frame_map):
        """Give the frames back to libfreenect2 (their buffers become invalid)."""
        for frame in frame_map._frames.values():
            frame.released = True
        frame_map._frames.clear()


class IrCameraParams(object):
    """libfreenect2::Freenect2Device::IrCameraParams: fx, fy, cx, cy, k1, k2, k3, p1, p2."""

    def __init__(self, **values):
        """Set the parameters (floats)."""
        for name in ('fx', 'fy', 'cx', 'cy', 'k1', 'k2', 'k3', 'p1', 'p2'):
            setattr(self, name, float(values.get(name, 0.0)))


class PacketPipeline(object):
    """Base of the pipelines; a pipeline passed to openDevice is owned by the device."""

    name = None


class CpuPacketPipeline(PacketPipeline):
    """Always compiled in (pyx: ``cdef class CpuPacketPipeline``)."""

    name = 'cpu'


class Sensor(object):
    """A scripted Kinect v2 for the stand-in.

    *frames* is a list of (424, 512) float32 arrays delivered in turn (cycled) at *fps*;
    after *unplug_after* frames the sensor goes silent as an unplugged one does (USB
    transfers stop; libfreenect2 reports it only in its log, the listener just waits).
    """

    def __init__(self, serial, frames, fps=30.0, ir_params=None, unplug_after=None,
                 timestamp_step=333, first_sequence=1000):
        """Describe the sensor."""
        self.serial = serial
        self.frames = [np.ascontiguousarray(f, dtype=np.float32) for f in frames]
        self.fps = fps
        self.ir_params = dict(ir_params or {'fx': 366.1, 'fy': 366.2, 'cx': 258.3,
                                            'cy': 207.4, 'k1': 0.091, 'k2': -0.271,
                                            'k3': 0.094, 'p1': 0.0011, 'p2': -0.0007})
        self.unplug_after = unplug_after
        self.timestamp_step = timestamp_step
        self.first_sequence = first_sequence
        self.calls = []


class _Scenario(object):
    """What the stand-in pretends is connected and compiled in."""

    def __init__(self):
        self.reset()

    def reset(self, sensors=(), pipelines=('cpu',)):
        self.sensors = list(sensors)
        self.pipelines = set(pipelines)
        self.opened = []


#: The scripted world; tests call ``SCENARIO.reset(sensors=[...], pipelines=[...])``.
SCENARIO = _Scenario()


def _scenario_from_env():
    """Script the sensors from ``STANDIN_FREENECT2`` (for nodes run as subprocesses).

    JSON: ``{"pipelines": ["cpu"], "sensors": [{"serial": "...", "fps": 30, "values":
    [...], "ir_params": {...}, "unplug_after": null}]}``; each sensor's frames are 512 x
    424 filled row by row with its ``values`` repeated (frame k rolled by k columns, for k
    in 0..7, delivered in turn).
    """
    spec = os.environ.get('STANDIN_FREENECT2')
    if not spec:
        return
    spec = json.loads(spec)
    sensors = []
    for item in spec.get('sensors', []):
        base = np.resize(np.array(item['values'], np.float32), (DEPTH_HEIGHT, DEPTH_WIDTH))
        frames = [np.roll(base, k, axis=1) for k in range(8)]
        sensors.append(Sensor(item['serial'], frames, fps=item.get('fps', 30.0),
                              ir_params=item.get('ir_params'),
                              unplug_after=item.get('unplug_after')))
    SCENARIO.reset(sensors, spec.get('pipelines', ['cpu']))


class Freenect2Device(object):
    """libfreenect2::Freenect2Device (pyx: a pointer owned by Freenect2)."""

    def __init__(self, sensor, pipeline):
        """Wrap the scripted *sensor*."""
        self._sensor = sensor
        self.pipeline = pipeline
        self._listener = None
        self._thread = None
        self._stop = threading.Event()
        self.started = self.closed = False

    def getSerialNumber(self):
        """Return the serial number (bytes: a C++ std::string in the pyx)."""
        return self._sensor.serial.encode()

    def getFirmwareVersion(self):
        """Return a firmware version string (bytes)."""
        return b'2.3.3913.0.7'

    def getIrCameraParams(self):
        """Return the IR (depth) camera intrinsics read from the device."""
        return IrCameraParams(**self._sensor.ir_params)

    def setColorFrameListener(self, listener):
        """Set the colour listener (unused: depth only here)."""
        self._sensor.calls.append('setColorFrameListener')

    def setIrAndDepthFrameListener(self, listener):
        """Set the listener for IR and depth frames."""
        self._sensor.calls.append('setIrAndDepthFrameListener')
        self._listener = listener

    def start(self):
        """Start every stream, as libfreenect2 does: colour and depth both."""
        self.startStreams(True, True)

    def startStreams(self, rgb, depth):
        """Start the streams; depth frames flow to the listener from libfreenect2's thread."""
        self._sensor.calls.append('startStreams({0}, {1})'.format(bool(rgb), bool(depth)))
        if self.closed:
            raise RuntimeError('stand-in: device closed')
        self.started = True
        if depth and self._listener is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._stream, daemon=True,
                                            name='standin-freenect2-' + self._sensor.serial)
            self._thread.start()

    def _stream(self):
        sensor = self._sensor
        period = 1.0 / sensor.fps
        count = 0
        while not self._stop.is_set():
            if sensor.unplug_after is not None and count >= sensor.unplug_after:
                return  # unplugged: nothing arrives any more
            data = sensor.frames[count % len(sensor.frames)].copy()
            self._listener._deliver(Frame(data, count * sensor.timestamp_step,
                                          sensor.first_sequence + count))
            count += 1
            self._stop.wait(period)

    def stop(self):
        """Stop the streams."""
        self._sensor.calls.append('stop')
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.started = False

    def close(self):
        """Close the device (libfreenect2 stops the streams first if needed)."""
        if self.started:
            self.stop()
        self._sensor.calls.append('close')
        self.closed = True


class Freenect2(object):
    """libfreenect2::Freenect2: enumerates and opens the sensors."""

    def enumerateDevices(self):
        """Return the number of sensors connected."""
        return len(SCENARIO.sensors)

    def getDeviceSerialNumber(self, idx):
        """Return the serial of sensor *idx* (bytes)."""
        return SCENARIO.sensors[idx].serial.encode()

    def getDefaultDeviceSerialNumber(self):
        """Return the first sensor's serial (bytes)."""
        return self.getDeviceSerialNumber(0)

    def openDevice(self, name, pipeline=None):
        """Open a sensor by serial (str or bytes) or index (int).

        libfreenect2 returns NULL when it cannot open the device, and pylibfreenect2 does
        not check (a later call would crash): the stand-in raises instead, so that a test
        that lets this happen fails loudly. Callers open only enumerated serials.
        """
        if isinstance(name, bytes):
            name = name.decode()
        if isinstance(name, int):
            sensor = SCENARIO.sensors[name]
        else:
            matches = [s for s in SCENARIO.sensors if s.serial == name]
            if not matches:
                raise RuntimeError('stand-in: openDevice({0!r}) would return NULL'.format(
                    name))
            sensor = matches[0]
        device = Freenect2Device(sensor, pipeline)
        SCENARIO.opened.append(device)
        return device

    def openDefaultDevice(self, pipeline=None):
        """Open the first sensor."""
        return self.openDevice(0, pipeline)


def __getattr__(name):
    """Pipelines other than the CPU one exist only when compiled in (pyx ``IF`` blocks)."""
    classes = {'OpenGLPacketPipeline': 'opengl', 'OpenCLPacketPipeline': 'opencl',
               'CudaPacketPipeline': 'cuda'}
    if name in classes and classes[name] in SCENARIO.pipelines:
        return type(name, (PacketPipeline,), {'name': classes[name]})
    raise AttributeError(name)


_scenario_from_env()
