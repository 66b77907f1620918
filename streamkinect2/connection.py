"""Stay connected to a server: reconnection, rediscovery, and the choice of endpoint.

A :py:class:`ServerConnection` keeps a :py:class:`~streamkinect2.client.Client` connected
to one server, given by its control endpoint (or a list of them) or discovered over
Zeroconf by name (or the first seen). It makes a new client for every attempt, gives up
on a server that does not identify itself in time, remembers failures so that endpoints
that failed are tried only after those that have not, and forwards the client's
signals with itself as the sender: a receiver connected once keeps receiving across
reconnections. The ROS client node and the ``streamkinect2-receive`` tool are built on
it.
"""
import logging
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from blinker import Signal
from tornado.ioloop import IOLoop, PeriodicCallback
import zmq

from .client import Client, DEFAULT_MAX_DEVICES, FrameStats
from .clock import ClockOffsetEstimator
from .common import send_isolated
from .security import CurveClientConfig
from .server import ServerBrowser

__all__ = ['EndpointChooser', 'ServerConnection']

log = logging.getLogger(__name__)


class EndpointChooser(object):
    """Failure memory: which of the candidate endpoints to try next.

    Endpoints that have not failed come first, in the order given; then those that
    failed, the one that failed longest ago first. A failure is remembered until the
    endpoint succeeds, is forgotten (a server announcing itself again), or is no longer
    a candidate, so a dead endpoint is never retried before one not tried yet, however
    long an attempt takes.
    """

    def __init__(self) -> None:
        """Start with no failure remembered."""
        self._failed: Dict[str, float] = {}

    def choose(self, candidates: Sequence[str]) -> Optional[str]:
        """Return the endpoint of *candidates* to try next (None if there are none)."""
        candidates = list(dict.fromkeys(candidates))
        # Forget what is no longer offered: the memory is bounded by the candidates.
        for endpoint in [e for e in self._failed if e not in candidates]:
            del self._failed[endpoint]
        if not candidates:
            return None
        untried = [e for e in candidates if e not in self._failed]
        if untried:
            return untried[0]
        return min(candidates, key=lambda e: self._failed[e])

    def failed(self, endpoint: str, now: Optional[float] = None) -> None:
        """Remember that *endpoint* failed at monotonic time *now* (default: now)."""
        self._failed[endpoint] = time.monotonic() if now is None else now

    def succeeded(self, endpoint: str) -> None:
        """Forget the failures of *endpoint*: it works."""
        self._failed.pop(endpoint, None)

    forget = succeeded

    def last_failure(self, endpoint: str) -> Optional[float]:
        """Return when *endpoint* last failed (monotonic), or None."""
        return self._failed.get(endpoint)


class ServerConnection(object):
    """Keep a client connected to a server, reconnecting and rediscovering by itself.

    The server is *endpoint*: a control endpoint (``tcp://host:port``), or a list of
    them tried in turn; or, when *endpoint* is None, discovered over Zeroconf: the one
    named *server_name*, or the first seen if that is None, on the interface
    *discovery_address* (None: every interface). A *browser* of the caller's
    (:py:class:`~streamkinect2.server.ServerBrowser`) may be given instead; it is not
    closed here.

    *io_loop* (default ``IOLoop.current()``), *zmq_ctx* and *curve* are handed to each
    :py:class:`~streamkinect2.client.Client`. Times are in seconds: the server counts as
    gone after *response_timeout* without a reply; a server that has not identified
    itself *identify_timeout* after an attempt started (default: twice the response
    timeout) is given up; attempts at an endpoint that failed are *retry_period* apart;
    heartbeats go out every *heartbeat_period* (default: a quarter of the response
    timeout); an enabled stream with no frame for *stall_timeout* is reported.
    *follow_endpoints* and *max_devices* are the clients' (see
    :py:class:`~streamkinect2.client.Client`).

    The signals are the client's (:py:attr:`SIGNALS`), forwarded with the connection as
    the sender, from whichever client is current. Call :py:meth:`start`, then
    :py:meth:`stop` (which disconnects without emitting anything), on the IOLoop's
    thread; a ``with`` block does both.
    """

    #: The client signals forwarded, under the same names. A new stream is one more
    #: name here, its Signal below and its ``enable_*`` delegate.
    SIGNALS = ('on_connect', 'on_disconnect', 'on_add_kinect', 'on_remove_kinect',
               'on_depth_frame', 'on_ir_frame', 'on_color_frame')

    #: Emitted when a server has identified itself.
    on_connect = Signal()
    #: Emitted when the server connected to goes away (not on :py:meth:`stop`).
    on_disconnect = Signal()
    #: Emitted with keyword argument ``kinect_id`` when a device becomes available.
    on_add_kinect = Signal()
    #: Emitted with keyword argument ``kinect_id`` when a device is removed.
    on_remove_kinect = Signal()
    #: Emitted with keyword arguments ``depth_frame`` and ``kinect_id`` for each frame.
    on_depth_frame = Signal()
    #: Emitted with keyword arguments ``ir_frame`` and ``kinect_id`` for each IR frame.
    on_ir_frame = Signal()
    #: Emitted with keyword arguments ``color_frame`` (JPEG, decoded when its ``array``
    #: is read) and ``kinect_id`` for each colour frame.
    on_color_frame = Signal()

    #: Number of attempts made so far (clients created and connected).
    attempts: int

    def __init__(self, endpoint: Union[None, str, Sequence[str]] = None,
                 server_name: Optional[str] = None, discovery_address: Optional[str] = None,
                 browser: Optional[ServerBrowser] = None, io_loop: Optional[IOLoop] = None,
                 zmq_ctx: Optional[zmq.Context] = None,
                 curve: Optional[CurveClientConfig] = None, response_timeout: float = 2.0,
                 retry_period: float = 1.0, identify_timeout: Optional[float] = None,
                 heartbeat_period: Optional[float] = None, stall_timeout: float = 2.0,
                 follow_endpoints: bool = False,
                 max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        """Set the connection up; :py:meth:`start` starts it."""
        if response_timeout <= 0 or retry_period <= 0:
            raise ValueError('response_timeout and retry_period must be positive')
        if isinstance(endpoint, str):
            endpoint = [endpoint]
        self._endpoints = list(endpoint) if endpoint is not None else None
        if self._endpoints == []:
            raise ValueError('endpoint must name at least one endpoint')
        self.server_name_wanted = server_name
        self.discovery_address = discovery_address
        self._browser = browser
        self._own_browser = False
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self._zmq_ctx = zmq_ctx
        self._curve = curve
        self.response_timeout = float(response_timeout)
        self.retry_period = float(retry_period)
        self.identify_timeout = float(identify_timeout if identify_timeout is not None
                                      else 2 * response_timeout)
        self.heartbeat_period = float(heartbeat_period if heartbeat_period is not None
                                      else max(0.05, response_timeout / 4))
        self.stall_timeout = float(stall_timeout)
        self.follow_endpoints = follow_endpoints
        self.max_devices = max_devices
        self.attempts = 0
        self._chooser = EndpointChooser()
        self._client: Optional[Client] = None
        self._endpoint: Optional[str] = None
        self._relays: Dict[str, Any] = {}
        self._give_up_timer: Any = None
        self._maintainer: Optional[PeriodicCallback] = None
        self._waiting_logged = False
        self._running = False

    # --- state -----------------------------------------------------------------------

    @property
    def client(self) -> Optional[Client]:
        """Return the current Client, connected or attempting to; None if neither."""
        return self._client

    @property
    def endpoint(self) -> Optional[str]:
        """Return the control endpoint of the current client, or None."""
        return self._endpoint

    @property
    def is_connected(self) -> bool:
        """Tell whether connected to a server that has identified itself."""
        client = self._client
        return client is not None and client.is_identified

    @property
    def server_name(self) -> Optional[str]:
        """Return the name of the server connected to, or None."""
        client = self._client
        return client.server_name if client is not None and client.is_identified else None

    @property
    def kinect_ids(self) -> List[str]:
        """Return the ids of the devices of the server connected to."""
        client = self._client
        return client.kinect_ids if client is not None else []

    @property
    def devices(self) -> Dict[str, Dict[str, Any]]:
        """Return the ``me`` records of the devices of the server connected to."""
        client = self._client
        return client.devices if client is not None else {}

    @property
    def stats(self) -> Dict[str, FrameStats]:
        """Return the current client's :py:class:`~streamkinect2.client.FrameStats` by id."""
        client = self._client
        return client.stats if client is not None else {}

    @property
    def clock(self) -> Optional[ClockOffsetEstimator]:
        """Return the current client's estimate of the server's clock offset, or None.

        See :py:class:`~streamkinect2.clock.ClockOffsetEstimator`; a new one with every
        client (every connection).
        """
        client = self._client
        return client.clock if client is not None else None

    def to_local_ns(self, timestamp_ns: int) -> Optional[int]:
        """Return a frame stamp on this host's clock, or None without an estimate.

        See :py:meth:`~streamkinect2.client.Client.to_local_ns`.
        """
        client = self._client
        return client.to_local_ns(timestamp_ns) if client is not None else None

    def candidates(self) -> List[str]:
        """Return the control endpoints that may be tried now, in order."""
        if self._endpoints is not None:
            return list(self._endpoints)
        if self._browser is None:
            return []
        name = self.server_name_wanted
        return [info.endpoint for info in self._browser.servers
                if not name or info.name == name]

    def stream_stats(self, kinect_id: str, stream: str) -> Optional[FrameStats]:
        """Return the current client's FrameStats of *stream* of *kinect_id*, or None.

        See :py:meth:`~streamkinect2.client.Client.stream_stats`.
        """
        client = self._client
        return client.stream_stats(kinect_id, stream) if client is not None else None

    # --- streams ---------------------------------------------------------------------
    # As with depth, what is enabled lasts as long as the client: a receiver of
    # on_add_kinect enables the streams it wants again after a reconnection.

    def enable_depth_frames(self, kinect_id: str) -> None:
        """Enable depth frames of *kinect_id* on the current client (ValueError if none)."""
        self._current('enable depth frames').enable_depth_frames(kinect_id)

    def disable_depth_frames(self, kinect_id: str) -> None:
        """Disable depth frames of *kinect_id* on the current client."""
        self._current('disable depth frames').disable_depth_frames(kinect_id)

    def enable_ir_frames(self, kinect_id: str) -> None:
        """Enable IR frames of *kinect_id* on the current client (ValueError if none)."""
        self._current('enable IR frames').enable_ir_frames(kinect_id)

    def disable_ir_frames(self, kinect_id: str) -> None:
        """Disable IR frames of *kinect_id* on the current client."""
        self._current('disable IR frames').disable_ir_frames(kinect_id)

    def enable_color_frames(self, kinect_id: str) -> None:
        """Enable colour frames of *kinect_id* on the current client (ValueError if none)."""
        self._current('enable colour frames').enable_color_frames(kinect_id)

    def disable_color_frames(self, kinect_id: str) -> None:
        """Disable colour frames of *kinect_id* on the current client."""
        self._current('disable colour frames').disable_color_frames(kinect_id)

    def _current(self, what: str) -> Client:
        client = self._client
        if client is None or not client.is_connected:
            raise ValueError('cannot {0}: not connected'.format(what))
        return client

    # --- lifetime --------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (and, without a fixed endpoint, discovering)."""
        if self._running:
            log.warning('ServerConnection already started')
            return
        self._running = True
        if self._endpoints is None:
            if self._browser is None:
                self._browser = ServerBrowser(io_loop=self._io_loop,
                                              address=self.discovery_address)
                self._own_browser = True
            ServerBrowser.on_add_server.connect(self._on_add_server, sender=self._browser)
            ServerBrowser.on_remove_server.connect(self._on_remove_server,
                                                   sender=self._browser)
        self._maintainer = PeriodicCallback(self._maintain, self.retry_period * 1000.0)
        self._maintainer.start()
        self._maintain()

    def stop(self) -> None:
        """Disconnect (emitting nothing) and stop discovering; safe to call twice."""
        if not self._running:
            return
        self._running = False
        if self._maintainer is not None:
            self._maintainer.stop()
            self._maintainer = None
        self._drop_client()
        if self._browser is not None and self._endpoints is None:
            ServerBrowser.on_add_server.disconnect(self._on_add_server, sender=self._browser)
            ServerBrowser.on_remove_server.disconnect(self._on_remove_server,
                                                      sender=self._browser)
            if self._own_browser:
                self._browser.close()
                self._browser = None
                self._own_browser = False

    def __enter__(self) -> 'ServerConnection':
        """Start and return the connection."""
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        """Stop the connection."""
        self.stop()

    # --- attempts --------------------------------------------------------------------

    def _maintain(self) -> None:
        """Start an attempt when there is neither a connection nor one under way."""
        if not self._running:
            return
        client = self._client
        if client is not None:
            if client.is_connected:
                return  # connected, or identifying (the give-up timer watches that)
            # It disconnected by itself (no reply, an invalid one, or the server left).
            self._note_failure()
            self._drop_client()
        endpoint = self._chooser.choose(self.candidates())
        if endpoint is None:
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info('Waiting for %s to be announced', repr(self.server_name_wanted)
                         if self.server_name_wanted else 'a server')
            return
        self._waiting_logged = False
        last = self._chooser.last_failure(endpoint)
        if last is not None and time.monotonic() - last < self.retry_period:
            return  # everything left failed just now: the next tick tries again
        self._attempt(endpoint)

    def _attempt(self, endpoint: str) -> None:
        client = Client(endpoint, zmq_ctx=self._zmq_ctx, io_loop=self._io_loop,
                        curve=self._curve)
        client.heartbeat_period = max(10, int(self.heartbeat_period * 1000))
        client.response_timeout = max(10, int(self.response_timeout * 1000))
        client.stall_timeout = max(10, int(self.stall_timeout * 1000))
        client.follow_endpoints = self.follow_endpoints
        client.max_devices = self.max_devices
        for name in self.SIGNALS:
            relay = _Relay(self, name)
            getattr(Client, name).connect(relay, sender=client, weak=False)
            self._relays[name] = relay
        self._client, self._endpoint = client, endpoint
        self.attempts += 1
        log.debug('Trying the server at %s', endpoint)
        self._give_up_timer = self._io_loop.call_later(self.identify_timeout,
                                                       self._give_up, client)
        try:
            client.connect()
        except zmq.ZMQError as err:  # an endpoint ZeroMQ cannot connect to at all
            log.error('Cannot connect to %s: %s', endpoint, err)
            self._note_failure()
            self._drop_client()

    def _give_up(self, client: Client) -> None:
        self._give_up_timer = None
        if client is not self._client or client.is_identified:
            return
        log.warning('The server at %s did not identify itself within %.1f s; trying '
                    'elsewhere', self._endpoint, self.identify_timeout)
        self._note_failure()
        self._drop_client()
        self._maintain()

    def _note_failure(self) -> None:
        if self._endpoint is not None:
            self._chooser.failed(self._endpoint)

    def _drop_client(self) -> None:
        client, self._client, self._endpoint = self._client, None, None
        if self._give_up_timer is not None:
            self._io_loop.remove_timeout(self._give_up_timer)
            self._give_up_timer = None
        if client is None:
            return
        for name, relay in self._relays.items():
            getattr(Client, name).disconnect(relay, sender=client)
        self._relays = {}
        if client.is_connected:
            client.disconnect()

    def _relay(self, name: str, client: Client, kwargs: Dict[str, Any]) -> None:
        if client is not self._client:
            return
        if name == 'on_connect':
            if self._give_up_timer is not None:
                self._io_loop.remove_timeout(self._give_up_timer)
                self._give_up_timer = None
            if self._endpoint is not None:
                self._chooser.succeeded(self._endpoint)
        elif name == 'on_disconnect':
            self._note_failure()
            self._io_loop.add_callback(self._maintain)
        send_isolated(getattr(ServerConnection, name), self, **kwargs)

    # --- discovery -------------------------------------------------------------------

    def _on_add_server(self, browser: ServerBrowser, server_info: Any) -> None:
        name = self.server_name_wanted
        if name and server_info.name != name:
            return
        self._chooser.forget(server_info.endpoint)  # announced again: worth a try
        if self._client is None or not self._client.is_connected:
            self._io_loop.add_callback(self._maintain)

    def _on_remove_server(self, browser: ServerBrowser, server_info: Any) -> None:
        if server_info.endpoint == self._endpoint:
            log.info('Server %r is no longer announced', server_info.name)


class _Relay(object):
    """A receiver of one client signal that hands it to its connection."""

    __slots__ = ('connection', 'name')

    def __init__(self, connection: ServerConnection, name: str) -> None:
        self.connection = connection
        self.name = name

    def __call__(self, client: Client, **kwargs: Any) -> None:
        self.connection._relay(self.name, client, kwargs)
