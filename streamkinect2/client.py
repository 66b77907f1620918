"""Client for a streaming Kinect2 server."""
import collections
import logging
import random
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Type

from blinker import Signal
from tornado.ioloop import IOLoop, PeriodicCallback
import zmq
from zmq.eventloop.zmqstream import ZMQStream

from . import codec as _codec
from .clock import ClockOffsetEstimator
from .common import EndpointType, ProtocolError, send_isolated
from .device import COLOR_HEIGHT, COLOR_WIDTH, ColorFrame, DepthFrame, IrFrame, STREAMS
from .protocol import (CONTROL_MAX_MESSAGE_SIZE, decode_control, decode_frame_message,
                       decode_pong_times, encode_control, FLAG_PAIRED, FrameHeader,
                       header_stream, MessageParts, MessageType, ping_payload,
                       validate_me_payload)
from .security import CurveClientConfig, new_socket
from .stats import SequenceGaps, Window

__all__ = ['Client', 'FrameStats', 'depth_endpoint_for', 'stream_endpoint_for',
           'max_depth_payload_bytes', 'max_color_payload_bytes']

log = logging.getLogger(__name__)

#: Largest frame (in pixels) a client accepts by default: more than any Kinect's depth.
DEFAULT_MAX_FRAME_PIXELS = 1024 * 1024
#: Largest colour frame (in pixels) a client accepts by default: a Kinect v2's 1920 x 1080.
DEFAULT_MAX_COLOR_PIXELS = COLOR_WIDTH * COLOR_HEIGHT
#: Most devices a client takes from one server by default (each costs sockets).
DEFAULT_MAX_DEVICES = 32
#: Frame messages a client's socket (one per device and stream) queues before the newest
#: are dropped.
DEPTH_RECV_HWM = 4
#: Seconds between two warnings about invalid messages of one stream of one device.
INVALID_LOG_PERIOD = 5.0
#: Seconds of frames a device's :py:class:`FrameStats` window keeps (rate, latency).
STATS_WINDOW = 10.0
#: Milliseconds between two timed pings (the clock offset estimate), by default, on
#: average: each wait is drawn between half and one and a half times it, so that pings
#: do not keep landing at one phase of the frames (1 s is 30 frame periods) and meet
#: the same queue on the way each time.
CLOCK_PERIOD = 1000
#: Timed pings sent back to back on connection, for a first estimate at once.
CLOCK_BURST = 8
#: Nanoseconds by which this host's wall clock may move against its monotonic clock
#: before the client counts it as stepped (slewing moves both alike; only steps differ).
LOCAL_STEP_NS = 1000000


def max_depth_payload_bytes(max_pixels: int) -> int:
    """Return the largest depth payload a frame of up to *max_pixels* pixels can take.

    The raw codec takes 2 bytes a pixel; grad-zstd a content of ``2n + n/8`` bytes in a
    zstd frame, which is a little larger than its content when nothing compresses. A
    client's depth socket refuses anything larger before allocating it.
    """
    content = 2 * max_pixels + (max_pixels + 7) // 8
    return 1 + content + (content >> 7) + 1024


def max_color_payload_bytes(max_pixels: int) -> int:
    """Return the largest colour (JPEG) payload a frame of up to *max_pixels* may take.

    Measured with libjpeg-turbo on 1920 x 1080 uniform noise, the worst content for a
    baseline JPEG: 4.11 bytes a pixel at quality 100 without chroma subsampling (8.1 MiB
    a frame), 1.98 with the 4:2:0 a server sends; ordinary scenes take well under one
    byte. So 4.25 bytes a pixel and 64 KiB of headers (8.4 MiB at 1920 x 1080) refuse
    nothing a camera or an encoder can sensibly make, and a client's colour socket
    refuses anything larger before allocating it.
    """
    return (17 * max_pixels) // 4 + 65536


def stream_endpoint_for(control_endpoint: str, endpoint: str, follow: bool = False,
                        stream: str = 'depth') -> str:
    """Return where to subscribe to a stream *endpoint* a server named in its ``me``.

    Unless *follow* is true, a ``me`` cannot send the client elsewhere: only ``tcp://``
    endpoints are followed, and at the host of *control_endpoint* (the host the client
    connected to; the server names only the port). With *follow*, *endpoint* is used as
    named (any host, any ZeroMQ transport). Raises ValueError for an endpoint that is
    not followed. The rule is the same for every stream; *stream* only names it in the
    error.
    """
    if follow:
        return endpoint
    transport, _, rest = control_endpoint.partition('://')
    if transport != 'tcp':
        # Not reached over the network (ipc://, inproc://): same transport only.
        if not endpoint.startswith(transport + '://'):
            raise ValueError('{0} endpoint {1!r} is not {2}:// like the control '
                             'endpoint'.format(stream, endpoint, transport))
        return endpoint
    if not endpoint.startswith('tcp://'):
        raise ValueError('{0} endpoint {1!r} is not tcp://; only tcp:// to the host '
                         'connected to is followed (see follow_endpoints)'.format(
                             stream, endpoint))
    port = endpoint.rpartition(':')[2]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('{0} endpoint {1!r} has no valid port'.format(stream, endpoint))
    return 'tcp://{0}:{1}'.format(rest.rpartition(':')[0], int(port))


def depth_endpoint_for(control_endpoint: str, depth_endpoint: str,
                       follow: bool = False) -> str:
    """Return where to subscribe to a depth endpoint (see :py:func:`stream_endpoint_for`)."""
    return stream_endpoint_for(control_endpoint, depth_endpoint, follow, 'depth')


class FrameStats(object):
    """Counters for one stream (depth, IR or colour) of one device, as seen by a client.

    ``received`` frames decoded and delivered; ``invalid`` messages rejected (malformed,
    undecodable, of another stream); ``dropped`` frames missing from the sequence (lost
    upstream); ``payload_bytes`` bytes received (headers and payloads); ``raw_bytes``
    bytes the delivered frames decode (or, colour, would decode) to; ``last_sequence``;
    ``last_latency`` seconds from capture to delivered, last frame (on this host's clock:
    the capture stamp moved by the client's clock offset estimate, once there is one; see
    :py:meth:`Client.to_local_ns`). ``window`` (a
    :py:class:`~streamkinect2.stats.Window`) holds the last ``STATS_WINDOW`` s of frames
    with their latencies: :py:meth:`rate` and
    :py:meth:`latency_percentile` read it. ``stalled`` is True while an enabled stream
    has delivered nothing for the client's ``stall_timeout``. Written on the client's
    IOLoop; other threads may read.
    """

    #: The counters :py:meth:`as_dict` returns.
    COUNTERS = ('received', 'invalid', 'dropped', 'payload_bytes', 'raw_bytes',
                'last_sequence', 'last_latency')

    def __init__(self, window: float = STATS_WINDOW) -> None:
        """Start all counters at zero."""
        self.received = 0
        self.invalid = 0
        self.payload_bytes = 0
        self.raw_bytes = 0
        self.last_latency: Optional[float] = None
        self.gaps = SequenceGaps()
        self.window = Window(window)
        self.stalled = False
        #: Monotonic time of the last frame delivered (or of enabling the stream).
        self.last_frame_at: Optional[float] = None

    @property
    def dropped(self) -> int:
        """Return the number of frames missing from the sequence."""
        return self.gaps.missing

    @property
    def last_sequence(self) -> Optional[int]:
        """Return the sequence number of the last frame delivered (None before the first)."""
        return self.gaps.last

    def add_frame(self, frame: Any, message_bytes: int, now: Optional[float] = None,
                  raw_bytes: Optional[int] = None, capture_ns: Optional[int] = None) -> None:
        """Account one delivered frame that came in a message of *message_bytes*.

        *raw_bytes* is what the frame decodes to (default: its ``data``'s size);
        *capture_ns* its capture time on this host's clock (default: its stamp as sent).
        """
        now = time.monotonic() if now is None else now
        capture_ns = frame.timestamp_ns if capture_ns is None else capture_ns
        self.last_latency = (time.time_ns() - capture_ns) * 1e-9
        self.gaps.add(frame.sequence)
        self.received += 1
        self.payload_bytes += message_bytes
        self.raw_bytes += frame.data.nbytes if raw_bytes is None else raw_bytes
        self.last_frame_at = now
        self.window.add(self.last_latency, now)

    def rate(self, period: Optional[float] = None) -> float:
        """Return frames per second over the last *period* s (default: the window)."""
        return self.window.rate(period)

    def latency_percentile(self, fraction: float, period: Optional[float] = None) -> float:
        """Return the *fraction* percentile of the latencies (s) of the last *period* s."""
        return self.window.percentile(fraction, period)

    def as_dict(self) -> Dict[str, Any]:
        """Return the counters as a dict."""
        return {name: getattr(self, name) for name in self.COUNTERS}


def _no_callback(msg_type: MessageType, payload: Any) -> None:
    pass


class _Request(object):
    __slots__ = ('msg_type', 'payload', 'callback', 'sent_at', 'timed', 'sent_ns',
                 'sent_monotonic_ns')

    def __init__(self, msg_type: MessageType, payload: Any,
                 callback: Callable[[MessageType, Any], None], timed: bool = False) -> None:
        self.msg_type = msg_type
        self.payload = payload
        self.callback = callback
        self.sent_at: Optional[float] = None
        # A timed ping: its payload is made as it leaves, with these times.
        self.timed = timed
        self.sent_ns = 0
        self.sent_monotonic_ns = 0


class _Stream(NamedTuple):
    """What differs between the streams a client receives: one row per stream."""

    #: the stream's name, as in ``me`` records and :py:data:`~streamkinect2.device.STREAMS`
    name: str
    #: how log lines name it
    label: str
    #: the Client signal its frames are emitted with
    signal: str
    #: the keyword argument the frame is given as
    argument: str
    #: the class of its frames
    frame_class: Type[Any]
    #: the Client method that decodes one of its messages
    decoder: str


#: The streams a client receives, by name: one code path, this table says the rest.
_STREAM_TABLE: Dict[str, _Stream] = {
    'depth': _Stream('depth', 'depth', 'on_depth_frame', 'depth_frame', DepthFrame,
                     'decode_depth_message'),
    'ir': _Stream('ir', 'IR', 'on_ir_frame', 'ir_frame', IrFrame, 'decode_ir_message'),
    'color': _Stream('color', 'colour', 'on_color_frame', 'color_frame', ColorFrame,
                     'decode_color_message'),
}
assert tuple(_STREAM_TABLE) == STREAMS


class _Subscription(object):
    """One SUB socket: a stream of a device, where it is subscribed and since when."""

    __slots__ = ('stream', 'endpoint', 'subscribed_at', 'last_message_at')

    def __init__(self, stream: ZMQStream, endpoint: str, now: float) -> None:
        self.stream = stream
        self.endpoint = endpoint
        self.subscribed_at = now  # monotonic
        self.last_message_at = now  # monotonic: any message, valid or not


class Client(object):
    """Client for a streaming kinect2 server.

    Usually the client will be used with a ``with`` statement::

        with Client(endpoint) as c:
            # c is connected here
            pass
        # c is disconnected here

    *control_endpoint* is the zeromq control endpoint of the server. *zmq_ctx* is the
    zeromq context to create sockets in (default ``zmq.Context.instance()``). *io_loop*
    is the tornado IOLoop the sockets are served on (default ``IOLoop.current()``); call
    the client's methods on that loop's thread. If *connect_immediately* is True the
    client connects when constructed, else :py:meth:`connect` must be called.

    ``server_name``: the server's human-readable name, or None until it has replied.
    ``endpoints``: dict of endpoint addresses keyed by ``EndpointType``; the control
    endpoint is the one given (a server's ``me`` cannot change it).
    ``is_connected``: True between :py:meth:`connect` and :py:meth:`disconnect` (which
    happens by itself when the server stops answering, or answers ``who`` with anything
    but a valid ``me``). ``is_identified``: True once the server has identified itself.
    ``kinect_ids``: ids of the server's devices. ``devices``: their ``me`` records.
    ``stats``: the depth :py:class:`FrameStats` of each device in ``kinect_ids`` (dropped
    with the device, after ``on_remove_kinect``); :py:meth:`stream_stats` gives those of
    any stream.
    ``heartbeat_period``: delay in ms between heartbeat requests; changes are ignored
    once :py:meth:`connect` has been called. ``response_timeout``: the maximum wait in
    ms for a reply before the client gives up and disconnects. ``stall_timeout``: ms
    without a frame from an enabled stream, while the server answers, after which the
    stream is reported stalled (a warning, ``stream_stats(id, stream).stalled``).
    ``max_frame_pixels``: the largest depth or IR frame accepted; a message may not make
    the client allocate more than one such frame. ``max_color_pixels``: the same for
    colour (default 1920 x 1080); a colour message is at most
    :py:func:`max_color_payload_bytes` of it. ``max_devices``: the most devices taken
    from a server (the first ones it lists). ``follow_endpoints``: if False (the
    default), streams are received only over ``tcp://`` from the host connected to (see
    :py:func:`stream_endpoint_for`); True follows whatever the server names.

    Each enabled stream of each device has a SUB socket of its own. A message of a
    stream is delivered only if its header says it is that stream; colour only as a
    complete JPEG of the size its header says (only the JPEG's header is read: a
    :py:class:`~streamkinect2.device.ColorFrame` decodes its pixels when asked, so a
    client that forwards the JPEG bytes never decodes them). Anything else is dropped
    and counted (``invalid``).

    *curve*, a :py:class:`~streamkinect2.security.CurveClientConfig`, turns on CURVE
    encryption and authentication towards a server that has it on.

    Clocks: a frame's stamp is its capture time on the server's clock. Once the server
    has identified itself the client sends timed pings, ``clock_burst`` back to back,
    then one every ``clock_period`` ms on average (0: none after the burst), and
    estimates the server's clock minus its own: ``clock`` (a
    :py:class:`~streamkinect2.clock.ClockOffsetEstimator`: ``clock.estimate``,
    ``clock.as_dict()``), :py:meth:`to_local_ns` to move a stamp onto this host's clock.
    A server that answers them with a plain ``pong`` (or an ``error``: a 2014 server)
    gets no more (``clock.supported`` False); replies that cannot be true are counted
    and ignored (``clock.rejected``). Latencies in the stats are on this host's clock.

    Receivers of the signals are called on the IOLoop; one that raises is logged and
    stops neither the others nor the stream.
    """

    #: Emitted when the client has connected and the server has identified itself.
    on_connect = Signal()
    #: Emitted when the client disconnects from a server (also when it stops answering).
    on_disconnect = Signal()
    #: Emitted with keyword argument ``kinect_id`` when a device becomes available.
    on_add_kinect = Signal()
    #: Emitted with keyword argument ``kinect_id`` when a device is removed.
    on_remove_kinect = Signal()
    #: Emitted with keyword arguments ``depth_frame`` (a ``DepthFrame``) and
    #: ``kinect_id`` for each depth frame received and decoded.
    on_depth_frame = Signal()
    #: Emitted with keyword arguments ``ir_frame`` (an ``IrFrame``) and ``kinect_id`` for
    #: each IR frame received and decoded (after :py:meth:`enable_ir_frames`).
    on_ir_frame = Signal()
    #: Emitted with keyword arguments ``color_frame`` (a ``ColorFrame`` of JPEG bytes,
    #: decoded only when its ``array`` is read) and ``kinect_id`` for each colour frame
    #: received (after :py:meth:`enable_color_frames`).
    on_color_frame = Signal()

    def __init__(self, control_endpoint: str, connect_immediately: bool = False,
                 zmq_ctx: Optional[zmq.Context] = None, io_loop: Optional[IOLoop] = None,
                 curve: Optional[CurveClientConfig] = None) -> None:
        """Create a client for the server at *control_endpoint*."""
        self._curve = curve
        self.heartbeat_period = 500
        self.response_timeout = 2000
        self.clock_period = CLOCK_PERIOD
        self.clock_burst = CLOCK_BURST
        #: The estimate of the server's clock offset (a new one on every connect()).
        self.clock = ClockOffsetEstimator()
        self.stall_timeout = 2000
        self.max_frame_pixels = DEFAULT_MAX_FRAME_PIXELS
        self.max_color_pixels = DEFAULT_MAX_COLOR_PIXELS
        self.max_devices = DEFAULT_MAX_DEVICES
        self.follow_endpoints = False
        self.server_name: Optional[str] = None
        self.endpoints: Dict[EndpointType, str] = {EndpointType.control: control_endpoint}
        self.is_connected = False
        self.devices: Dict[str, Dict[str, Any]] = collections.OrderedDict()
        self.stats: Dict[str, FrameStats] = {}
        # id: {stream: FrameStats}; 'depth' is stats[id]
        self._stream_stats: Dict[str, Dict[str, FrameStats]] = {}
        self._ctx = zmq_ctx if zmq_ctx is not None else zmq.Context.instance()
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self._control_stream: Optional[ZMQStream] = None
        # stream: {id: _Subscription}
        self._subscriptions: Dict[str, Dict[str, _Subscription]] = {
            name: {} for name in STREAMS}
        # (id, stream): (monotonic time, invalid count) of the last warning
        self._invalid_logged: Dict[Any, Any] = {}
        self._queue: Any = collections.deque()
        self._in_flight: Optional[_Request] = None
        self._last_sent = 0.0
        self._last_who = 0.0
        self._next_ping = 0.0  # monotonic time the next timed ping is due
        self._recent_pings: Any = collections.deque(maxlen=16)  # their client_ns
        self._pinging = False  # a timed ping queued or in flight
        self._burst_left = 0
        self._clock_base: Optional[int] = None  # wall minus monotonic clock, ns
        self._clock_warned = False
        self._identified = False
        self._capped_logged = False
        self._ticker: Optional[PeriodicCallback] = None
        if connect_immediately:
            self.connect()

    @property
    def kinect_ids(self) -> List[str]:
        """List of the ids of the server's devices."""
        return list(self.devices)

    @property
    def is_identified(self) -> bool:
        """Return True once the server connected to has identified itself."""
        return self.is_connected and self._identified

    def to_local_ns(self, timestamp_ns: int) -> Optional[int]:
        """Return a server stamp (a frame's ``timestamp_ns``) on this host's clock.

        That is *timestamp_ns* less the estimated offset of the server's clock
        (``clock.estimate.offset_ns``), ns since the epoch as ``time.time_ns()``; None
        while there is no estimate (before the first timed pong, or from a server that
        does not report its clock). Its error is within ``clock.as_dict()
        ['uncertainty_ns']`` while the two clocks keep their rates.
        """
        return self.clock.to_local_ns(timestamp_ns)

    # --- connection ------------------------------------------------------------------

    def connect(self) -> None:
        """Explicitly connect the client (again, after a disconnect)."""
        if self.is_connected:
            log.warning('Client already connected')
            return
        sock = self._socket(zmq.REQ)
        # A reply larger than any valid one is refused by ZeroMQ before it is allocated.
        sock.maxmsgsize = CONTROL_MAX_MESSAGE_SIZE
        try:
            sock.connect(self.endpoints[EndpointType.control])
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._control_stream = ZMQStream(sock, self._io_loop)
        self._control_stream.on_recv(self._on_control_recv)
        self.is_connected = True
        self._identified = False
        self._capped_logged = False
        self._queue.clear()
        self._in_flight = None
        self.clock = ClockOffsetEstimator()
        self._pinging = False
        self._burst_left = 0
        self._clock_base = None
        self._clock_warned = False
        self._recent_pings.clear()
        self._heartbeat_ms = self.heartbeat_period  # fixed until the next connect()
        period = max(10, min(100, self._heartbeat_ms / 2, self.response_timeout / 4))
        self._ticker = PeriodicCallback(self._tick, period)
        self._ticker.start()
        self._who()

    def _socket(self, socket_type: int) -> zmq.Socket:
        return new_socket(self._ctx, socket_type, self._curve)

    def disconnect(self) -> None:
        """Explicitly disconnect the client."""
        if not self.is_connected:
            log.warning('Client not connected')
            return
        self._disconnect()

    def _disconnect(self, reason: Optional[str] = None) -> None:
        if reason:
            log.warning('Disconnecting from %s: %s', self.endpoints[EndpointType.control],
                        reason)
        ticker, stream = self._ticker, self._control_stream
        self._ticker = self._control_stream = None
        if ticker is not None:
            ticker.stop()
        if stream is not None:
            stream.close(linger=0)
        self.is_connected = False
        self._queue.clear()
        self._in_flight = None
        for kinect_id in list(self.devices):
            self._remove_device(kinect_id)
        if self._identified:
            self._identified = False
            send_isolated(self.on_disconnect, self)

    def __enter__(self) -> 'Client':
        """Connect the client and return it."""
        self.connect()
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        """Disconnect the client."""
        if self.is_connected:
            self.disconnect()

    # --- requests --------------------------------------------------------------------

    def ping(self, pong_cb: Optional[Callable[[], Any]] = None) -> None:
        """Send a 'ping'; *pong_cb*, if not None, is called with no arguments on 'pong'."""
        self._ensure_connected()

        def got_pong(msg_type: MessageType, payload: Any) -> None:
            if msg_type is not MessageType.pong:
                raise ProtocolError('expected pong, got {0}'.format(msg_type.name))
            if pong_cb is not None:
                pong_cb()
        self._request(MessageType.ping, None, got_pong)

    def _who(self) -> None:
        self._last_who = time.monotonic()
        self._request(MessageType.who, None, self._got_me)

    # --- clock ------------------------------------------------------------------------

    def _timed_ping(self) -> None:
        self._pinging = True
        self._queue.append(_Request(MessageType.ping, None, _no_callback, timed=True))
        self._pump()

    def _clock_due(self, now: float) -> bool:
        return (self._identified and not self._pinging and self.clock.supported is not False
                and self.clock_period > 0 and now >= self._next_ping)

    def _got_timed_reply(self, request: _Request, frames: List[bytes], received_ns: int,
                         received_monotonic_ns: int) -> None:
        """Feed the clock estimate with the reply to a timed ping; never raise.

        A reply that is not a timed pong is no reason to leave the server: a plain
        ``pong`` or an ``error`` says it does not report its clock (no more timed
        pings); anything else is counted as rejected and the pings go on.
        """
        self._pinging = False
        clock = self.clock
        try:
            msg_type, payload = decode_control(frames)
            if (msg_type is MessageType.pong and payload is None) or \
                    msg_type is MessageType.error:
                reason = 'it answers a timed ping with {0}'.format(
                    'a plain pong' if msg_type is MessageType.pong else 'an error: {0}'.format(
                        payload.get('reason') if isinstance(payload, dict) else None))
                clock.unsupported(reason)
                self._burst_left = 0
                log.info('Server at %s does not report its clock (%s): its capture stamps '
                         "cannot be moved onto this host's clock",
                         self.endpoints[EndpointType.control], reason)
                return
            if msg_type is not MessageType.pong:
                raise ProtocolError('{0} in reply to a ping'.format(msg_type.name))
            times = decode_pong_times(payload)
            if times.client_ns != request.sent_ns:
                raise ProtocolError('a pong to {0} ping (client_ns {1}, not {2})'.format(
                    'an earlier' if self._is_stale_pong(payload) else 'another',
                    times.client_ns, request.sent_ns))
            # This host's wall clock against its monotonic one: a step during the
            # exchange spoils it; one since the last sample spoils the window.
            base = received_ns - received_monotonic_ns
            if abs(base - (request.sent_ns - request.sent_monotonic_ns)) > LOCAL_STEP_NS:
                self._clock_base = None
                clock.reset()
                raise ProtocolError("this host's clock stepped during the exchange")
            if self._clock_base is not None and abs(base - self._clock_base) > LOCAL_STEP_NS:
                log.info("This host's clock stepped by %.3f ms: estimating the offset of "
                         '%s anew', (base - self._clock_base) * 1e-6,
                         self.endpoints[EndpointType.control])
                clock.reset()
            self._clock_base = base
            if clock.add(request.sent_ns, times.recv_ns, times.send_ns, received_ns,
                         received_monotonic_ns * 1e-9) is None:
                raise ProtocolError(clock.last_rejection or 'rejected')
        except ProtocolError as err:
            clock.reject(str(err))
            self._warn_clock(err)
        except Exception as err:  # nothing a reply holds may stop the client
            clock.reject('{0}: {1}'.format(type(err).__name__, err))
            log.exception('Error handling a pong from %s', self.endpoints[EndpointType.control])
        finally:
            if self._burst_left > 0 and clock.supported is not False and self.is_connected:
                self._burst_left -= 1
                self._timed_ping()

    def _is_stale_pong(self, payload: Any) -> bool:
        """Tell whether *payload* is that of a pong to an earlier timed ping."""
        try:
            client_ns = decode_pong_times(payload).client_ns
        except ProtocolError:
            return False
        return client_ns in self._recent_pings

    def _warn_clock(self, err: Exception) -> None:
        # The first bad pong is a warning; the rest only count (clock.rejected): a
        # server answering garbage every second must not flood the log.
        if not self._clock_warned:
            self._clock_warned = True
            log.warning('Ignoring a timed pong from %s: %s (further ones are counted, in '
                        'clock.rejected)', self.endpoints[EndpointType.control], err)
        else:
            log.debug('Ignoring a timed pong from %s: %s', self.endpoints[EndpointType.control],
                      err)

    def _ensure_connected(self) -> None:
        if not self.is_connected:
            raise RuntimeError('Client is not connected')

    def _request(self, msg_type: MessageType, payload: Any,
                 callback: Callable[[MessageType, Any], None]) -> None:
        self._queue.append(_Request(msg_type, payload, callback))
        self._pump()

    def _pump(self) -> None:
        stream = self._control_stream
        if self._in_flight is not None or not self._queue or stream is None:
            return
        request = self._queue.popleft()
        request.sent_at = self._last_sent = time.monotonic()
        self._in_flight = request
        payload = request.payload
        if request.timed:  # its send time, as late as can be
            self._next_ping = request.sent_at + random.uniform(0.5, 1.5) * \
                self.clock_period / 1000.0
            request.sent_monotonic_ns = time.monotonic_ns()
            request.sent_ns = time.time_ns()
            self._recent_pings.append(request.sent_ns)
            payload = ping_payload(request.sent_ns)
        stream.send_multipart(encode_control(request.msg_type, payload))

    def _tick(self) -> None:
        now = time.monotonic()
        request = self._in_flight
        if request is not None:
            if (now - (request.sent_at or now)) * 1000 > self.response_timeout:
                self._disconnect('no reply within {0} ms'.format(self.response_timeout))
                return
        elif not self._queue:
            if (now - self._last_who) * 1000 >= self._heartbeat_ms:
                self._who()  # heartbeat, which also refreshes the device list
            elif self._clock_due(now):
                self._timed_ping()
        self._check_stalls(now)

    def _on_control_recv(self, frames: List[bytes]) -> None:
        # The clocks first: a timed pong's arrival time is as early as can be.
        received_ns, received_monotonic_ns = time.time_ns(), time.monotonic_ns()
        request, self._in_flight = self._in_flight, None
        try:
            if request is not None and request.timed:  # never raises
                self._got_timed_reply(request, frames, received_ns, received_monotonic_ns)
            else:
                msg_type, payload = decode_control(frames)
                if request is None:
                    raise ProtocolError('unsolicited {0} reply'.format(msg_type.name))
                if msg_type is MessageType.pong and request.msg_type is not MessageType.ping \
                        and self._is_stale_pong(payload):
                    # A late second answer to a timed ping, taken by ZeroMQ for this
                    # request's reply (it drops the real one when the next request
                    # goes): ask again.
                    self.clock.reject('a pong to an earlier ping, as the reply to {0}'.format(
                        request.msg_type.name))
                    self._warn_clock(ProtocolError('it answered a timed ping twice'))
                    self._queue.appendleft(request)
                else:
                    if msg_type is MessageType.error:
                        reason = payload.get('reason') if isinstance(payload, dict) else None
                        raise ProtocolError('server replied error: {0}'.format(reason))
                    request.callback(msg_type, payload)
        except ProtocolError as err:
            # Whatever answers who with anything but a valid me is no server to stay
            # connected to (identified or not): give it up.
            give_up = request is not None and request.msg_type is MessageType.who
            log.error('Protocol error from %s: %s%s', self.endpoints[EndpointType.control],
                      err, '; disconnecting' if give_up else '')
            if give_up:
                self._disconnect()
        except Exception:
            log.exception('Error handling reply from %s', self.endpoints[EndpointType.control])
        self._pump()

    def _got_me(self, msg_type: MessageType, payload: Any) -> None:
        if msg_type is not MessageType.me:
            raise ProtocolError('expected me, got {0}'.format(msg_type.name))
        validate_me_payload(payload)
        # The control endpoint stays the one given: a server cannot redirect the client.
        self.server_name = payload['name']
        records = collections.OrderedDict((d['id'], d) for d in payload['devices'])
        if len(records) > self.max_devices:
            if not self._capped_logged:
                self._capped_logged = True
                log.warning('Server %r lists %d devices; taking the first %d (max_devices)',
                            self.server_name, len(records), self.max_devices)
            records = collections.OrderedDict(list(records.items())[:self.max_devices])
        for kinect_id in list(self.devices):
            old, new = self.devices[kinect_id], records.get(kinect_id)
            if new is None or new.get('endpoints') != old.get('endpoints'):
                self._remove_device(kinect_id)
        if not self._identified:
            self._identified = True
            log.info('Connected to %r at %s', self.server_name,
                     self.endpoints[EndpointType.control])
            if self.clock_burst > 0:  # first in line: an estimate before the first frame
                self._burst_left = self.clock_burst - 1
                self._timed_ping()
            send_isolated(self.on_connect, self)
        for kinect_id, record in records.items():
            if kinect_id not in self.devices and self.is_connected:
                self.devices[kinect_id] = record
                self.stats[kinect_id] = FrameStats()
                self._stream_stats[kinect_id] = {'depth': self.stats[kinect_id]}
                send_isolated(self.on_add_kinect, self, kinect_id=kinect_id)

    def _remove_device(self, kinect_id: str) -> None:
        for stream in STREAMS:
            self._close_subscription(kinect_id, stream)
        del self.devices[kinect_id]
        send_isolated(self.on_remove_kinect, self, kinect_id=kinect_id)
        # Gone with the device (receivers above could still read them).
        self.stats.pop(kinect_id, None)
        self._stream_stats.pop(kinect_id, None)
        for stream in STREAMS:
            self._invalid_logged.pop((kinect_id, stream), None)

    # --- streams ---------------------------------------------------------------------

    def device_info(self, kinect_id: str) -> Dict[str, Any]:
        """Return the ``me`` device record of *kinect_id* (a dict)."""
        return self.devices[kinect_id]

    def enable_depth_frames(self, kinect_id: str) -> None:
        """Enable streaming of depth frames from the device *kinect_id*.

        Raises ValueError if *kinect_id* does not correspond to a connected device, or
        if its depth endpoint is not one the client follows (see ``follow_endpoints``).
        """
        self._enable('depth', kinect_id)

    def enable_ir_frames(self, kinect_id: str) -> None:
        """Enable streaming of IR frames from the device *kinect_id* (``on_ir_frame``).

        Raises ValueError as :py:meth:`enable_depth_frames` does, and if the device's
        ``me`` record offers no IR stream.
        """
        self._enable('ir', kinect_id)

    def enable_color_frames(self, kinect_id: str) -> None:
        """Enable streaming of colour frames from the device *kinect_id* (``on_color_frame``).

        Raises ValueError as :py:meth:`enable_depth_frames` does, and if the device's
        ``me`` record offers no colour stream.
        """
        self._enable('color', kinect_id)

    def disable_depth_frames(self, kinect_id: str) -> None:
        """Stop streaming depth frames from the device *kinect_id*."""
        self._disable('depth', kinect_id)

    def disable_ir_frames(self, kinect_id: str) -> None:
        """Stop streaming IR frames from the device *kinect_id*."""
        self._disable('ir', kinect_id)

    def disable_color_frames(self, kinect_id: str) -> None:
        """Stop streaming colour frames from the device *kinect_id*."""
        self._disable('color', kinect_id)

    def stream_stats(self, kinect_id: str, stream: str) -> Optional[FrameStats]:
        """Return the :py:class:`FrameStats` of *stream* of the device *kinect_id*.

        *stream* is ``'depth'`` (the same object as ``stats[kinect_id]``), ``'ir'`` or
        ``'color'``. None if there is no such device, or the stream was never enabled
        (depth's exist from the device's arrival). They are dropped with the device.
        """
        if stream not in _STREAM_TABLE:
            raise ValueError('unknown stream {0!r} (one of {1})'.format(stream, STREAMS))
        return self._stream_stats.get(kinect_id, {}).get(stream)

    def is_enabled(self, kinect_id: str, stream: str) -> bool:
        """Tell whether *stream* of the device *kinect_id* is enabled."""
        return kinect_id in self._subscriptions.get(stream, {})

    @property
    def _depth_streams(self) -> Dict[str, _Subscription]:
        # The depth subscriptions by device id (tests and bench/fuzz.py look at them).
        return self._subscriptions['depth']

    def _enable(self, stream: str, kinect_id: str) -> None:
        record = self.devices.get(kinect_id)
        if record is None:
            raise ValueError('no device with id {0!r} on this server'.format(kinect_id))
        named = record['endpoints'].get(stream)
        if not named or not isinstance(named, str):
            raise ValueError('device {0!r} has no {1} endpoint'.format(kinect_id, stream))
        if kinect_id in self._subscriptions[stream]:
            return
        try:
            endpoint = stream_endpoint_for(self.endpoints[EndpointType.control], named,
                                           self.follow_endpoints, stream)
        except ValueError as err:
            raise ValueError('device {0!r}: {1}'.format(kinect_id, err)) from None
        if endpoint != named:
            log.info('Device %s: %s endpoint %s named, subscribing at %s', kinect_id,
                     _STREAM_TABLE[stream].label, named, endpoint)
        self._open_subscription(kinect_id, stream, endpoint)
        stats = self._stream_stats[kinect_id].get(stream)
        if stats is None:
            stats = self._stream_stats[kinect_id][stream] = FrameStats()
        stats.last_frame_at = time.monotonic()
        stats.stalled = False

    def _disable(self, stream: str, kinect_id: str) -> None:
        if kinect_id not in self.devices:
            raise ValueError('no device with id {0!r} on this server'.format(kinect_id))
        self._close_subscription(kinect_id, stream)
        stats = self._stream_stats[kinect_id].get(stream)
        if stats is not None:
            stats.stalled = False

    def _max_message_bytes(self, stream: str) -> int:
        if stream == 'color':
            return max_color_payload_bytes(self.max_color_pixels)
        return max_depth_payload_bytes(self.max_frame_pixels)

    def _open_subscription(self, kinect_id: str, stream: str, endpoint: str) -> None:
        sock = self._socket(zmq.SUB)
        sock.rcvhwm = DEPTH_RECV_HWM
        # No message larger than the largest frame accepted is ever allocated: ZeroMQ
        # drops the connection instead (for good: a stalled stream is resubscribed).
        sock.maxmsgsize = self._max_message_bytes(stream)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            raise ValueError('device {0!r}: cannot subscribe to {1} at {2}: {3}'.format(
                kinect_id, stream, endpoint, err)) from None
        sock.setsockopt(zmq.SUBSCRIBE, b'')
        zmq_stream = ZMQStream(sock, self._io_loop)
        subscription = _Subscription(zmq_stream, endpoint, time.monotonic())
        zmq_stream.on_recv(lambda frames: self._on_message(kinect_id, stream, subscription,
                                                           frames), copy=False)
        self._subscriptions[stream][kinect_id] = subscription

    def _close_subscription(self, kinect_id: str, stream: str) -> None:
        subscription = self._subscriptions[stream].pop(kinect_id, None)
        if subscription is not None:
            subscription.stream.close(linger=0)

    def _on_message(self, kinect_id: str, stream: str, subscription: _Subscription,
                    frames: List[Any]) -> None:
        # Runs from ZeroMQ's stream handler: nothing may escape (an exception there
        # would leave the socket's edge-triggered fd disarmed, the stream dead).
        spec = _STREAM_TABLE[stream]
        try:
            stats = self._stream_stats.get(kinect_id, {}).get(stream)
            if stats is None or self._subscriptions[stream].get(kinect_id) is not subscription:
                return
            subscription.last_message_at = time.monotonic()
            try:
                frame = getattr(self, spec.decoder)(frames)
            except Exception as err:  # ProtocolError, or anything a bad message raises
                stats.invalid += 1
                self._warn_invalid(kinect_id, stream, stats, err)
                return
            now = time.monotonic()
            if stats.stalled:
                stats.stalled = False
                log.info('%s frames from %s resumed after %.1f s',
                         spec.label[:1].upper() + spec.label[1:], kinect_id,
                         now - (stats.last_frame_at or now))
            raw_bytes = 3 * frame.shape[0] * frame.shape[1] if stream == 'color' else None
            stats.add_frame(frame, sum(len(f.buffer) if hasattr(f, 'buffer') else len(f)
                                       for f in frames), now, raw_bytes,
                            self.clock.to_local_ns(frame.timestamp_ns))
            send_isolated(getattr(self, spec.signal), self, kinect_id=kinect_id,
                          **{spec.argument: frame})
        except Exception:
            log.exception('Error handling a %s message from %s', spec.label, kinect_id)

    def _check_stalls(self, now: float) -> None:
        if not self._identified:
            return
        request = self._in_flight
        if request is not None and now - (request.sent_at or now) > \
                self.response_timeout / 2000.0:
            return  # the server itself is slow to answer: no verdict on its streams
        limit = self.stall_timeout / 1000.0
        for stream, subscriptions in self._subscriptions.items():
            label = _STREAM_TABLE[stream].label
            for kinect_id, subscription in list(subscriptions.items()):
                stats = self._stream_stats.get(kinect_id, {}).get(stream)
                if stats is None or stats.last_frame_at is None:
                    continue
                if not stats.stalled and now - stats.last_frame_at > limit:
                    stats.stalled = True
                    log.warning('No %s frames from %s for %.1f s while its server answers '
                                '(%d received, %d invalid so far)', label, kinect_id,
                                now - stats.last_frame_at, stats.received, stats.invalid)
                if now - max(subscription.subscribed_at, subscription.last_message_at) > \
                        limit:
                    # Not even an invalid message: ZeroMQ may have given the connection
                    # up for good (it does on a protocol error, an oversized message
                    # say), and a new socket is the only way back.
                    log.debug('Subscribing to %s of %s again at %s', label, kinect_id,
                              subscription.endpoint)
                    self._close_subscription(kinect_id, stream)
                    try:
                        self._open_subscription(kinect_id, stream, subscription.endpoint)
                    except ValueError as err:
                        log.error('%s', err)

    def _warn_invalid(self, kinect_id: str, stream: str, stats: FrameStats,
                      err: Exception) -> None:
        # One warning per INVALID_LOG_PERIOD per device and stream: a flood of bad
        # messages must not become a flood of log lines.
        now = time.monotonic()
        key = (kinect_id, stream)
        last_at, last_count = self._invalid_logged.get(key, (None, 0))
        if last_at is not None and now - last_at < INVALID_LOG_PERIOD:
            return
        self._invalid_logged[key] = (now, stats.invalid)
        log.warning('Dropped %d invalid %s message(s) from %s%s; last: %s',
                    stats.invalid - last_count, _STREAM_TABLE[stream].label, kinect_id,
                    '' if last_at is None else ' in {0:.0f} s'.format(now - last_at), err)

    # --- decoding --------------------------------------------------------------------

    @staticmethod
    def _check_stream(header: FrameHeader, stream: str) -> None:
        carried = header_stream(header)
        if carried != stream:
            raise ProtocolError('a {0} frame on the {1} endpoint'.format(carried, stream))

    def _decode_uint16(self, frames: MessageParts, stream: str) -> Any:
        header, payload = decode_frame_message(frames, self.max_frame_pixels)
        self._check_stream(header, stream)
        pixels = _codec.decode(payload, header.width, header.height, header.codec)
        frame_class = _STREAM_TABLE[stream].frame_class
        return frame_class(pixels, sequence=header.sequence, timestamp_ns=header.timestamp_ns,
                           device_timestamp=header.device_timestamp)

    def decode_depth_message(self, frames: MessageParts) -> DepthFrame:
        """Decode and validate one depth message (list of frames) into a DepthFrame.

        Raises :py:class:`ProtocolError` if the message is malformed in any way, or its
        header says it carries another stream.
        """
        frame: DepthFrame = self._decode_uint16(frames, 'depth')
        return frame

    def decode_ir_message(self, frames: MessageParts) -> IrFrame:
        """Decode and validate one IR message (list of frames) into an IrFrame.

        Raises :py:class:`ProtocolError` as :py:meth:`decode_depth_message` does.
        """
        frame: IrFrame = self._decode_uint16(frames, 'ir')
        return frame

    def decode_color_message(self, frames: MessageParts) -> ColorFrame:
        """Validate one colour message (list of frames) into a ColorFrame of its JPEG.

        Nothing is decoded: the header must say colour and JPEG, of at most
        ``max_color_pixels``; the payload must be a complete JPEG (an end-of-image marker
        at its end) whose own header gives the frame header's size, baseline, 8-bit and of
        one scan (:py:func:`~streamkinect2.codec.check_jpeg`: decoded in one pass). Raises
        :py:class:`ProtocolError` otherwise.
        """
        header, payload = decode_frame_message(frames, self.max_color_pixels)
        self._check_stream(header, 'color')
        if header.codec != _codec.CODEC_JPEG:
            raise ProtocolError('colour payload of codec {0}, not JPEG ({1})'.format(
                header.codec, _codec.CODEC_JPEG))
        jpeg = bytes(payload)
        _codec.check_jpeg(jpeg, header.width, header.height)
        return ColorFrame(jpeg=jpeg, shape=(header.width, header.height),
                          sequence=header.sequence, timestamp_ns=header.timestamp_ns,
                          device_timestamp=header.device_timestamp,
                          paired=bool(header.flags & FLAG_PAIRED))
