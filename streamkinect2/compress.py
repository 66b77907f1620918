"""Frame compression off the device thread and off the IOLoop, one worker per stream.

Depth and IR frames are compressed losslessly (:py:mod:`.codec`); colour frames become
JPEG (or go on as the JPEG the device gave). Each stream has its own worker thread, so a
slow colour encoder never holds up depth; colour frames take the sequence and stamps of
the depth capture nearest in device time (:py:mod:`.pairing`).
"""
import logging
import threading
import time
from types import TracebackType
from typing import Any, Dict, Optional, Tuple, Type

from blinker import Signal
import numpy as np
from tornado.ioloop import IOLoop

from . import codec as _codec
from .common import send_isolated
from .device import as_depth_frame, ColorFrame, RecurringErrorLog, STREAMS, streams_of
from .pairing import Capture, CapturePairing
from .protocol import frame_flags, FrameHeader, FrameMessage

__all__ = ['FrameCompressor', 'DepthFrameCompressor', 'encode_frame_message',
           'encode_color_message', 'check_color_options', 'COLOR_RESOLUTIONS',
           'DEFAULT_COLOR_QUALITY']

log = logging.getLogger(__name__)

#: Colour resolutions a server sends: the sensor's full 1920 x 1080, or half of it.
COLOR_RESOLUTIONS: Tuple[str, ...] = ('hd', 'qhd')
#: JPEG quality by resolution when none is given (qhd at 75 keeps depth + colour under
#: 50 Mbit/s: measured 42, against 53 at 90).
DEFAULT_COLOR_QUALITY: Dict[str, int] = {'hd': 90, 'qhd': 75}


def check_color_options(quality: Any = None, resolution: Any = 'hd') -> Tuple[int, str]:
    """Return ``(quality, resolution)`` checked; raise ValueError saying what is wrong.

    *quality* is a JPEG quality, an integer 1 to 100 (None: the default of the
    resolution, :py:data:`DEFAULT_COLOR_QUALITY`); *resolution* ``'hd'`` or ``'qhd'``.
    """
    if resolution not in COLOR_RESOLUTIONS:
        raise ValueError('color_resolution must be one of {0}, got {1!r}'.format(
            ', '.join(repr(r) for r in COLOR_RESOLUTIONS), resolution))
    if quality is None:
        return DEFAULT_COLOR_QUALITY[resolution], resolution
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
            or not 1 <= int(quality) <= 100:
        raise ValueError('color_quality must be an integer from 1 to 100, got {0!r}'.format(
            quality))
    return int(quality), resolution


def encode_frame_message(depth_frame: Any, codec: Optional[int] = None,
                         stream: str = 'depth') -> FrameMessage:
    """Return the :py:class:`~.protocol.FrameMessage` for *depth_frame*.

    *depth_frame* is a :py:class:`~.device.DepthFrame` (or an
    :py:class:`~.device.IrFrame`, with *stream* ``'ir'``), or any object with the
    reference API's ``data`` and ``shape`` (see :py:func:`~.device.as_depth_frame`).
    """
    codec_id = _codec.DEFAULT_CODEC if codec is None else codec
    frame = as_depth_frame(depth_frame)
    pixels = frame.array
    payload = _codec.encode(pixels, codec_id)
    header = FrameHeader(codec_id, pixels.shape[1], pixels.shape[0], frame_flags(stream),
                         frame.sequence, frame.timestamp_ns, frame.device_timestamp, 0)
    return FrameMessage.build(header, payload)


def encode_color_message(color_frame: Any, quality: int = 90, resolution: str = 'hd',
                         stamps: Optional[Capture] = None,
                         paired: bool = False) -> FrameMessage:
    """Return the :py:class:`~.protocol.FrameMessage` (codec JPEG) for *color_frame*.

    *color_frame* is a :py:class:`~.device.ColorFrame`. One that carries ``jpeg`` (the
    sensor's own) is sent as it is, whatever *quality* and *resolution*: nothing is
    decoded or encoded, only its header read for the size. Pixels are halved first in
    ``'qhd'`` mode (:py:func:`~.codec.halve_bgrx`), then encoded at *quality*. The
    header's width and height are the JPEG's. *stamps* (sequence, timestamp_ns,
    device_timestamp) replace the frame's sequence and capture time when it was
    *paired*; ``device_timestamp`` stays the colour camera's own.
    """
    jpeg = getattr(color_frame, 'jpeg', None)
    if jpeg is not None:
        payload = jpeg if isinstance(jpeg, bytes) else bytes(jpeg)
        width, height = _codec.jpeg_size(payload)
    else:
        pixels = getattr(color_frame, 'pixels', None)
        if pixels is None:
            pixels = color_frame.data
        pixels = np.asarray(pixels)
        if pixels.ndim != 3 or pixels.dtype != np.uint8 or pixels.shape[2] not in (3, 4):
            raise ValueError('colour pixels must be (height, width, 3 or 4) uint8, got '
                             '{0} {1}'.format(pixels.dtype, pixels.shape))
        if resolution == 'qhd':
            pixels = _codec.halve_bgrx(pixels)
        payload = _codec.encode_jpeg(pixels, quality)
        width, height = pixels.shape[1], pixels.shape[0]
    sequence, timestamp_ns = int(color_frame.sequence), int(color_frame.timestamp_ns)
    if stamps is not None and paired:
        sequence, timestamp_ns = stamps.sequence, stamps.timestamp_ns
    header = FrameHeader(_codec.CODEC_JPEG, width, height, frame_flags('color', paired),
                         sequence, timestamp_ns,
                         int(getattr(color_frame, 'device_timestamp', 0) or 0), 0)
    return FrameMessage.build(header, payload)


class FrameCompressor(object):
    """Asynchronous compression pipeline for the frames of one stream of a device.

    *kinect* is a :py:class:`streamkinect2.mock.MockKinect`-like object; *stream* one of
    ``'depth'``, ``'ir'`` or ``'color'`` (:py:data:`~.device.STREAMS`), whose frames the
    device emits with ``on_<stream>_frame(<stream>_frame=...)``. Depth and IR frames are
    compressed with *codec* (default grad-zstd); colour frames become JPEG at
    *color_quality* and *color_resolution* (see :py:func:`check_color_options` and
    :py:func:`encode_color_message`; a frame with the sensor's own JPEG goes on as it
    is). A colour compressor pairs its frames with the device's depth captures (a
    :py:class:`~.pairing.CapturePairing` fed from ``on_depth_frame``, in the device's
    ``device_tick_ns`` units): ``frames_paired`` and ``frames_unpaired`` count them.

    Frames emitted by the device are compressed on a worker thread, with
    frame drop if the compressor becomes overloaded: at most one frame waits for the
    worker (a newer frame replaces it) and at most *max_pending* compressed frames wait
    for the IOLoop. Dropped frames are counted in :py:attr:`frames_dropped`.

    A depth or IR frame may be any object with the reference API's ``data`` and
    ``shape`` (see :py:func:`~.device.as_depth_frame`); one without a ``sequence`` gets
    the count of frames the device has delivered. Nothing a frame or a receiver does
    stops the worker: a frame that cannot be compressed is counted in
    :py:attr:`frames_failed` (the error in :py:attr:`last_error`, logged with its
    traceback at most every 10 s) and the next one is compressed; receivers of
    :py:attr:`on_compressed_frame` that raise are logged and the others still called.

    If *io_loop* is provided, it is the :py:class:`tornado.ioloop.IOLoop` on which
    :py:attr:`on_compressed_frame` is emitted; if not, ``IOLoop.current()``.

    ``kinect``: Kinect object associated with this compressor; ``stream``: its stream.
    ``frames_in``, ``frames_out``, ``frames_dropped``, ``frames_failed``: counters.
    ``is_alive``: the worker runs. :py:meth:`seconds_since_frame`: how long the device
    has been silent (on this stream).

    Call :py:meth:`close` (or use a ``with`` statement) to stop the worker thread.
    """

    #: Emitted on the IOLoop thread with keyword argument ``compressed_frame``: a
    #: :py:class:`~.protocol.FrameMessage` holding one frame message (header +
    #: payload, see ``docs/protocol.md``; ``bytes(message)`` or ``message.parts``).
    on_compressed_frame = Signal()

    def __init__(self, kinect: Any, stream: str = 'depth', io_loop: Optional[IOLoop] = None,
                 codec: Optional[int] = None, max_pending: int = 2,
                 color_quality: Optional[int] = None, color_resolution: str = 'hd',
                 pairing: Optional[CapturePairing] = None, active: bool = True) -> None:
        """Start compressing the frames of *stream* of *kinect* (once *active*)."""
        if stream not in STREAMS:
            raise ValueError('stream must be one of {0}, got {1!r}'.format(STREAMS, stream))
        self.kinect: Any = kinect
        self.stream: str = stream
        self.codec: int = _codec.DEFAULT_CODEC if codec is None else codec
        self.color_quality, self.color_resolution = check_color_options(color_quality,
                                                                        color_resolution)
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
        self._keyword = '{0}_frame'.format(stream)
        self._signal: Signal = getattr(kinect, 'on_' + self._keyword)
        self.pairing: Optional[CapturePairing] = None
        self._feeds_pairing = False
        if stream == 'color':
            self.pairing = pairing
            if pairing is None and 'depth' in streams_of(kinect):
                self.pairing = CapturePairing(getattr(kinect, 'device_tick_ns', 0))
                self._feeds_pairing = True
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name='FrameCompressor-{0}-{1}'.format(stream,
                                                                              self._name))
        if self._feeds_pairing:
            kinect.on_depth_frame.connect(self._on_depth_capture, sender=kinect)
        self._active = False
        self.set_active(active)
        self._thread.start()

    @property
    def active(self) -> bool:
        """Tell whether the compressor takes the device's frames (see :py:meth:`set_active`)."""
        return self._active

    def set_active(self, active: bool) -> None:
        """Take the device's frames of this stream (True) or leave them (False).

        An inactive compressor is not connected to the device's signal, so a device that
        makes a stream only for its listeners (the mock's colour, say) spends nothing on
        it: the server keeps a stream inactive while its endpoint has no subscriber.
        """
        active = bool(active)
        if active == self._active or self._closed:
            return
        self._active = active
        if active:
            self._last_frame = time.monotonic()
            self._signal.connect(self._on_frame, sender=self.kinect)
        else:
            self._signal.disconnect(self._on_frame, sender=self.kinect)

    @property
    def frames_paired(self) -> int:
        """Return the colour frames sent with the stamps of a depth capture."""
        return self.pairing.paired if self.pairing is not None else 0

    @property
    def frames_unpaired(self) -> int:
        """Return the colour frames sent with their own stamps (no capture near enough)."""
        if self.stream != 'color':
            return 0
        return self.pairing.unpaired if self.pairing is not None else self.frames_out

    @property
    def is_alive(self) -> bool:
        """Tell whether the worker thread runs."""
        return self._thread.is_alive()

    def seconds_since_frame(self) -> float:
        """Return the seconds since the device's last frame (or since creation)."""
        return time.monotonic() - self._last_frame

    def _on_depth_capture(self, kinect: Any, depth_frame: Any = None,
                          **_kwargs: Any) -> None:
        # Device thread: remember the capture's stamps for pairing colour with it.
        pairing = self.pairing
        if pairing is not None and not self._closed:
            try:
                pairing.add_frame(depth_frame)
            except Exception:  # a frame with odd stamps is left out of the pairing
                pass

    def _on_frame(self, kinect: Any, **kwargs: Any) -> None:
        # Device thread: never blocks beyond a lock hand-over.
        frame = kwargs.get(self._keyword)
        with self._cond:
            if self._latest is not None:
                self.frames_dropped += 1
            # The count stands in for the sequence of frames that have none.
            self._latest = (frame, self.frames_in)
            self.frames_in += 1
            self._last_frame = time.monotonic()
            self._cond.notify()

    def _work(self) -> None:
        running = True
        while running:
            try:
                running = self._work_once()
            except Exception:  # a bug of ours must not end the stream either
                self._failures.error('%s frame compressor of %s: unexpected error',
                                     self.stream.capitalize(), self._name)
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
            message = self._encode(frame, count)
        except Exception as err:  # whatever the frame is, the next one is compressed
            with self._cond:
                self._pending -= 1
                self.frames_failed += 1
                self.last_error = '{0}: {1}'.format(type(err).__name__, err)
            self._failures.error('%s frame compressor of %s: frame %d (%s) failed: %s',
                                 self.stream.capitalize(), self._name, count,
                                 _describe(frame), self.last_error)
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

    def _encode(self, frame: Any, count: int) -> FrameMessage:
        """Return the frame message for *frame*, the device's *count*-th (worker thread)."""
        if self.stream != 'color':
            return encode_frame_message(as_depth_frame(frame, sequence=count), self.codec,
                                        self.stream)
        if not isinstance(frame, ColorFrame):
            raise ValueError('a colour frame must be a ColorFrame, got {0}'.format(
                type(frame).__name__))
        stamps: Optional[Capture] = None
        paired = False
        if self.pairing is not None:
            # After the device has delivered everything up to now: a depth capture made
            # just after this colour frame is already in the ring.
            stamps, paired = self.pairing.pair(frame)
        return encode_color_message(frame, self.color_quality, self.color_resolution,
                                    stamps, paired)

    def _emit(self, message: FrameMessage) -> None:
        with self._cond:
            self._pending -= 1
            self.frames_out += 1
        if self._closed:
            return
        send_isolated(self.on_compressed_frame, self, compressed_frame=message)

    def close(self) -> None:
        """Disconnect from the device and stop the worker thread (waits 1 s at most)."""
        self.set_active(False)
        if self._feeds_pairing:
            self.kinect.on_depth_frame.disconnect(self._on_depth_capture, sender=self.kinect)
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(1.0)

    def __enter__(self) -> 'FrameCompressor':
        """Return the running compressor."""
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        """Close the compressor."""
        self.close()


class DepthFrameCompressor(FrameCompressor):
    """Asynchronous compression pipeline for depth frames (the reference API).

    A :py:class:`FrameCompressor` of the ``'depth'`` stream: *kinect*'s
    ``on_depth_frame`` frames are compressed on a worker thread and emitted as
    :py:attr:`on_compressed_frame` on *io_loop*; see :py:class:`FrameCompressor`.
    """

    #: Emitted on the IOLoop thread with keyword argument ``compressed_frame``: a
    #: :py:class:`~.protocol.FrameMessage` holding one depth frame message. A signal of
    #: its own: receivers connected to it get depth frames only, as they always did.
    on_compressed_frame = Signal()

    def __init__(self, kinect: Any, io_loop: Optional[IOLoop] = None,
                 codec: Optional[int] = None, max_pending: int = 2) -> None:
        """Start compressing the depth frames of *kinect*."""
        super().__init__(kinect, 'depth', io_loop=io_loop, codec=codec,
                         max_pending=max_pending)


def _describe(frame: Any) -> str:
    """Name *frame* for a log line, whatever it is (its repr may raise)."""
    try:
        return '{0} {1!r}'.format(type(frame).__name__, getattr(frame, 'shape', None))
    except Exception:
        return type(frame).__name__
