"""Depth frame compression off the device thread and off the IOLoop."""
import logging
import threading
import time
from types import TracebackType
from typing import Any, Optional, Tuple, Type

from blinker import Signal
from tornado.ioloop import IOLoop

from . import codec as _codec
from .common import send_isolated
from .device import as_depth_frame, RecurringErrorLog
from .protocol import FrameHeader, FrameMessage

__all__ = ['DepthFrameCompressor', 'encode_frame_message']

log = logging.getLogger(__name__)


def encode_frame_message(depth_frame: Any, codec: Optional[int] = None) -> FrameMessage:
    """Return the :py:class:`~.protocol.FrameMessage` for *depth_frame*.

    *depth_frame* is a :py:class:`~.device.DepthFrame`, or any object with the reference
    API's ``data`` and ``shape`` (see :py:func:`~.device.as_depth_frame`).
    """
    codec_id = _codec.DEFAULT_CODEC if codec is None else codec
    frame = as_depth_frame(depth_frame)
    pixels = frame.array
    payload = _codec.encode(pixels, codec_id)
    header = FrameHeader(codec_id, pixels.shape[1], pixels.shape[0], 0, frame.sequence,
                         frame.timestamp_ns, frame.device_timestamp, 0)
    return FrameMessage.build(header, payload)


class DepthFrameCompressor(object):
    """Asynchronous compression pipeline for depth frames.

    *kinect* is a :py:class:`streamkinect2.mock.MockKinect`-like object. Depth frames
    emitted by its ``on_depth_frame`` signal are compressed on a worker thread, with
    frame drop if the compressor becomes overloaded: at most one frame waits for the
    worker (a newer frame replaces it) and at most *max_pending* compressed frames wait
    for the IOLoop. Dropped frames are counted in :py:attr:`frames_dropped`.

    A frame may be any object with the reference API's ``data`` and ``shape`` (see
    :py:func:`~.device.as_depth_frame`); one without a ``sequence`` gets the count of
    frames the device has delivered. Nothing a frame or a receiver does stops the worker:
    a frame that cannot be compressed is counted in :py:attr:`frames_failed` (the error in
    :py:attr:`last_error`, logged with its traceback at most every 10 s) and the next one
    is compressed; receivers of :py:attr:`on_compressed_frame` that raise are logged and
    the others still called.

    If *io_loop* is provided, it is the :py:class:`tornado.ioloop.IOLoop` on which
    :py:attr:`on_compressed_frame` is emitted; if not, ``IOLoop.current()``.

    ``kinect``: Kinect object associated with this compressor. ``frames_in``,
    ``frames_out``, ``frames_dropped``, ``frames_failed``: counters. ``is_alive``: the
    worker runs. :py:meth:`seconds_since_frame`: how long the device has been silent.

    Call :py:meth:`close` (or use a ``with`` statement) to stop the worker thread.
    """

    #: Emitted on the IOLoop thread with keyword argument ``compressed_frame``: a
    #: :py:class:`~.protocol.FrameMessage` holding one depth frame message (header +
    #: payload, see ``docs/protocol.md``; ``bytes(message)`` or ``message.parts``).
    on_compressed_frame = Signal()

    def __init__(self, kinect: Any, io_loop: Optional[IOLoop] = None,
                 codec: Optional[int] = None, max_pending: int = 2) -> None:
        """Start compressing the frames of *kinect*."""
        self.kinect: Any = kinect
        self.codec: int = _codec.DEFAULT_CODEC if codec is None else codec
        self.max_pending = int(max_pending)
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self.frames_in: int = 0
        self.frames_out: int = 0
        self.frames_dropped: int = 0
        self.frames_failed: int = 0
        #: The last compression error, ``'ExceptionType: message'`` (None before any).
        self.last_error: Optional[str] = None
        self._last_frame = time.monotonic()
        self._name: str = getattr(kinect, 'unique_kinect_id', '?')
        self._failures = RecurringErrorLog(log)
        self._cond = threading.Condition()
        self._latest: Optional[Tuple[Any, int]] = None  # (frame, count), awaiting the worker
        self._pending = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name='DepthFrameCompressor-{0}'.format(self._name))
        kinect.on_depth_frame.connect(self._on_depth_frame, sender=kinect)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        """Tell whether the worker thread runs."""
        return self._thread.is_alive()

    def seconds_since_frame(self) -> float:
        """Return the seconds since the device's last frame (or since creation)."""
        return time.monotonic() - self._last_frame

    def _on_depth_frame(self, kinect: Any, depth_frame: Any = None, **_kwargs: Any) -> None:
        # Device thread: never blocks beyond a lock hand-over.
        with self._cond:
            if self._latest is not None:
                self.frames_dropped += 1
            # The count stands in for the sequence of frames that have none.
            self._latest = (depth_frame, self.frames_in)
            self.frames_in += 1
            self._last_frame = time.monotonic()
            self._cond.notify()

    def _work(self) -> None:
        running = True
        while running:
            try:
                running = self._work_once()
            except Exception:  # a bug of ours must not end the stream either
                self._failures.error('Depth frame compressor of %s: unexpected error',
                                     self._name)
                time.sleep(0.01)  # never spin on a persistent error

    def _work_once(self) -> bool:
        """Compress the next frame; return False once closed."""
        with self._cond:
            while self._latest is None and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            latest, self._latest = self._latest, None
            if latest is None:  # not reached: the wait above ends on a frame or a close
                return True
            frame, count = latest
            if self._pending >= self.max_pending:
                self.frames_dropped += 1
                return True
            self._pending += 1
        try:
            message = encode_frame_message(as_depth_frame(frame, sequence=count), self.codec)
        except Exception as err:  # whatever the frame is, the next one is compressed
            with self._cond:
                self._pending -= 1
                self.frames_failed += 1
                self.last_error = '{0}: {1}'.format(type(err).__name__, err)
            self._failures.error('Depth frame compressor of %s: frame %d (%s) failed: %s',
                                 self._name, count, _describe(frame), self.last_error)
            return True
        try:
            self._io_loop.add_callback(self._emit, message)
        except BaseException as err:
            with self._cond:
                self._pending -= 1
            if isinstance(err, RuntimeError):  # the loop is closed: nobody listens any more
                return False
            raise
        return True

    def _emit(self, message: FrameMessage) -> None:
        with self._cond:
            self._pending -= 1
            self.frames_out += 1
        if self._closed:
            return
        send_isolated(self.on_compressed_frame, self, compressed_frame=message)

    def close(self) -> None:
        """Disconnect from the device and stop the worker thread (waits 1 s at most)."""
        self.kinect.on_depth_frame.disconnect(self._on_depth_frame, sender=self.kinect)
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)

    def __enter__(self) -> 'DepthFrameCompressor':
        """Return the running compressor."""
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        """Close the compressor."""
        self.close()


def _describe(frame: Any) -> str:
    """Name *frame* for a log line, whatever it is (its repr may raise)."""
    try:
        return '{0} {1!r}'.format(type(frame).__name__, getattr(frame, 'shape', None))
    except Exception:
        return type(frame).__name__
