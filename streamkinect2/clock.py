"""The offset between a server's clock and this host's, from timed pings (NTP-style).

A frame's ``timestamp_ns`` is its capture time on the *server's* clock. When the two
hosts' clocks differ (no NTP on a robot's LAN is common), that stamp is off on the
client by as much. A client measures the difference over the control channel: it sends
a ``ping`` at ``t1`` (its clock), the server stamps its receipt ``t2`` and its reply
``t3`` (its clock, the one that stamps frames), the client receives the ``pong`` at
``t4``. Then, with ``theta`` the server's clock minus the client's::

    offset = ((t2 - t1) + (t3 - t4)) / 2        delay = (t4 - t1) - (t3 - t2)

and, whatever the two legs of the trip take, ``t3 - t4 <= theta <= t2 - t1``: the true
offset is within ``delay / 2`` of ``offset``. So the sample with the least delay gives
the tightest bound; its error is half the difference between the two legs' times.

:py:class:`ClockOffsetEstimator` keeps the last :py:data:`WINDOW` samples and estimates
from the one whose bound is tightest once aged (``delay / 2`` plus
:py:data:`MAX_DRIFT` times its age, as NTP's dispersion: two free-running clocks drift
apart). A sample whose bound cannot hold together with the estimate's (a clock stepped,
or a lie) is held back; :py:data:`STEP_SAMPLES` such samples in a row that agree with
each other replace the window (the server's clock jumped). Samples that cannot be true
(a server that held the request for a negative time, times that are not 64-bit
integers, a delay over :py:data:`MAX_DELAY_NS`) are rejected and counted. Memory is
bounded: the window and the held-back samples, nothing more.

The client (:py:class:`~streamkinect2.client.Client`) pings at connection time in a
burst, then periodically, and feeds the replies here; see ``docs/protocol.md``.
"""
import collections
import threading
import time
from typing import Any, Deque, Dict, List, NamedTuple, Optional

from .protocol import is_int64

__all__ = ['ClockEstimate', 'ClockOffsetEstimator', 'ClockSample', 'MAX_DRIFT', 'WINDOW']

#: Samples a :py:class:`ClockOffsetEstimator` keeps (at one ping a second: 16 s). More
#: samples, more chances that one met no queue on its way (a link busy with frames).
WINDOW: int = 16
#: How fast two free-running clocks may drift apart (50 ppm: a sample's bound widens by
#: 50 us for every second of its age).
MAX_DRIFT: float = 50e-6
#: Consecutive samples that disagree with the estimate, and agree with each other, that
#: make it start again from them (a clock that stepped).
STEP_SAMPLES: int = 3
#: Samples older than this (s) are forgotten.
MAX_AGE: float = 60.0
#: A round trip longer than this (ns) is no sample (a client gives up long before).
MAX_DELAY_NS: int = 60 * 10 ** 9
#: Slack (ns) allowed when checking two samples' bounds against each other: clock
#: reading granularity and rounding.
AGREEMENT_SLACK_NS: int = 20000


class ClockSample(NamedTuple):
    """One timed ping: the offset it measured and the round trip it took."""

    #: the server's clock minus this host's, ns (the midpoint of the bound)
    offset_ns: int
    #: round trip less the time the server held the request, ns
    delay_ns: int
    #: monotonic time (s) the reply arrived
    at: float


class ClockEstimate(NamedTuple):
    """The current estimate of the server's clock minus this host's."""

    #: the server's clock minus this host's, ns: a server stamp less this is local time
    offset_ns: int
    #: round trip of the sample it comes from, ns
    round_trip_ns: int
    #: bound on its error, ns: half that round trip, plus the drift since it was taken
    uncertainty_ns: int
    #: samples in the window
    samples: int
    #: monotonic time (s) the sample it comes from arrived
    at: float


class ClockOffsetEstimator(object):
    """Estimate a server's clock offset from timed pings; see the module docstring.

    :py:meth:`add` takes the four times of one exchange; :py:attr:`estimate` is the
    current :py:class:`ClockEstimate` (None before the first valid sample);
    :py:meth:`to_local_ns` moves a server stamp onto this host's clock. Counters:
    ``accepted`` samples, ``rejected`` (impossible, or replies that were not timed pongs:
    :py:meth:`reject`), ``outliers`` (held back, then dropped), ``steps`` (the window
    started again after a jump), ``last_rejection`` (why, last time). ``supported`` is
    None until the server has answered a timed ping, then whether it reports its clock.
    Written by one thread (the client's IOLoop); others may read.
    """

    def __init__(self, window: int = WINDOW, max_drift: float = MAX_DRIFT,
                 step_samples: int = STEP_SAMPLES, max_age: float = MAX_AGE) -> None:
        """Start with no sample; keep *window* samples."""
        if window < 1 or step_samples < 1:
            raise ValueError('window and step_samples must be at least 1')
        self.window = int(window)
        self.max_drift = float(max_drift)
        self.step_samples = int(step_samples)
        self.max_age = float(max_age)
        self._lock = threading.Lock()
        self._samples: Deque[ClockSample] = collections.deque(maxlen=self.window)
        self._held: List[ClockSample] = []
        #: The current estimate (a new tuple on every change: read it once).
        self.estimate: Optional[ClockEstimate] = None
        self.supported: Optional[bool] = None
        self.accepted = 0
        self.rejected = 0
        self.outliers = 0
        self.steps = 0
        self.last_rejection: Optional[str] = None

    # --- samples ---------------------------------------------------------------------

    def add(self, t1: Any, t2: Any, t3: Any, t4: Any,
            now: Optional[float] = None) -> Optional[ClockSample]:
        """Add the exchange sent at *t1*, received at *t2*, answered at *t3*, back at *t4*.

        *t1* and *t4* are this host's clock, *t2* and *t3* the server's, all integer ns;
        *now* is the monotonic time (s) of *t4* (default: the time now). Return the
        sample, or None if it was rejected (counted, with the reason in
        ``last_rejection``).
        """
        now = time.monotonic() if now is None else float(now)
        reason = self._impossible(t1, t2, t3, t4)
        if reason is not None:
            self.reject(reason)
            return None
        offset = ((t2 - t1) + (t3 - t4)) // 2
        delay = (t4 - t1) - (t3 - t2)
        sample = ClockSample(offset, delay, now)
        with self._lock:
            self.supported = True
            self.accepted += 1
            self._take(sample)
        return sample

    @staticmethod
    def _impossible(t1: Any, t2: Any, t3: Any, t4: Any) -> Optional[str]:
        if not all(is_int64(t) for t in (t1, t2, t3, t4)):
            return 'times are not 64-bit integers'
        if t4 < t1:
            return 'the reply came back before the request left (local clock stepped?)'
        if t3 < t2:
            return 'the server answered before it received the request'
        delay = (t4 - t1) - (t3 - t2)
        if delay < 0:
            return 'the server held the request longer than its round trip'
        if delay > MAX_DELAY_NS:
            return 'round trip of {0:.0f} s'.format(delay * 1e-9)
        return None

    def reject(self, reason: str) -> None:
        """Count a reply that gave no sample, for *reason* (a string, kept as the last)."""
        with self._lock:
            self.rejected += 1
            self.last_rejection = str(reason)[:200]

    def unsupported(self, reason: str) -> None:
        """Note that the server does not report its clock (a plain ``pong``, an ``error``)."""
        with self._lock:
            self.supported = False
            self.last_rejection = str(reason)[:200]

    def reset(self) -> None:
        """Forget every sample (this host's clock stepped): no estimate until the next."""
        with self._lock:
            self._samples.clear()
            self._held = []
            self.estimate = None

    def _bound(self, sample: ClockSample, now: float) -> float:
        """Half-width (ns) of the interval *sample* says the offset lies in, at *now*."""
        return sample.delay_ns / 2.0 + self.max_drift * max(0.0, now - sample.at) * 1e9

    def _agree(self, a: ClockSample, b: ClockSample, now: float) -> bool:
        gap = abs(a.offset_ns - b.offset_ns)
        return gap <= self._bound(a, now) + self._bound(b, now) + AGREEMENT_SLACK_NS

    def _take(self, sample: ClockSample) -> None:
        now = sample.at
        while self._samples and now - self._samples[0].at > self.max_age:
            self._samples.popleft()
        best = self._best(now)
        if best is None or self._agree(sample, best, now):
            self.outliers += len(self._held)
            self._held = []
            self._samples.append(sample)
        else:
            self._held = [s for s in self._held if self._agree(s, sample, now)]
            self._held.append(sample)
            if len(self._held) < self.step_samples:
                return
            # The estimate's clock and these samples' cannot both be right: they, the
            # newest, win (a clock stepped; or the samples before were the lie).
            self.steps += 1
            self._samples.clear()
            self._samples.extend(self._held)
            self._held = []
        best = self._best(now)
        if best is not None:
            self.estimate = ClockEstimate(best.offset_ns, best.delay_ns,
                                          int(round(self._bound(best, now))),
                                          len(self._samples), best.at)

    def _best(self, now: float) -> Optional[ClockSample]:
        if not self._samples:
            return None
        return min(self._samples, key=lambda s: (self._bound(s, now), -s.at))

    # --- use -------------------------------------------------------------------------

    def to_local_ns(self, server_ns: int) -> Optional[int]:
        """Return the server stamp *server_ns* on this host's clock (None: no estimate)."""
        estimate = self.estimate
        if estimate is None:
            return None
        return int(server_ns) - estimate.offset_ns

    def uncertainty_ns(self, now: Optional[float] = None) -> Optional[int]:
        """Return the bound on the estimate's error at monotonic *now* (None: none)."""
        estimate = self.estimate
        if estimate is None:
            return None
        now = time.monotonic() if now is None else now
        return int(round(estimate.round_trip_ns / 2.0
                         + self.max_drift * max(0.0, now - estimate.at) * 1e9))

    def as_dict(self, now: Optional[float] = None) -> Dict[str, Any]:
        """Return the estimate and counters as a dict (None where there is no estimate).

        ``offset_ns``, ``round_trip_ns``, ``uncertainty_ns`` (at *now*: it grows with
        the age of the sample), ``age`` (s since that sample), ``samples`` (in the
        window), ``accepted``, ``rejected``, ``outliers``, ``steps``, ``supported``,
        ``last_rejection``.
        """
        now = time.monotonic() if now is None else now
        estimate = self.estimate
        return {
            'offset_ns': estimate.offset_ns if estimate is not None else None,
            'round_trip_ns': estimate.round_trip_ns if estimate is not None else None,
            'uncertainty_ns': self.uncertainty_ns(now),
            'age': round(now - estimate.at, 3) if estimate is not None else None,
            'samples': estimate.samples if estimate is not None else 0,
            'accepted': self.accepted, 'rejected': self.rejected,
            'outliers': self.outliers, 'steps': self.steps, 'supported': self.supported,
            'last_rejection': self.last_rejection,
        }
