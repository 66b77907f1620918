"""Support for a mock kinect when testing.

The mock offers what a Kinect v2 offers (:py:data:`~streamkinect2.device.STREAMS`): depth
and IR from one capture of the time-of-flight camera, and colour, synthetic by default
(deterministic functions of the sequence number) or replayed from a recording
(:py:class:`Recording`). It reports the calibration of a real sensor
(:py:data:`~streamkinect2.device.MOCK_CALIBRATION`).

Note: this module requires numpy.
"""
import functools
import logging
import math
import random
import threading
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union
import uuid

from blinker import Signal
import numpy as np
import numpy.typing as npt

from .common import send_isolated
from .device import (COLOR_HEIGHT, COLOR_WIDTH, ColorFrame, DEPTH_HEIGHT, DEPTH_WIDTH,
                     DepthFrame, DeviceLifetime, IrFrame, KINECT2_DEFAULT_DEPTH_CAMERA,
                     MOCK_CALIBRATION, RecurringErrorLog, STREAMS)
from .freenect2_device import DEVICE_TICK_NS

__all__ = ['DepthFrame', 'IrFrame', 'ColorFrame', 'MockKinect', 'Recording', 'DEPTH_WIDTH',
           'DEPTH_HEIGHT', 'KINECT2_DEFAULT_DEPTH_CAMERA', 'FrameSource', 'ColorSource']

log = logging.getLogger(__name__)

#: The device thread waits at most this long at a time, whatever the frame rate, so that
#: it wakes up to check for stop() and never asks for a wait the platform cannot hold.
_MAX_WAIT = 1.0

#: A frame source: takes the sequence number, returns a 2-D uint16 array (see MockKinect).
FrameSource = Callable[[int], npt.NDArray[np.uint16]]
#: A colour source: takes the sequence number, returns an (H, W, 4) BGRX or (H, W, 3) BGR
#: uint8 array.
ColorSource = Callable[[int], npt.NDArray[np.uint8]]

#: The mock's colour frames carry their sequence number in the top-left corner as blocks
#: of two grey levels, which JPEG (and halving the resolution) leaves readable: 64 bits,
#: 32 blocks a row, then the same 64 bits inverted, each block _CODE_BLOCK pixels square
#: on the full-HD image.
_CODE_BLOCK = 32
_CODE_BITS = 64
_CODE_COLUMNS = 32
_CODE_LOW = 48
_CODE_HIGH = 208
_CODE_ROWS = 2 * _CODE_BITS // _CODE_COLUMNS


def _mock_scene() -> npt.NDArray[np.uint16]:
    """Return the static part of the mock scene, uint16 millimetres (424 x 512)."""
    y, x = np.mgrid[0:DEPTH_HEIGHT, 0:DEPTH_WIDTH]
    # A floor rising towards the camera, a far wall beyond 4095 mm, and holes.
    scene = (1200 + (DEPTH_HEIGHT - y) * 12 + (x % 7)).astype(np.uint16)
    wall = x > 360
    scene[wall] = (7000 + (x[wall] - 360) * 6 + (y[wall] % 5)).astype(np.uint16)
    scene[:, 500:] = 0                    # out of range: no reading (REP 118: only 0)
    scene[20:30, 100:140] = 8000          # far, beyond the old 12-bit limit
    scene[50:60, 400:420] = 4095          # values either side of the old 12-bit limit
    scene[60:70, 400:420] = 4096
    return scene


def _mock_ir_scene() -> npt.NDArray[np.uint16]:
    """Return the static part of the mock IR image, uint16 amplitude (424 x 512)."""
    y, x = np.mgrid[0:DEPTH_HEIGHT, 0:DEPTH_WIDTH]
    # Brighter near the centre (the emitter's cone), textured, dark where nothing is.
    r2 = ((x - DEPTH_WIDTH / 2) / DEPTH_WIDTH) ** 2 + ((y - DEPTH_HEIGHT / 2) / DEPTH_HEIGHT) ** 2
    scene = (600 + 2400 * np.exp(-4 * r2) + (x * 37 + y * 11) % 97).astype(np.uint16)
    scene[:, 500:] = 40 + (y[:, 500:] % 3).astype(np.uint16)
    scene[20:30, 100:140] = 65535         # a retro-reflector saturates the amplitude
    return scene


_SCENE = _mock_scene()
_SCENE.setflags(write=False)
_IR_SCENE = _mock_ir_scene()
_IR_SCENE.setflags(write=False)


@functools.lru_cache(maxsize=1)
def _color_base() -> npt.NDArray[np.uint8]:
    """Return the static part of the mock colour image, BGRX (made on first use: 8 MB)."""
    y = np.arange(COLOR_HEIGHT, dtype=np.uint16)[:, None]
    x = np.arange(COLOR_WIDTH, dtype=np.uint16)[None, :]
    base = np.empty((COLOR_HEIGHT, COLOR_WIDTH, 4), np.uint8)
    base[:, :, 0] = (x * 255 // COLOR_WIDTH).astype(np.uint8)            # blue ramp
    base[:, :, 1] = (y * 255 // COLOR_HEIGHT).astype(np.uint8)           # green ramp
    base[:, :, 2] = (96 + 64 * (((x // 120) + (y // 120)) % 2)).astype(np.uint8)  # tiles
    base[:, :, 3] = 255
    base.setflags(write=False)
    return base


def _code_levels(sequence: int) -> npt.NDArray[np.uint8]:
    """Return the grey level of each code block for *sequence*, (_CODE_ROWS, 32)."""
    bits = np.array([(sequence >> i) & 1 for i in range(_CODE_BITS)], dtype=bool)
    bits = np.concatenate([bits, ~bits]).reshape(_CODE_ROWS, _CODE_COLUMNS)
    return np.where(bits, _CODE_HIGH, _CODE_LOW).astype(np.uint8)


class Recording(object):
    """Frames recorded from a sensor, played back in a loop by sequence number.

    *depth* is an N x H x W uint16 array; *ir*, if given, one of the same shape (the IR
    of the same captures); *color*, if given, N colour images: N x H x W uint8 greyscale
    (handed out as BGRX, grey replicated, as pylibfreenect2 hands out colour) or
    N x H x W x 3 BGR / x 4 BGRX uint8. Capture ``sequence`` plays set
    ``sequence % N``. The arrays are not copied and the frames handed out are read-only
    views (the same memory every N frames): receivers must not write to them.
    """

    def __init__(self, depth: npt.ArrayLike, ir: Optional[npt.ArrayLike] = None,
                 color: Optional[npt.ArrayLike] = None) -> None:
        """Check and hold the recorded arrays (ValueError if they do not fit)."""
        self.depth_frames = self._frames('depth', depth, np.uint16)
        count, height, width = self.depth_frames.shape
        self.ir_frames = None if ir is None else self._frames('ir', ir, np.uint16)
        if self.ir_frames is not None and self.ir_frames.shape != self.depth_frames.shape:
            raise ValueError('recorded ir is {0}, depth {1}: they must match'.format(
                self.ir_frames.shape, self.depth_frames.shape))
        self.color_frames: Optional[npt.NDArray[np.uint8]] = None
        if color is not None:
            frames = np.asarray(color)
            if frames.dtype != np.uint8 or not (
                    frames.ndim == 3 or (frames.ndim == 4 and frames.shape[3] in (3, 4))):
                raise ValueError('recorded color must be N x H x W (grey) or N x H x W x 3|4 '
                                 'uint8, got {0} {1}'.format(frames.dtype, frames.shape))
            if len(frames) != count:
                raise ValueError('recorded color has {0} frames, depth {1}'.format(
                    len(frames), count))
            self.color_frames = frames
        self._bgrx: Dict[int, npt.NDArray[np.uint8]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _frames(name: str, frames: npt.ArrayLike, dtype: Any) -> npt.NDArray[Any]:
        array = np.asarray(frames)
        if array.ndim != 3 or array.dtype != dtype or not len(array) or not array[0].size:
            raise ValueError('recorded {0} must be a non-empty N x H x W {1} array, got '
                             '{2} {3}'.format(name, np.dtype(dtype).name, array.dtype,
                                              array.shape))
        return array

    @classmethod
    def load(cls, path: str) -> 'Recording':
        """Load an .npz: depth only (key ``frames``) or RGB-D (keys ``depth``, ``ir``, ``color``).

        The RGB-D layout is that of ``shared/data/rgbd/kinect2_sync_rgbd.npz`` (``ir`` and
        ``color`` optional). ValueError for a file without either layout.
        """
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if 'depth' in keys:
                return cls(archive['depth'], archive['ir'] if 'ir' in keys else None,
                           archive['color'] if 'color' in keys else None)
            if 'frames' in keys:
                return cls(archive['frames'])
        raise ValueError('{0}: no "frames" (depth) nor "depth" (RGB-D) array in it, only '
                         '{1}'.format(path, sorted(keys)))

    def __len__(self) -> int:
        """Return the number of recorded captures."""
        return len(self.depth_frames)

    @property
    def streams(self) -> Tuple[str, ...]:
        """Return the streams recorded, in :py:data:`~streamkinect2.device.STREAMS` order."""
        return tuple(name for name, frames in (
            ('depth', self.depth_frames), ('ir', self.ir_frames),
            ('color', self.color_frames)) if frames is not None)

    def depth(self, sequence: int) -> npt.NDArray[np.uint16]:
        """Return the depth of capture *sequence* (a frame source)."""
        return self.depth_frames[sequence % len(self)]

    def ir(self, sequence: int) -> npt.NDArray[np.uint16]:
        """Return the IR of capture *sequence* (LookupError if none was recorded)."""
        if self.ir_frames is None:
            raise LookupError('no IR recorded')
        return self.ir_frames[sequence % len(self)]

    def color(self, sequence: int) -> npt.NDArray[np.uint8]:
        """Return the colour of capture *sequence*, BGRX or BGR (LookupError if none)."""
        if self.color_frames is None:
            raise LookupError('no colour recorded')
        index = sequence % len(self)
        frame = self.color_frames[index]
        if frame.ndim == 3:
            return frame
        with self._lock:  # grey to BGRX once per recorded set, then the same memory
            bgrx = self._bgrx.get(index)
            if bgrx is None:  # little-endian words 0xFFgggggg are bytes g, g, g, 255
                words = frame.astype('<u4') * 0x010101 + 0xFF000000
                bgrx = words.view(np.uint8).reshape(frame.shape + (4,))
                bgrx.setflags(write=False)
                self._bgrx[index] = bgrx
        return bgrx


class MockKinect(DeviceLifetime):
    """A mock Kinect device.

    This class implements a "virtual" Kinect which generates mock data on its own thread,
    about 30 captures per second: 512x424 uint16 depth, the IR amplitude of the same
    capture and a 1920x1080 BGRX colour image (as pylibfreenect2 hands them out). It can
    be used for testing or benchmarking. Use :py:meth:`start` and :py:meth:`stop` or a
    ``with`` statement.

    Listener callbacks are called on the device thread, for each capture in this order:
    ``on_depth_frame``, ``on_ir_frame`` (same sequence and timestamps), then
    ``on_color_frame``. A stream nobody listens to is not rendered.

    The frames are deterministic functions of the sequence number
    (:py:meth:`render_frame`, :py:meth:`render_ir`, :py:meth:`render_color`), so a
    receiver can check them byte for byte (colour: within JPEG tolerance) and read the
    capture they come from (:py:meth:`sequence_of`, :py:meth:`sequence_of_color`).

    *fps* sets the frame rate; *unique_kinect_id* overrides the generated id; *streams*
    the streams offered (default all; ``'depth'`` is always one). *frame_source*,
    *ir_source* and *color_source*, callables taking the sequence number and returning a
    2-D uint16 array (depth, IR) or an (H, W, 4) BGRX / (H, W, 3) BGR uint8 array
    (colour), replace the synthetic frames (see :py:meth:`from_recording`).

    The device clock (``device_timestamp``) counts :py:attr:`device_tick_ns` ns ticks, as
    libfreenect2's does: 266 a frame at 30 fps, from a random start. A colour frame
    carries the device and host timestamps of its capture, moved by *color_offset* ticks
    (an int, or a callable of the sequence number: lag and jitter, to test the pairing);
    *color_every* = 2 sends colour with every second capture only (15 fps in low light).

    Whatever a frame source or a receiver does (raise, return garbage), the device thread
    goes on: errors are logged, with their traceback, at most every 10 s.
    """

    #: Signal emitted with keyword argument ``depth_frame`` for each new frame.
    on_depth_frame = Signal()
    #: Signal emitted with keyword argument ``ir_frame`` (an IrFrame) after each depth frame.
    on_ir_frame = Signal()
    #: Signal emitted with keyword argument ``color_frame`` (a ColorFrame) after depth and IR.
    on_color_frame = Signal()

    #: Nanoseconds per tick of the device clock (``device_timestamp``), as libfreenect2's.
    device_tick_ns: int = DEVICE_TICK_NS

    def __init__(self, fps: float = 30.0, unique_kinect_id: Optional[str] = None,
                 frame_source: Optional[FrameSource] = None,
                 streams: Optional[Iterable[str]] = None,
                 ir_source: Optional[FrameSource] = None,
                 color_source: Optional[ColorSource] = None,
                 color_offset: Union[int, Callable[[int], int]] = 0,
                 color_every: int = 1) -> None:
        """Create a stopped mock device."""
        try:
            rate = float(fps)
        except (TypeError, ValueError):
            raise ValueError('fps must be a number, got {0!r}'.format(fps)) from None
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError('fps must be a positive, finite number, got {0!r}'.format(rate))
        offered = STREAMS if streams is None else tuple(streams)
        unknown = [name for name in offered if name not in STREAMS]
        if unknown or 'depth' not in offered:
            raise ValueError('streams must include "depth" and be among {0}, got {1!r}'.format(
                STREAMS, offered))
        if not isinstance(color_every, int) or color_every < 1:
            raise ValueError('color_every must be a positive integer, got {0!r}'.format(
                color_every))
        self.unique_kinect_id: str = unique_kinect_id or 'mock-' + uuid.uuid4().hex[:12]
        self.fps: float = rate
        #: The streams this device offers, in :py:data:`~streamkinect2.device.STREAMS` order.
        self.streams: Tuple[str, ...] = tuple(name for name in STREAMS if name in offered)
        self._errors = RecurringErrorLog(log)
        self._frame_source: FrameSource = frame_source or self.render_frame
        self._ir_source: FrameSource = ir_source or self.render_ir
        self._color_source: ColorSource = color_source or self.render_color
        self._color_offset = color_offset
        self._color_every = color_every
        self._thread: Optional[threading.Thread] = None
        self._stop_event = threading.Event()
        self._sequence = 0
        #: Device clock ticks from one capture to the next (266 at 30 fps).
        self.ticks_per_frame: int = int(max(1.0, min(2.0 ** 32, 1e9 / rate / DEVICE_TICK_NS)))
        self._clock_start = random.randrange(2 ** 31)
        #: Intrinsics of the depth camera, sent to clients in the ``me`` device record:
        #: those of the real sensor the mock stands for (MOCK_CALIBRATION).
        self.depth_camera: Dict[str, float] = dict(MOCK_CALIBRATION['depth_camera'])
        #: Intrinsics of the colour camera.
        self.color_camera: Dict[str, float] = dict(MOCK_CALIBRATION['color_camera'])
        #: The IR (depth) camera to colour camera transform: rotation and translation.
        self.ir_to_color: Dict[str, Any] = {
            key: list(value) for key, value in MOCK_CALIBRATION['ir_to_color'].items()}
        #: Millimetres to add to every depth of this sensor (iai_kinect2's ``depthShift``).
        self.depth_shift_mm: float = float(MOCK_CALIBRATION['depth_shift_mm'])

    @classmethod
    def from_recording(cls, recording: Union[str, Recording], **kwargs: Any) -> 'MockKinect':
        """Return a mock that replays *recording* (a :py:class:`Recording` or .npz path).

        It offers the streams recorded (unless *streams* says fewer; ValueError for one
        not recorded); other keyword arguments are those of the constructor.
        """
        if not isinstance(recording, Recording):
            recording = Recording.load(recording)
        if kwargs.get('streams') is None:
            kwargs['streams'] = recording.streams
        missing = [name for name in kwargs['streams'] if name not in recording.streams]
        if missing:
            raise ValueError('{0} not recorded: the recording has {1}'.format(
                ', '.join(missing), ', '.join(recording.streams)))
        if 'color' in kwargs['streams']:
            for index in range(len(recording)):  # grey to BGRX now, not on the first frames
                recording.color(index)
        return cls(frame_source=recording.depth,
                   ir_source=recording.ir if recording.ir_frames is not None else None,
                   color_source=(recording.color if recording.color_frames is not None
                                 else None), **kwargs)

    @staticmethod
    def render_frame(sequence: int) -> npt.NDArray[np.uint16]:
        """Return the mock frame for *sequence*: a new (424, 512) uint16 array."""
        frame = _SCENE.copy()
        # A box moving across the scene, 0.8 to 2.3 m away.
        x0 = (sequence * 4) % (DEPTH_WIDTH - 80)
        y0 = 120 + (sequence % 60)
        frame[y0:y0 + 100, x0:x0 + 80] = 800 + (sequence * 25) % 1500
        # The sequence number in the top-left pixels, 16 bits each, so a frame proves
        # which capture it is.
        frame[0, 0:4] = [(sequence >> shift) & 0xFFFF for shift in (0, 16, 32, 48)]
        return frame

    @staticmethod
    def render_ir(sequence: int) -> npt.NDArray[np.uint16]:
        """Return the mock IR frame for *sequence*: a new (424, 512) uint16 array.

        The moving box of :py:meth:`render_frame` is bright; the sequence number is in
        the top-left pixels as in depth (:py:meth:`sequence_of` reads it).
        """
        frame = _IR_SCENE.copy()
        x0 = (sequence * 4) % (DEPTH_WIDTH - 80)
        y0 = 120 + (sequence % 60)
        frame[y0:y0 + 100, x0:x0 + 80] = 20000 + (sequence * 97) % 20000
        frame[0, 0:4] = [(sequence >> shift) & 0xFFFF for shift in (0, 16, 32, 48)]
        return frame

    @staticmethod
    def sequence_of(frame: npt.ArrayLike) -> int:
        """Return the sequence number embedded in a mock depth or IR frame."""
        row = np.asarray(frame)[0, 0:4].astype(np.uint64)
        return int(row[0] | (row[1] << 16) | (row[2] << 32) | (row[3] << 48))

    @staticmethod
    def render_color(sequence: int) -> npt.NDArray[np.uint8]:
        """Return the mock colour frame for *sequence*: a new (1080, 1920, 4) BGRX array.

        A static scene, a box moving across it, and the sequence number (64 bits) as
        blocks of two grey levels in the top-left corner, which survive JPEG and
        halving the resolution (:py:meth:`sequence_of_color` reads them).
        """
        frame = _color_base().copy()
        x0 = 128 + (sequence * 16) % (COLOR_WIDTH - 128 - 240)
        y0 = 300 + (sequence % 60) * 4
        frame[y0:y0 + 240, x0:x0 + 240, :3] = (
            (sequence * 37) % 256, 255 - (sequence * 11) % 256, 230)
        code = np.repeat(np.repeat(_code_levels(sequence), _CODE_BLOCK, axis=0),
                         _CODE_BLOCK, axis=1)
        frame[:code.shape[0], :code.shape[1], :3] = code[:, :, None]
        return frame

    @staticmethod
    def sequence_of_color(pixels: npt.ArrayLike) -> int:
        """Return the sequence number in a mock colour image, at any scale, after JPEG.

        *pixels*: (H, W, 3 or 4) BGR(X) or (H, W) grey uint8, as rendered by
        :py:meth:`render_color` or decoded from its JPEG, full HD or scaled down.
        ValueError if the image carries no readable code.
        """
        image = np.asarray(pixels)
        if image.ndim == 3:
            image = image[:, :, :3]
        elif image.ndim != 2:
            raise ValueError('not an image: shape {0}'.format(image.shape))
        scale = image.shape[1] / COLOR_WIDTH
        block = _CODE_BLOCK * scale
        if block < 4 or image.shape[0] < _CODE_ROWS * block:
            raise ValueError('image too small to carry a code: {0}'.format(image.shape))
        means = np.empty((_CODE_ROWS, _CODE_COLUMNS))
        for row in range(_CODE_ROWS):
            for column in range(_CODE_COLUMNS):
                y0, x0 = int((row + 0.25) * block), int((column + 0.25) * block)
                y1, x1 = int((row + 0.75) * block), int((column + 0.75) * block)
                means[row, column] = image[y0:y1, x0:x1].mean()
        threshold = (_CODE_LOW + _CODE_HIGH) / 2
        margin = (_CODE_HIGH - _CODE_LOW) / 4
        bits = (means > threshold).ravel()
        if np.any(np.abs(means - threshold) < margin) or np.any(
                bits[:_CODE_BITS] == bits[_CODE_BITS:]):
            raise ValueError('no mock sequence code in this image')
        return sum(1 << i for i in range(_CODE_BITS) if bits[i])

    def start(self) -> None:
        """Start the mock device running. Mock data is generated on a separate thread."""
        if self._thread is not None:
            log.warning('MockKinect %s already running', self.unique_kinect_id)
            return
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=self._run, name='MockKinect-' + self.unique_kinect_id, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the device; blocks until the thread shuts down, one second at most."""
        if self._thread is None:
            log.warning('MockKinect %s not running', self.unique_kinect_id)
            return
        self._stop_event.set()
        self._thread.join(1.0)
        if self._thread.is_alive():
            log.warning('MockKinect %s thread did not stop within 1 s',
                        self.unique_kinect_id)
        self._thread = None

    def _run(self) -> None:
        period = 1.0 / self.fps  # inf for a rate too small to hold: one frame, then none
        next_time = time.monotonic()
        while not self._stop_event.is_set():
            try:
                delay = next_time - time.monotonic()
                if delay > 0:
                    self._stop_event.wait(min(delay, _MAX_WAIT))
                    continue
                self._emit_capture()
                next_time += period
                if time.monotonic() - next_time > period:  # fell behind: do not burst
                    next_time = time.monotonic()
            except Exception:  # nothing may end the device thread but stop()
                self._errors.error('MockKinect %s: error in the device thread',
                                   self.unique_kinect_id)
                self._stop_event.wait(0.01)

    def _emit_capture(self) -> None:
        sequence = self._sequence
        self._sequence += 1
        captured_ns = time.time_ns()
        device_time = self._clock_start + sequence * self.ticks_per_frame
        try:
            pixels = self._frame_source(sequence)
            frame = DepthFrame(pixels, sequence=sequence, timestamp_ns=captured_ns,
                               device_timestamp=device_time)
        except Exception:  # a frame source's bug must not kill the device thread
            self._errors.error('MockKinect %s: error rendering depth frame %d',
                               self.unique_kinect_id, sequence)
        else:
            send_isolated(self.on_depth_frame, self, depth_frame=frame)
        if 'ir' in self.streams and self._wanted(self.on_ir_frame):
            try:
                ir_frame = IrFrame(self._ir_source(sequence), sequence=sequence,
                                   timestamp_ns=captured_ns, device_timestamp=device_time)
            except Exception:
                self._errors.error('MockKinect %s: error rendering IR frame %d',
                                   self.unique_kinect_id, sequence)
            else:
                send_isolated(self.on_ir_frame, self, ir_frame=ir_frame)
        if 'color' in self.streams and sequence % self._color_every == 0 \
                and self._wanted(self.on_color_frame):
            try:
                offset = self._color_offset
                ticks = int(offset(sequence) if callable(offset) else offset)
                color_frame = ColorFrame(
                    pixels=self._color_source(sequence), sequence=sequence,
                    timestamp_ns=captured_ns + ticks * self.device_tick_ns,
                    device_timestamp=max(0, device_time + ticks))
            except Exception:
                self._errors.error('MockKinect %s: error rendering colour frame %d',
                                   self.unique_kinect_id, sequence)
            else:
                send_isolated(self.on_color_frame, self, color_frame=color_frame)

    def _wanted(self, signal: Signal) -> bool:
        """Tell whether anyone listens to *signal* from this device (else skip rendering)."""
        return bool(signal.receivers) and signal.has_receivers_for(self)
