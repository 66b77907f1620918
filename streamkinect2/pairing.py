"""Pairing colour frames with the depth and IR capture nearest in time.

Depth and IR come from one capture of the time-of-flight camera: they share a sequence
number and timestamps. Colour comes from the other camera, on its own clock phase. The
server keeps the last few depth captures of a device (:py:class:`CapturePairing`, filled
from ``on_depth_frame`` on the device thread) and gives each colour frame the sequence and
timestamps of the capture nearest in device time, when it is within half a colour frame
period (1/60 s at 30 fps); otherwise the colour frame keeps its own (unpaired, counted).

Device time is the frames' ``device_timestamp`` in the units the device declares
(``device_tick_ns``, nanoseconds per tick), compared modulo 2**32 (libfreenect2's tick
counter is 32 bits and wraps after about 6 days of 0.125 ms ticks); a device that
declares no tick (0 or absent), or a frame without a device timestamp (0), is compared
by host capture time (``timestamp_ns``).
"""
import collections
import threading
from typing import Any, Deque, NamedTuple, Optional, Tuple

__all__ = ['Capture', 'CapturePairing', 'COLOR_HALF_PERIOD_NS', 'PAIRING_RING',
           'DEVICE_CLOCK_BITS']

#: Half the frame period of the colour camera at 30 fps: the furthest a colour frame may
#: be from a depth capture and still be paired with it.
COLOR_HALF_PERIOD_NS: int = 1000000000 // 60
#: Depth captures remembered per device.
PAIRING_RING: int = 8
#: Device timestamps are compared modulo 2 ** DEVICE_CLOCK_BITS.
DEVICE_CLOCK_BITS: int = 32


class Capture(NamedTuple):
    """The stamps of one depth (+ IR) capture, or of a colour frame as paired."""

    sequence: int
    timestamp_ns: int
    device_timestamp: int


class CapturePairing(object):
    """Pair colour frames with recent depth captures of one device.

    *tick_ns* is the device's ``device_tick_ns`` (0 or None: compare host timestamps);
    *half_period_ns* the largest distance paired; *size* the captures remembered.
    :py:meth:`add_capture` is called on the device thread for each depth frame,
    :py:meth:`pair` on whatever thread handles colour: both are thread-safe.

    ``paired`` and ``unpaired``: colour frames counted by :py:meth:`pair`.
    """

    def __init__(self, tick_ns: Optional[float] = None,
                 half_period_ns: int = COLOR_HALF_PERIOD_NS, size: int = PAIRING_RING) -> None:
        """Remember the last *size* captures; pair within *half_period_ns*."""
        try:
            tick = float(tick_ns or 0)
        except (TypeError, ValueError):
            tick = 0.0
        self.tick_ns: float = tick if tick > 0 else 0.0
        self.half_period_ns = int(half_period_ns)
        self.paired = 0
        self.unpaired = 0
        self._ring: Deque[Capture] = collections.deque(maxlen=int(size))
        self._lock = threading.Lock()

    def add_capture(self, sequence: int, timestamp_ns: int, device_timestamp: int = 0) -> None:
        """Remember a depth capture."""
        capture = Capture(int(sequence), int(timestamp_ns), int(device_timestamp or 0))
        with self._lock:
            self._ring.append(capture)

    def add_frame(self, frame: Any) -> None:
        """Remember the capture of a depth frame (one without stamps is left out)."""
        sequence = getattr(frame, 'sequence', None)
        timestamp_ns = getattr(frame, 'timestamp_ns', None)
        if sequence is None or timestamp_ns is None:
            return
        self.add_capture(sequence, timestamp_ns, getattr(frame, 'device_timestamp', 0))

    def _distance_ns(self, capture: Capture, timestamp_ns: int,
                     device_timestamp: int) -> float:
        """Return capture time minus colour time, in ns (device clock when declared).

        A device timestamp of 0 means none: that pair is compared by host time.
        """
        if self.tick_ns and capture.device_timestamp and device_timestamp:
            modulus = 1 << DEVICE_CLOCK_BITS
            ticks = (capture.device_timestamp - device_timestamp) % modulus
            if ticks >= modulus // 2:
                ticks -= modulus
            return ticks * self.tick_ns
        return float(capture.timestamp_ns - timestamp_ns)

    def nearest(self, timestamp_ns: int, device_timestamp: int = 0) -> Optional[Capture]:
        """Return the capture to pair a colour frame of these stamps with, or None.

        The nearest capture within the half period; of two equally near, the earlier
        (and of two with the same stamps, the later delivered). Nothing is counted.
        """
        with self._lock:
            captures = list(reversed(self._ring))
        best: Optional[Capture] = None
        best_key = None
        for capture in captures:
            distance = self._distance_ns(capture, timestamp_ns, device_timestamp)
            if abs(distance) > self.half_period_ns:
                continue
            key = (abs(distance), distance)  # equally near: the earlier (negative) first
            if best_key is None or key < best_key:
                best, best_key = capture, key
        return best

    def pair(self, frame: Any) -> Tuple[Capture, bool]:
        """Return ``(stamps, paired)``: what a colour *frame* goes out with.

        The stamps are the capture's when one is near enough (``paired`` True, counted
        in :py:attr:`paired`), else the frame's own (counted in :py:attr:`unpaired`).
        The frame itself is left as it is.
        """
        own = Capture(int(frame.sequence), int(frame.timestamp_ns),
                      int(getattr(frame, 'device_timestamp', 0) or 0))
        capture = self.nearest(own.timestamp_ns, own.device_timestamp)
        if capture is None:
            self.unpaired += 1
            return own, False
        self.paired += 1
        return capture, True
