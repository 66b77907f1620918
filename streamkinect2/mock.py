"""Support for a mock kinect when testing.

Note: this module requires numpy.
"""
import logging
import math
import threading
import time
from typing import Callable, Dict, Optional
import uuid

from blinker import Signal
import numpy as np
import numpy.typing as npt

from .common import send_isolated
from .device import (DEPTH_HEIGHT, DEPTH_WIDTH, DepthFrame, DeviceLifetime,
                     KINECT2_DEFAULT_DEPTH_CAMERA, RecurringErrorLog)

__all__ = ['DepthFrame', 'MockKinect', 'DEPTH_WIDTH', 'DEPTH_HEIGHT',
           'KINECT2_DEFAULT_DEPTH_CAMERA']

log = logging.getLogger(__name__)

#: The device thread waits at most this long at a time, whatever the frame rate, so that
#: it wakes up to check for stop() and never asks for a wait the platform cannot hold.
_MAX_WAIT = 1.0

#: A frame source: takes the sequence number, returns a 2-D uint16 array (see MockKinect).
FrameSource = Callable[[int], npt.NDArray[np.uint16]]


def _mock_scene() -> npt.NDArray[np.uint16]:
    """Return the static part of the mock scene, uint16 millimetres (424 x 512)."""
    y, x = np.mgrid[0:DEPTH_HEIGHT, 0:DEPTH_WIDTH]
    # A floor rising towards the camera, a far wall beyond 4095 mm, and holes.
    scene = (1200 + (DEPTH_HEIGHT - y) * 12 + (x % 7)).astype(np.uint16)
    wall = x > 360
    scene[wall] = (7000 + (x[wall] - 360) * 6 + (y[wall] % 5)).astype(np.uint16)
    scene[:, 500:] = 0                    # out of range: no reading
    scene[20:30, 100:140] = 65535       # saturated reading
    scene[50:60, 400:420] = 4095          # values either side of the old 12-bit limit
    scene[60:70, 400:420] = 4096
    return scene


_SCENE = _mock_scene()
_SCENE.setflags(write=False)


class MockKinect(DeviceLifetime):
    """A mock Kinect device.

    This class implements a "virtual" Kinect which generates mock data, about 30 frames
    per second of 512x424 uint16 depth on its own thread. It can be used for testing or
    benchmarking. Use :py:meth:`start` and :py:meth:`stop` or a ``with`` statement.

    Listener callbacks are called on the device thread.

    The frames are a deterministic function of the sequence number
    (:py:meth:`render_frame`), so a receiver can check them byte for byte.
    *fps* sets the frame rate; *unique_kinect_id* overrides the generated id;
    *frame_source*, a callable taking the sequence number and returning a 2-D uint16
    array, replaces the synthetic scene. Whatever the frame source or a receiver does
    (raise, return garbage), the device thread goes on: errors are logged, with their
    traceback, at most every 10 s.
    """

    #: Signal emitted with keyword argument ``depth_frame`` for each new frame.
    on_depth_frame = Signal()

    def __init__(self, fps: float = 30.0, unique_kinect_id: Optional[str] = None,
                 frame_source: Optional[FrameSource] = None) -> None:
        """Create a stopped mock device."""
        try:
            rate = float(fps)
        except (TypeError, ValueError):
            raise ValueError('fps must be a number, got {0!r}'.format(fps)) from None
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError('fps must be a positive, finite number, got {0!r}'.format(rate))
        self.unique_kinect_id: str = unique_kinect_id or 'mock-' + uuid.uuid4().hex[:12]
        self.fps: float = rate
        self._errors = RecurringErrorLog(log)
        self._frame_source: FrameSource = frame_source or self.render_frame
        self._thread: Optional[threading.Thread] = None
        self._stop_event = threading.Event()
        self._sequence = 0
        #: Intrinsics of the depth camera, sent to clients in the ``me`` device record.
        self.depth_camera: Dict[str, float] = dict(KINECT2_DEFAULT_DEPTH_CAMERA)

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
    def sequence_of(frame: npt.ArrayLike) -> int:
        """Return the sequence number embedded in a frame from :py:meth:`render_frame`."""
        row = np.asarray(frame)[0, 0:4].astype(np.uint64)
        return int(row[0] | (row[1] << 16) | (row[2] << 32) | (row[3] << 48))

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
                self._emit_frame()
                next_time += period
                if time.monotonic() - next_time > period:  # fell behind: do not burst
                    next_time = time.monotonic()
            except Exception:  # nothing may end the device thread but stop()
                self._errors.error('MockKinect %s: error in the device thread',
                                   self.unique_kinect_id)
                self._stop_event.wait(0.01)

    def _emit_frame(self) -> None:
        sequence = self._sequence
        self._sequence += 1
        captured_ns = time.time_ns()
        try:
            pixels = self._frame_source(sequence)
            frame = DepthFrame(pixels, sequence=sequence, timestamp_ns=captured_ns)
        except Exception:  # a frame source's bug must not kill the device thread
            self._errors.error('MockKinect %s: error rendering depth frame %d',
                               self.unique_kinect_id, sequence)
            return
        send_isolated(self.on_depth_frame, self, depth_frame=frame)
