"""Real Kinect v2 sensors through pylibfreenect2 (libfreenect2's Python binding).

:py:class:`Freenect2Kinect` has the interface of :py:class:`~streamkinect2.mock.MockKinect`
(``unique_kinect_id`` — the sensor's serial number —, the ``on_depth_frame`` signal,
``start``/``stop``, the with-statement, ``depth_camera``), so a
:py:class:`~streamkinect2.server.Server` serves it like the mock. pylibfreenect2 is an
optional dependency: this module imports without it, and opening a sensor without it
raises one :py:class:`Freenect2Unavailable` saying how to install it (``docs/freenect2.md``).

libfreenect2 delivers depth as float32 millimetres; :py:func:`depth_to_uint16` turns it
into the uint16 millimetres of REP 118, invalid readings 0.
"""
import logging
import threading
import time

from blinker import Signal
import numpy as np

from .common import send_isolated
from .device import DEPTH_HEIGHT, DEPTH_WIDTH, DepthFrame, DeviceLifetime

__all__ = ['Freenect2Kinect', 'Freenect2Unavailable', 'depth_to_uint16', 'list_serials',
           'open_devices', 'PIPELINES']

log = logging.getLogger(__name__)

#: Packet pipelines by name, best first for ``'auto'``; each falls back to the ones after
#: it. pylibfreenect2 defines the OpenGL, OpenCL and CUDA classes only when libfreenect2
#: was built with them.
PIPELINES = (('cuda', 'CudaPacketPipeline'), ('opencl', 'OpenCLPacketPipeline'),
             ('opengl', 'OpenGLPacketPipeline'), ('cpu', 'CpuPacketPipeline'))

INSTALL_HINT = (
    'Real Kinect v2 sensors need libfreenect2 and its Python binding pylibfreenect2: build '
    'and install libfreenect2 (https://github.com/OpenKinect/libfreenect2), then '
    '"LIBFREENECT2_INSTALL_PREFIX=<prefix> pip install pylibfreenect2" (see '
    'docs/freenect2.md). Without a sensor, use the mock device instead (server node '
    'parameter device:=mock, or streamkinect2-mock-server).')


class Freenect2Unavailable(RuntimeError):
    """pylibfreenect2 cannot be imported, or no sensor matches what was asked for."""


def _import_pylibfreenect2():
    try:
        import pylibfreenect2
    except ImportError as err:
        raise Freenect2Unavailable('pylibfreenect2 is not installed ({0}). {1}'.format(
            err, INSTALL_HINT)) from None
    return pylibfreenect2


def depth_to_uint16(depth, min_depth=500, max_depth=4500, out=None):
    """Return float32 millimetres *depth* as uint16 millimetres (REP 118).

    Values are rounded to the nearest millimetre (halves to even); NaN, infinities,
    values below *min_depth* or above *max_depth* (millimetres; at most 65535) become 0,
    "no reading". *out*, a uint16 array of the same shape, is reused if given.
    """
    depth = np.asarray(depth, dtype=np.float32)
    low = max(float(min_depth), 0.5)   # anything that would round to 0 is no reading
    high = min(float(max_depth), 65535.0)
    if out is None:
        out = np.empty(depth.shape, np.uint16)
    with np.errstate(invalid='ignore'):
        valid = (depth >= low) & (depth <= high)  # False for NaN
    out[...] = 0
    np.copyto(out, np.rint(depth), casting='unsafe', where=valid)
    return out


def list_serials():
    """Return the serial numbers (str) of the connected sensors."""
    lib = _import_pylibfreenect2()
    context = lib.Freenect2()
    return [_text(context.getDeviceSerialNumber(i)) for i in range(context.enumerateDevices())]


def _text(value):
    return value.decode('ascii', 'replace') if isinstance(value, bytes) else str(value)


def make_pipeline(lib, name='auto'):
    """Return ``(pipeline, chosen name)``: *name*, or the next available after it.

    *name* is one of cuda, opencl, opengl, cpu or auto (the best available).
    """
    names = [n for n, _ in PIPELINES]
    if name != 'auto' and name not in names:
        raise ValueError('unknown pipeline {0!r}: one of auto, {1}'.format(
            name, ', '.join(names)))
    start = 0 if name == 'auto' else names.index(name)
    for candidate, class_name in PIPELINES[start:]:
        cls = getattr(lib, class_name, None)
        if cls is None:
            if candidate == name:
                log.warning('libfreenect2 pipeline %r is not available in this build', name)
            continue
        try:
            pipeline = cls()
        except Exception as err:  # e.g. no GPU context
            log.warning('libfreenect2 pipeline %r failed to start: %s', candidate, err)
            continue
        if candidate != name and name != 'auto':
            log.warning('Falling back from pipeline %r to %r', name, candidate)
        log.info('Using libfreenect2 %s pipeline', candidate)
        return pipeline, candidate
    raise Freenect2Unavailable('no libfreenect2 packet pipeline could be created')


class Freenect2Kinect(DeviceLifetime):
    """A Kinect v2 sensor, opened by serial number, with the interface of ``MockKinect``.

    Frames are read on the device's own thread: converted to uint16 millimetres, carrying
    the sensor's ``sequence`` and ``timestamp`` (``device_timestamp``, libfreenect2 units of
    about 0.1 ms) and the host capture time. When no frame has come for *frame_timeout*
    seconds, or the sensor raises, it is reported lost: :py:attr:`on_device_lost` is emitted
    (sender the device) and the thread ends. Use :py:func:`open_devices` to make them.
    """

    #: Emitted with keyword argument ``depth_frame`` for each new frame (device thread).
    on_depth_frame = Signal()
    #: Emitted (no arguments) when the sensor stops delivering: unplugged or failed.
    on_device_lost = Signal()

    def __init__(self, context, serial, pipeline='auto', min_depth=500, max_depth=4500,
                 frame_timeout=2.0, lib=None):
        """Open the sensor *serial* through the ``Freenect2`` *context*."""
        self._lib = lib or _import_pylibfreenect2()
        self.unique_kinect_id = serial
        self.min_depth, self.max_depth = min_depth, max_depth
        self.frame_timeout = float(frame_timeout)
        self._pipeline, self.pipeline_name = make_pipeline(self._lib, pipeline)
        # Only enumerated serials get here: libfreenect2 returns NULL for others, which
        # pylibfreenect2 does not check.
        self._device = context.openDevice(serial, pipeline=self._pipeline)
        self._listener = None
        self._thread = None
        self._stop_event = threading.Event()
        self.depth_camera = None
        self.lost = False

    def _read_camera(self):
        params = self._device.getIrCameraParams()
        camera = {'width': DEPTH_WIDTH, 'height': DEPTH_HEIGHT}
        for name in ('fx', 'fy', 'cx', 'cy', 'k1', 'k2', 'k3', 'p1', 'p2'):
            camera[name] = float(getattr(params, name))
        return camera

    def start(self):
        """Start streaming depth (only warns if already running)."""
        if self._thread is not None:
            log.warning('Kinect %s already running', self.unique_kinect_id)
            return
        if self.lost:
            raise Freenect2Unavailable('Kinect {0} was lost; open it again'.format(
                self.unique_kinect_id))
        self._listener = self._lib.SyncMultiFrameListener(self._lib.FrameType.Depth)
        self._device.setIrAndDepthFrameListener(self._listener)
        self._device.startStreams(False, True)
        self.depth_camera = self._read_camera()
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='Freenect2Kinect-' + self.unique_kinect_id)
        self._thread.start()
        log.info('Kinect %s streaming depth (%s pipeline)', self.unique_kinect_id,
                 self.pipeline_name)

    def stop(self):
        """Stop streaming and wait for the thread (one second at most)."""
        if self._thread is None:
            log.warning('Kinect %s not running', self.unique_kinect_id)
            return
        self._stop_event.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)
        self._thread = None
        self._shut_device()

    def _shut_device(self):
        try:
            self._device.stop()
            self._device.close()
        except Exception as err:  # an unplugged sensor may refuse
            log.warning('Closing Kinect %s: %s', self.unique_kinect_id, err)

    def _run(self):
        buffer = np.empty((DEPTH_HEIGHT, DEPTH_WIDTH), np.uint16)
        last_frame = time.monotonic()
        try:
            while not self._stop_event.is_set():
                # waitForNewFrame has no timeout in pylibfreenect2: poll first.
                if not self._listener.hasNewFrame():
                    if time.monotonic() - last_frame > self.frame_timeout:
                        raise Freenect2Unavailable('no frame for {0:.1f} s'.format(
                            self.frame_timeout))
                    self._stop_event.wait(0.002)
                    continue
                captured = time.time_ns()
                frames = self._listener.waitForNewFrame()
                try:
                    depth = frames['depth']
                    pixels = depth_to_uint16(depth.asarray(np.float32), self.min_depth,
                                             self.max_depth, out=buffer)
                    sequence, device_time = depth.sequence, depth.timestamp
                finally:
                    self._listener.release(frames)
                last_frame = time.monotonic()
                frame = DepthFrame(pixels.copy(), sequence=sequence, timestamp_ns=captured,
                                   device_timestamp=device_time)
                send_isolated(self.on_depth_frame, self, depth_frame=frame)
        except Exception as err:
            self.lost = True
            log.error('Kinect %s lost: %s', self.unique_kinect_id, err)
            send_isolated(self.on_device_lost, self)


def open_devices(serials=None, pipeline='auto', min_depth=500, max_depth=4500,
                 frame_timeout=2.0):
    """Open the sensors with the given serial numbers (None or empty: every one).

    Raises :py:class:`Freenect2Unavailable` if pylibfreenect2 is missing, no sensor is
    connected, or a serial asked for is not connected (the message lists those that are).
    """
    lib = _import_pylibfreenect2()
    context = lib.Freenect2()
    available = [_text(context.getDeviceSerialNumber(i))
                 for i in range(context.enumerateDevices())]
    if not available:
        raise Freenect2Unavailable('no Kinect v2 sensor found (is it plugged into a USB 3 '
                                   'port, with the udev rules of libfreenect2 installed?)')
    wanted = list(serials) if serials else available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise Freenect2Unavailable('Kinect v2 sensor(s) {0} not connected; connected: '
                                   '{1}'.format(', '.join(missing), ', '.join(available)))
    devices = [Freenect2Kinect(context, serial, pipeline, min_depth, max_depth,
                               frame_timeout, lib=lib) for serial in wanted]
    # Keep the context alive as long as the devices: libfreenect2 owns them through it.
    for device in devices:
        device._context = context
    return devices
