"""Depth frame compression off the device thread and off the IOLoop."""
import logging
import threading

from blinker import Signal
from tornado.ioloop import IOLoop

from . import codec as _codec
from .device import as_depth_frame
from .protocol import FrameHeader, FrameMessage

__all__ = ['DepthFrameCompressor', 'encode_frame_message']

log = logging.getLogger(__name__)


def encode_frame_message(depth_frame, codec=None):
    """Return the :py:class:`~.protocol.FrameMessage` for *depth_frame*.

    *depth_frame* is a :py:class:`~.device.DepthFrame`, or any object with the reference
    API's ``data`` and ``shape`` (see :py:func:`~.device.as_depth_frame`).
    """
    codec = _codec.DEFAULT_CODEC if codec is None else codec
    depth_frame = as_depth_frame(depth_frame)
    pixels = depth_frame.array
    payload = _codec.encode(pixels, codec)
    header = FrameHeader(codec, pixels.shape[1], pixels.shape[0], 0, depth_frame.sequence,
                         depth_frame.timestamp_ns, depth_frame.device_timestamp, 0)
    return FrameMessage.build(header, payload)


class DepthFrameCompressor(object):
    """Asynchronous compression pipeline for depth frames.

    *kinect* is a :py:class:`streamkinect2.mock.MockKinect`-like object. Depth frames
    emitted by its ``on_depth_frame`` signal are compressed on a worker thread, with
    frame drop if the compressor becomes overloaded: at most one frame waits for the
    worker (a newer frame replaces it) and at most *max_pending* compressed frames wait
    for the IOLoop. Dropped frames are counted in :py:attr:`frames_dropped`.

    If *io_loop* is provided, it is the :py:class:`tornado.ioloop.IOLoop` on which
    :py:attr:`on_compressed_frame` is emitted; if not, ``IOLoop.current()``.

    ``kinect``: Kinect object associated with this compressor.

    Call :py:meth:`close` (or use a ``with`` statement) to stop the worker thread.
    """

    #: Emitted on the IOLoop thread with keyword argument ``compressed_frame``: a
    #: bytes object holding one depth frame message (header + payload, see
    #: ``docs/protocol.md``).
    on_compressed_frame = Signal()

    def __init__(self, kinect, io_loop=None, codec=None, max_pending=2):
        """Start compressing the frames of *kinect*."""
        self.kinect = kinect
        self.codec = _codec.DEFAULT_CODEC if codec is None else codec
        self.max_pending = int(max_pending)
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0
        self._cond = threading.Condition()
        self._latest = None
        self._pending = 0
        self._closed = False
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name='DepthFrameCompressor-{0}'.format(
                                            getattr(kinect, 'unique_kinect_id', '?')))
        self._thread.start()
        kinect.on_depth_frame.connect(self._on_depth_frame, sender=kinect)

    def _on_depth_frame(self, kinect, depth_frame=None, **_kwargs):
        # Device thread: never blocks beyond a lock hand-over.
        with self._cond:
            self.frames_in += 1
            if self._latest is not None:
                self.frames_dropped += 1
            self._latest = depth_frame
            self._cond.notify()

    def _work(self):
        while True:
            with self._cond:
                while self._latest is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                frame, self._latest = self._latest, None
                if self._pending >= self.max_pending:
                    self.frames_dropped += 1
                    continue
                self._pending += 1
            try:
                message = encode_frame_message(frame, self.codec)
            except Exception:
                log.exception('Failed to compress depth frame %d', frame.sequence)
                with self._cond:
                    self._pending -= 1
                    self.frames_dropped += 1
                continue
            try:
                self._io_loop.add_callback(self._emit, message)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                with self._cond:
                    self._pending -= 1
                return

    def _emit(self, message):
        with self._cond:
            self._pending -= 1
            self.frames_out += 1
        if self._closed:
            return
        self.on_compressed_frame.send(self, compressed_frame=message)

    def close(self):
        """Disconnect from the device and stop the worker thread (waits 1 s at most)."""
        self.kinect.on_depth_frame.disconnect(self._on_depth_frame, sender=self.kinect)
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)

    def __enter__(self):
        """Return the running compressor."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Close the compressor."""
        self.close()
