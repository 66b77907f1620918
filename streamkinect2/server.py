"""Server: stream Kinect2 depth, IR and colour to clients (``ServerBrowser``: discovery)."""
import collections
import ipaddress
import logging
import math
import numbers
import os
import socket
import struct
import sys
import threading
import time
from types import TracebackType
from typing import (Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Type,
                    TypedDict, Union)
import unicodedata
import uuid

from tornado.ioloop import IOLoop
from zeroconf import get_all_addresses, InterfaceChoice, IPVersion, ServiceInfo, Zeroconf
import zmq
from zmq.eventloop.zmqstream import ZMQStream
from zmq.utils.monitor import parse_monitor_message

from .codec import CODEC_NAMES
from .common import EndpointType, PROTOCOL_VERSION, ProtocolError, ZC_SERVICE_TYPE
from .compress import check_color_options, DepthFrameCompressor, FrameCompressor
from .device import STREAMS, streams_of
from .discovery import ServerBrowser, ServerInfo
from .protocol import (CONTROL_MAX_MESSAGE_SIZE, decode_control, encode_control,
                       FrameMessage, is_int64, MessageParts, MessageType, pong_payload,
                       shift_frame_timestamp)
from .security import _Authenticator, CurveServerConfig, new_socket

__all__ = ['Server', 'ServerBrowser', 'ServerInfo', 'default_address']

log = logging.getLogger(__name__)

#: Depth messages queued per subscriber before newer ones are dropped.
DEPTH_SEND_HWM: int = 4
#: Messages a depth subscriber may have queued towards the server (subscriptions) before
#: ZeroMQ stops reading from it.
DEPTH_RECV_HWM: int = 16
#: Largest message a depth subscriber may send: a subscription is one byte, CURVE's
#: handshake commands a few hundred. Above it ZeroMQ drops the peer.
DEPTH_MAX_PEER_MESSAGE: int = 1024
#: Bytes a depth subscriber may have sent in all (handshake included) when it sends
#: anything but the subscribe-all; more and its connection is cut (a client sends well
#: under 1 KiB: greeting, handshake and one subscription).
DEPTH_MAX_PEER_BYTES: int = 4096
#: Where the kernel does not tell how much a peer sent: messages other than the
#: subscribe-all tolerated from one address before its connections are cut.
DEPTH_MAX_HOSTILE_MESSAGES: int = 64
#: Longest server name, in bytes of UTF-8: one DNS label (63) less Zeroconf's " (2)".
MAX_NAME_BYTES: int = 60
#: A device silent for longer than this (or three frame periods, if longer) has stopped.
STALL_SECONDS: float = 2.0
#: Health levels of :py:meth:`Server.device_health`.
HEALTH_OK, HEALTH_WARN, HEALTH_ERROR = 'OK', 'WARN', 'ERROR'
_LEVEL_RANK = {HEALTH_OK: 0, HEALTH_WARN: 1, HEALTH_ERROR: 2}
#: The bind address meaning every interface.
ANY_ADDRESS: str = '0.0.0.0'


class StreamStats(TypedDict):
    """One stream's counters, in :py:meth:`Server.device_stats`."""

    frames_in: int
    frames_out: int
    frames_dropped: int
    frames_failed: int
    subscribers_cut: int
    seconds_since_frame: float
    #: colour only (0 for depth and IR): frames sent with a depth capture's stamps
    frames_paired: int
    #: colour only: frames sent with their own stamps, no depth capture near enough
    frames_unpaired: int


class DeviceStats(TypedDict):
    """A device's counters, as :py:meth:`Server.device_stats` returns them.

    The top-level counters are the depth stream's (as before there were other streams);
    ``streams`` has every stream's, depth included, by stream name.
    """

    frames_in: int
    frames_out: int
    frames_dropped: int
    frames_failed: int
    subscribers_cut: int
    seconds_since_frame: float
    streams: Dict[str, StreamStats]


def default_address() -> str:
    """Return the IPv4 address of the interface holding the default route.

    Falls back to 127.0.0.1 when there is none. No packet is sent: connecting a UDP
    socket only asks the kernel for a route.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(('192.0.2.1', 9))  # TEST-NET-1: never contacted
            address: str = probe.getsockname()[0]
            return address
        except OSError:
            return '127.0.0.1'


def _check_ipv4(address: object) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise ValueError('address must be a decimal-dotted IPv4 address, got {0!r}'.format(
            address)) from None


def _zeroconf_for(address: Optional[str]) -> Zeroconf:
    """Return a new Zeroconf bound to *address* (None or 0.0.0.0: every interface).

    It is created on a short-lived thread with no asyncio loop, so that zeroconf runs
    its own loop thread rather than borrowing the IOLoop's: its blocking calls then
    never wait on the thread that makes them.
    """
    interfaces: Union[InterfaceChoice, List[str]]
    if address is None or address == ANY_ADDRESS:
        interfaces = InterfaceChoice.All
    else:
        interfaces = [address]
    made: List[Union[Zeroconf, Exception]] = []

    def make() -> None:
        try:
            made.append(Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only))
        except Exception as err:
            made.append(err)
    _run_off_loop(make)
    if not made or isinstance(made[0], Exception):
        raise RuntimeError('could not start Zeroconf on {0}: {1}'.format(
            address or 'all interfaces', made[0] if made else 'timed out'))
    return made[0]


def _run_off_loop(func: Callable[[], None], timeout: float = 10.0) -> None:
    """Run *func* on a short-lived thread and wait for it.

    zeroconf refuses blocking calls from a thread running an asyncio loop, which the
    IOLoop thread is; its own loop runs on another thread, so waiting here is safe.
    """
    thread = threading.Thread(target=func, daemon=True, name='streamkinect2-zeroconf')
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning('Zeroconf shutdown did not finish within %.0f s', timeout)


class _StreamSocket(object):
    """A device's socket of one stream: an XPUB serving the subscribe-all, cutting floods.

    The protocol knows one subscription, the empty prefix (everything). libzmq keeps
    every prefix a peer subscribes to, without limit, in a trie that costs some fifty
    times the bytes sent, and offers no way to drop one peer. So this socket watches what
    peers send: anything but subscribing to (or unsubscribing from) everything makes it
    look at the TCP connections to its port and shut down those whose peer has sent more
    than :py:data:`DEPTH_MAX_PEER_BYTES` in all (a client sends well under 1 KiB).
    Connections are learnt from the socket's monitor; the check and the shutdown act on
    a duplicate of the connection's descriptor, verified by its addresses, so a
    descriptor number reused meanwhile is never touched. One oversized message is
    refused by ZeroMQ itself (``ZMQ_MAXMSGSIZE``), which drops the peer.

    ``peers_cut``: connections cut off; ``hostile_messages``: messages received other
    than subscriptions to everything and unsubscriptions.
    """

    def __init__(self, sock: zmq.Socket[Any], io_loop: IOLoop, name: str,
                 stream: str = 'depth') -> None:
        """Serve *sock*, a new XPUB socket, on *io_loop*; *name* names it in the log."""
        self.socket = sock
        self.stream = stream
        self.port: Optional[int] = None
        self.peers_cut = 0
        self.hostile_messages = 0
        #: Called with True when the first peer subscribes to everything, False when the
        #: last one leaves (set by the server, to compress a stream only while wanted).
        self.on_wanted: Optional[Callable[[bool], None]] = None
        self._name = name
        self._io_loop = io_loop
        # libzmq's descriptor -> (peer address, peer port)
        self._peers: Dict[int, Tuple[str, int]] = {}
        self._suspects: Set[Optional[str]] = set()  # peer addresses (None: unknown)
        self._hostile_since_cut = 0
        self._monitor: Optional[zmq.Socket[Any]] = None
        self._monitor_stream: Optional[ZMQStream] = None
        self._stream: Optional[ZMQStream] = None
        self._drain_scheduled = False
        self._next_warning = 0.0
        sock.sndhwm = DEPTH_SEND_HWM
        sock.rcvhwm = DEPTH_RECV_HWM
        sock.maxmsgsize = DEPTH_MAX_PEER_MESSAGE

    def bind(self, address: str) -> int:
        """Bind to a random port of *address*; return the port."""
        self._monitor = self.socket.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._monitor_stream = ZMQStream(self._monitor, self._io_loop)
        self._monitor_stream.on_recv(self._on_monitor)
        self.port = port = self.socket.bind_to_random_port('tcp://' + address)
        self._stream = ZMQStream(self.socket, self._io_loop)
        self._stream.on_recv(self._on_recv, copy=False)
        return port

    def send(self, parts: MessageParts) -> None:
        """Send one frame message to every subscriber (a full subscriber loses it)."""
        try:
            self.socket.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        # Sending makes libzmq read what peers sent: look at it before it piles up.
        self._drain()

    def close(self) -> None:
        """Close the socket and its monitor."""
        if self._monitor is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            if self._monitor_stream is not None:
                self._monitor_stream.close(linger=0)
            else:  # bind() failed to serve it
                self._monitor.close(linger=0)
            self._monitor = self._monitor_stream = None
        if self._stream is not None:
            self._stream.close(linger=0)
            self._stream = None
        else:
            self.socket.close(linger=0)
        self._peers.clear()

    # Subscriptions and anything else peers send.

    def _on_recv(self, frames: List[zmq.Frame]) -> None:
        self._inspect(frames)
        self._drain()

    def _drain(self, limit: int = 256) -> None:
        if self._stream is None:
            return
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:  # zmq.Again: nothing more
                break
            self._inspect(frames)
        else:
            if not self._drain_scheduled:  # more waiting: let the loop breathe first
                self._drain_scheduled = True
                self._io_loop.add_callback(self._scheduled_drain)
        if self._suspects:
            self._cut_flooders()

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self._drain()

    def _inspect(self, frames: Sequence[zmq.Frame]) -> None:
        if len(frames) == 1 and (frames[0].bytes == b'\x01' or frames[0].bytes[:1] == b'\x00'):
            # Subscribing to everything is the protocol; unsubscribing only frees memory
            # (libzmq also reports the prefixes a departed peer leaves behind). An XPUB
            # passes on the first subscription to everything and the last one to leave:
            # whether anybody wants this stream.
            if frames[0].bytes in (b'\x01', b'\x00') and self.on_wanted is not None:
                self.on_wanted(frames[0].bytes == b'\x01')
            return
        self.hostile_messages += 1
        self._hostile_since_cut += 1
        self._suspects.add(_peer_address(frames[0]))

    def _cut_flooders(self) -> None:
        suspects, self._suspects = self._suspects, set()
        self._read_monitor()
        for fd, peer in list(self._peers.items()):
            if None not in suspects and peer[0] not in suspects:
                continue
            conn = _duplicate_tcp(fd)
            if conn is None:
                self._peers.pop(fd, None)
                continue
            with conn:
                try:
                    if conn.getsockname()[1] != self.port or conn.getpeername() != peer:
                        self._peers.pop(fd, None)  # the number was reused: not ours
                        continue
                    received = _bytes_received(conn)
                    if received is None:  # no TCP_INFO here: judge by the messages
                        if self._hostile_since_cut <= DEPTH_MAX_HOSTILE_MESSAGES:
                            continue
                    elif received <= DEPTH_MAX_PEER_BYTES:
                        continue
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    self._peers.pop(fd, None)
                    continue
            self._peers.pop(fd, None)
            self.peers_cut += 1
            self._hostile_since_cut = 0
            now = time.monotonic()
            if now >= self._next_warning:  # a flood reconnects: one line per 10 s
                self._next_warning = now + 10.0
                log.warning('%s endpoint of %s: cut off subscriber %s:%d, which sent %s '
                            'bytes of subscriptions (a client sends under 1 KiB in all); '
                            '%d cut off so far', self.stream.capitalize(), self._name,
                            peer[0], peer[1],
                            'too many' if received is None else received, self.peers_cut)

    # Connections, from the socket monitor.

    def _on_monitor(self, message: List[bytes]) -> None:
        self._monitor_event(message)

    def _read_monitor(self) -> None:
        while self._monitor is not None:
            try:
                message = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            self._monitor_event(message)

    def _monitor_event(self, message: List[bytes]) -> None:
        try:
            event = parse_monitor_message(message)
            fd = int(event['value'])
        except Exception:  # not an event we know how to read
            return
        if event['event'] != zmq.EVENT_ACCEPTED:
            self._peers.pop(fd, None)
            return
        conn = _duplicate_tcp(fd)
        if conn is None:
            return
        with conn:
            try:
                if conn.getsockname()[1] == self.port:
                    self._peers[fd] = conn.getpeername()[:2]
            except OSError:
                pass


#: The name the depth socket had before there were other streams.
_DepthSocket = _StreamSocket


def _peer_address(frame: zmq.Frame) -> Optional[str]:
    """Return the address of the peer that sent *frame*, or None if it cannot be told."""
    try:
        address = frame.get('Peer-Address')
    except (zmq.ZMQError, UnicodeError):
        return None
    return address if isinstance(address, str) else None


def _duplicate_tcp(fd: int) -> Optional[socket.socket]:
    """Return a socket on a duplicate of *fd* if it is an IPv4 TCP socket, else None."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        conn = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None
    if conn.family != socket.AF_INET or conn.type != socket.SOCK_STREAM:
        conn.close()
        return None
    return conn


# Offset of tcpi_bytes_received in Linux's struct tcp_info (since Linux 4.1).
_TCPI_BYTES_RECEIVED = 128


def _bytes_received(conn: socket.socket) -> Optional[int]:
    """Return the bytes *conn*'s peer has sent it in all, or None where unknown."""
    option = getattr(socket, 'TCP_INFO', None)
    if option is None or not sys.platform.startswith('linux'):
        return None
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, option, 256)
    except OSError:
        return None
    if len(info) < _TCPI_BYTES_RECEIVED + 8:
        return None
    received: int = struct.unpack_from('=Q', info, _TCPI_BYTES_RECEIVED)[0]
    return received


def _check_name(name: object) -> str:
    """Return *name* if it can be a server name, else raise ValueError saying why.

    The rules are those a browser applies to instance names
    (:py:func:`~streamkinect2.discovery.instance_name`), with room left for the " (2)"
    Zeroconf appends on a name clash.
    """
    if not isinstance(name, str) or not name:
        raise ValueError('name must be a non-empty string, got {0!r}'.format(name))
    bad = [char for char in name if unicodedata.category(char) in ('Cc', 'Cf', 'Cs')]
    if bad:
        raise ValueError('name must not hold control or format characters, got {0!r} '
                         'in {1!r}'.format(bad[0], name))
    if len(name.encode('utf-8')) > MAX_NAME_BYTES:
        raise ValueError('name must be at most {0} bytes of UTF-8, got {1}'.format(
            MAX_NAME_BYTES, len(name.encode('utf-8'))))
    return name


def _check_streams(streams: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """Return *streams* as a tuple in STREAMS order (None: all), else raise ValueError."""
    if streams is None:
        return None
    if isinstance(streams, str):
        raise ValueError('streams must be a list of stream names, got {0!r}'.format(streams))
    listed = list(streams)
    unknown = [name for name in listed if name not in STREAMS]
    if unknown or not listed:
        raise ValueError('streams must be a non-empty list of {0}, got {1!r}'.format(
            ', '.join(STREAMS), listed))
    return tuple(name for name in STREAMS if name in listed)


def _check_port(port: object) -> int:
    """Return *port* as an int (0 for None: any free port), else raise ValueError."""
    if port is None:
        return 0
    if isinstance(port, bool) or not isinstance(port, numbers.Integral) \
            or not 0 <= int(port) <= 65535:
        raise ValueError('control_port must be an integer from 0 (any free port) to 65535, '
                         'got {0!r}'.format(port))
    return int(port)


def _interface_addresses() -> List[str]:
    """Return this host's IPv4 addresses: the default route's first, loopback last."""
    try:
        found = {a for a in get_all_addresses() if not ipaddress.IPv4Address(a).is_unspecified}
    except Exception:  # no interface list here: the default route's is all we know
        found = set()
    preferred = default_address()
    found.add(preferred)
    return sorted(found, key=lambda a: (ipaddress.IPv4Address(a).is_loopback,
                                        a != preferred, ipaddress.IPv4Address(a)))


def _local_address_toward(peer: str) -> Optional[str]:
    """Return the local address a packet to *peer* leaves from, or None.

    No packet is sent: connecting a UDP socket only asks the kernel for a route.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ipaddress.IPv4Address(peer)), 9))
            local: str = probe.getsockname()[0]
    except (OSError, ValueError):
        return None
    return None if ipaddress.IPv4Address(local).is_unspecified else local


class _Device(object):
    """A device served: per stream offered, a socket, its port and a compressor."""

    __slots__ = ('kinect', 'streams', 'sockets', 'ports', 'compressors', 'health',
                 'stream_health', 'counts')

    def __init__(self, kinect: Any, served: Optional[Tuple[str, ...]] = None) -> None:
        self.kinect = kinect
        #: the streams the device offers and the server serves, depth first
        self.streams: Tuple[str, ...] = tuple(
            stream for stream in streams_of(kinect) if served is None or stream in served)
        self.sockets: Dict[str, _StreamSocket] = {}
        self.ports: Dict[str, int] = {}
        self.compressors: Dict[str, FrameCompressor] = {}
        # (level, kind, message): kind tells a change of state from a new message
        self.health: Tuple[str, str, str] = (HEALTH_OK, 'starting', 'not started')
        self.stream_health: Dict[str, Tuple[str, str, str]] = {}
        # per stream: frames_in, frames_dropped, frames_failed, peers cut, at the last
        # health check
        self.counts: Dict[str, Tuple[int, int, int, int]] = {}

    @property
    def depth(self) -> Optional[_StreamSocket]:
        """Return the depth socket (None while closed)."""
        return self.sockets.get('depth')

    @property
    def port(self) -> Optional[int]:
        """Return the port of the depth socket (None while closed)."""
        return self.ports.get('depth')

    @property
    def compressor(self) -> Optional[FrameCompressor]:
        """Return the compressor of the depth stream, None while closed."""
        return self.compressors.get('depth')


class Server(object):
    """A server capable of streaming Kinect2 data to interested clients.

    Servers may have their lifetime managed by using them within a ``with`` statement.

    *address* is the bind address (a decimal-dotted IPv4 address). If None, the address
    of the interface with the default route is used. Zeroconf announcements go out on
    that interface only. ``0.0.0.0`` binds every interface: the server then announces
    the addresses of all of them (not loopback, unless there is nothing else), and tells
    each client, in the ``me`` reply, the address it reaches the server on.
    *control_port* fixes the control port (0 or None: a random free port; otherwise 1 to
    65535, or ValueError).

    *name* is a human-readable string describing the server (at most 60 bytes of UTF-8,
    no control or format characters, or ValueError); if None a unique default is used.
    *zmq_ctx* is the zmq context to create sockets in (default
    ``zmq.Context.instance()``). *io_loop* is the tornado IOLoop the sockets are served
    on (default ``IOLoop.current()``); call the server's methods on that loop's thread.
    If *announce* is True the server is announced over Zeroconf when it starts.
    *curve*, a :py:class:`~streamkinect2.security.CurveServerConfig`, turns on CURVE
    encryption and client authentication for every socket (default: off).

    Streams: each device is served on one endpoint per stream it offers (its
    ``streams``, see :py:func:`~streamkinect2.device.streams_of`; depth alone for a
    device without). Depth and IR go lossless with *codec*; colour as JPEG of
    *color_quality* (1 to 100; None: 90 for ``'hd'``, 75 for ``'qhd'``) at
    *color_resolution*, ``'hd'`` (as captured, 1920 x 1080) or ``'qhd'`` (halved, 960 x
    540). A device that hands out its sensor's own JPEG has it forwarded untouched.
    *streams* (a list of stream names) limits the streams served to those listed, of
    those each device offers (default: all; ValueError for an unknown name).
    Colour frames take the sequence and capture time of the nearest depth capture
    (:py:mod:`~streamkinect2.pairing`).

    Arguments are checked here; a :py:meth:`start` that fails (a port taken, a device
    that will not open, Zeroconf) raises and leaves nothing behind: no socket, thread or
    context, ``is_running`` False.

    ``address``: the address bound to. ``endpoints``: dict of zeromq endpoints keyed by
    :py:class:`~streamkinect2.common.EndpointType` (per-device stream endpoints are in
    the ``me`` reply and :py:meth:`device_endpoint`), with a reachable address.
    ``is_running``: True while running.

    Health: every ``health_period`` seconds (default 1; set it before :py:meth:`start`)
    the server looks at each device and logs a warning or an error when a stream stops
    or degrades (a device not running or silent, frames failing to compress or dropped,
    flooding subscribers cut off), stream by stream, and an info line when it streams
    again; :py:meth:`device_health` tells the current state.

    Clock: every frame's ``timestamp_ns`` and the times in a ``pong`` are this host's
    ``time.time_ns()``, so that a client can move capture stamps onto its own clock
    (``docs/protocol.md``, :py:mod:`~streamkinect2.clock`). *clock_offset_ns* is for
    tests only: it shifts both by that many ns, as a host whose clock is off would.
    """

    #: Seconds between two looks at the devices' health.
    health_period: float = 1.0

    def __init__(self, address: Optional[str] = None, start_immediately: bool = False,
                 name: Optional[str] = None, zmq_ctx: Optional[zmq.Context[Any]] = None,
                 io_loop: Optional[IOLoop] = None, announce: bool = True,
                 control_port: Optional[int] = None, codec: Optional[int] = None,
                 curve: Optional[CurveServerConfig] = None,
                 color_quality: Optional[int] = None, color_resolution: str = 'hd',
                 streams: Optional[Sequence[str]] = None, clock_offset_ns: int = 0) -> None:
        """Create a server (arguments checked); it starts serving on :py:meth:`start`."""
        if not is_int64(clock_offset_ns):
            raise ValueError('clock_offset_ns must be an integer, got {0!r}'.format(
                clock_offset_ns))
        #: Test only: ns added to every time the server sends (frames' and pongs').
        self.clock_offset_ns: int = clock_offset_ns
        self.address: str = (_check_ipv4(address) if address is not None
                             else default_address())
        self.name: str = _check_name(name if name is not None else 'Kinect2 {0} {1}'.format(
            socket.gethostname()[:40], uuid.uuid4().hex[:6]))
        self.announce = bool(announce)
        self.control_port: Optional[int] = _check_port(control_port) or None
        if codec is not None and codec not in CODEC_NAMES:
            raise ValueError('codec must be one of {0}, got {1!r}'.format(
                sorted(CODEC_NAMES), codec))
        self.codec: Optional[int] = codec
        self.color_quality, self.color_resolution = check_color_options(color_quality,
                                                                        color_resolution)
        #: The streams served of those a device offers (None: all of them).
        self.streams: Optional[Tuple[str, ...]] = _check_streams(streams)
        self.endpoints: Dict[EndpointType, str] = {}
        self.is_running = False
        self._curve = curve
        # ZeroMQ allows one authenticator per context: a secure server gets its own.
        self._own_ctx = zmq_ctx is None and curve is not None
        # None while a server with a context of its own is stopped.
        self._ctx: Optional[zmq.Context[Any]] = zmq_ctx if zmq_ctx is not None else (
            None if self._own_ctx else zmq.Context.instance())
        self._authenticator: Optional[_Authenticator] = None
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self._devices: Dict[str, _Device] = collections.OrderedDict()
        self._control_socket: Optional[zmq.Socket[Any]] = None
        self._control_stream: Optional[ZMQStream] = None
        self._public_address: Optional[str] = None
        self._zeroconf: Optional[Zeroconf] = None
        self._zc_info: Optional[ServiceInfo] = None
        self._zc_thread: Optional[threading.Thread] = None
        self._health_timer: Optional[object] = None
        if start_immediately:
            self.start()

    # --- devices ---------------------------------------------------------------------

    @property
    def kinects(self) -> List[Any]:
        """List of kinect devices managed by this server. See :py:meth:`add_kinect`."""
        return [d.kinect for d in self._devices.values()]

    def add_kinect(self, kinect: Any) -> None:
        """Add a Kinect device (an object with the interface of ``MockKinect``)."""
        kinect_id = kinect.unique_kinect_id
        if kinect_id in self._devices:
            raise ValueError('a kinect with id {0!r} is already added'.format(kinect_id))
        device = _Device(kinect, self.streams)
        if not device.streams:
            log.warning('Device %s offers none of the streams served (%s): nothing to send',
                        kinect_id, ', '.join(self.streams or ()))
        if self.is_running:
            self._open_device(device)  # raises, and leaves nothing, if it cannot open
        self._devices[kinect_id] = device

    def remove_kinect(self, kinect: Any) -> None:
        """Remove a Kinect device previously added via :py:meth:`add_kinect`."""
        device = self._devices.pop(kinect.unique_kinect_id, None)
        if device is None or device.kinect is not kinect:
            raise ValueError('kinect {0!r} was not added to this server'.format(
                kinect.unique_kinect_id))
        self._close_device(device)

    def device_endpoint(self, kinect_id: str, stream: str = 'depth') -> Optional[str]:
        """Return the endpoint of a device's *stream* (None while stopped or not offered)."""
        return self._stream_endpoint(self._devices[kinect_id], stream, self._public_address)

    def device_streams(self, kinect_id: str) -> Tuple[str, ...]:
        """Return the streams the device *kinect_id* is served with."""
        return self._devices[kinect_id].streams

    def device_stats(self, kinect_id: str) -> DeviceStats:
        """Return a device's counters.

        ``frames_in`` (from the device), ``frames_out`` (compressed and sent),
        ``frames_dropped`` (the compressor was busy), ``frames_failed`` (could not be
        compressed), ``subscribers_cut`` (flooding peers cut off),
        ``seconds_since_frame``: those of the depth stream. ``streams``: the same for
        each stream by name, with ``frames_paired`` and ``frames_unpaired`` (colour
        frames sent with a depth capture's stamps, or their own).
        """
        device = self._devices[kinect_id]
        streams = {stream: self._stream_stats(device, stream) for stream in device.streams}
        depth = streams.get('depth') or self._stream_stats(device, 'depth')
        return {'frames_in': depth['frames_in'], 'frames_out': depth['frames_out'],
                'frames_dropped': depth['frames_dropped'],
                'frames_failed': depth['frames_failed'],
                'subscribers_cut': depth['subscribers_cut'],
                'seconds_since_frame': depth['seconds_since_frame'], 'streams': streams}

    @staticmethod
    def _stream_stats(device: _Device, stream: str) -> StreamStats:
        compressor = device.compressors.get(stream)
        sock = device.sockets.get(stream)
        cut = sock.peers_cut if sock is not None else 0
        if compressor is None:
            return {'frames_in': 0, 'frames_out': 0, 'frames_dropped': 0, 'frames_failed': 0,
                    'subscribers_cut': cut, 'seconds_since_frame': 0.0, 'frames_paired': 0,
                    'frames_unpaired': 0}
        return {'frames_in': compressor.frames_in, 'frames_out': compressor.frames_out,
                'frames_dropped': compressor.frames_dropped,
                'frames_failed': compressor.frames_failed, 'subscribers_cut': cut,
                'seconds_since_frame': round(compressor.seconds_since_frame(), 3),
                'frames_paired': compressor.frames_paired,
                'frames_unpaired': compressor.frames_unpaired}

    def device_health(self, kinect_id: str, stream: Optional[str] = None) -> Tuple[str, str]:
        """Return ``(level, message)`` for a device, as of the last health check.

        *level* is ``'OK'``, ``'WARN'`` or ``'ERROR'``; *message* says what is wrong, or
        ``'streaming'``. Without *stream*, the device's: its worst stream (depth first
        among equals; another stream's message starts with its name); with it, that
        stream's.
        """
        device = self._devices[kinect_id]
        if stream is None:
            level, _kind, message = device.health
        else:
            if stream not in device.streams:
                raise ValueError('device {0!r} does not offer stream {1!r}'.format(
                    kinect_id, stream))
            level, _kind, message = device.stream_health.get(stream, device.health)
        return level, message

    def _socket(self, socket_type: int) -> zmq.Socket[Any]:
        if self._ctx is None:  # not reached: a context of its own is made in _start
            raise RuntimeError('server {0!r} has no ZeroMQ context: not started'.format(
                self.name))
        return new_socket(self._ctx, socket_type, self._curve)

    def _open_device(self, device: _Device) -> None:
        kinect_id = device.kinect.unique_kinect_id
        try:
            for stream in device.streams:
                sock = self._socket(zmq.XPUB)
                try:
                    stream_socket = _StreamSocket(sock, self._io_loop, kinect_id, stream)
                except BaseException:
                    sock.close(linger=0)
                    raise
                device.sockets[stream] = stream_socket
                device.ports[stream] = stream_socket.bind(self.address)
            for stream in device.streams:
                compressor: FrameCompressor
                if stream == 'depth':  # its own signal, as in the reference API
                    compressor = DepthFrameCompressor(device.kinect, io_loop=self._io_loop,
                                                      codec=self.codec)
                else:  # compressed only while somebody subscribes (colour costs a core)
                    compressor = FrameCompressor(
                        device.kinect, stream, io_loop=self._io_loop, codec=self.codec,
                        color_quality=self.color_quality,
                        color_resolution=self.color_resolution, active=False)
                    device.sockets[stream].on_wanted = compressor.set_active
                device.compressors[stream] = compressor
                compressor.on_compressed_frame.connect(self._send_frame, sender=compressor)
        except BaseException:
            self._close_device(device)
            raise
        device.health = (HEALTH_OK, 'starting', 'waiting for the first frame')
        device.stream_health = {stream: device.health for stream in device.streams}
        device.counts = {stream: (0, 0, 0, 0) for stream in device.streams}
        for stream in device.streams:
            log.info('Device %s streams %s on %s', kinect_id, stream,
                     self._stream_endpoint(device, stream, self._public_address))

    def _close_device(self, device: _Device) -> None:
        for compressor in device.compressors.values():
            compressor.on_compressed_frame.disconnect(self._send_frame, sender=compressor)
            compressor.close()
        device.compressors.clear()
        for stream_socket in device.sockets.values():
            stream_socket.close()
        device.sockets.clear()
        device.ports.clear()

    def _send_frame(self, compressor: FrameCompressor,
                    compressed_frame: Optional[FrameMessage] = None) -> None:
        device = self._devices.get(compressor.kinect.unique_kinect_id)
        if device is None or compressed_frame is None:
            return
        stream_socket = device.sockets.get(compressor.stream)
        if stream_socket is not None:
            parts: MessageParts = compressed_frame.parts
            if self.clock_offset_ns:  # a test's clock offset
                parts = shift_frame_timestamp(parts, self.clock_offset_ns)
            stream_socket.send(parts)

    @staticmethod
    def _stream_endpoint(device: _Device, stream: str,
                         address: Optional[str]) -> Optional[str]:
        port = device.ports.get(stream)
        if port is None:
            return None
        return 'tcp://{0}:{1}'.format(address, port)

    # --- health ----------------------------------------------------------------------

    def _check_health(self) -> None:
        self._health_timer = self._io_loop.call_later(self.health_period, self._check_health)
        for kinect_id, device in self._devices.items():
            try:
                self._update_health(kinect_id, device)
            except Exception:  # a device's odd attributes must not stop the checks
                log.exception('Health check of device %s failed', kinect_id)

    def _update_health(self, kinect_id: str, device: _Device) -> None:
        if not device.compressors:
            return
        fps = getattr(device.kinect, 'fps', None)
        stall = STALL_SECONDS
        if isinstance(fps, (int, float)) and fps > 0:
            stall = max(stall, 3.0 / fps)
        running = getattr(device.kinect, 'is_running', True)
        worst: Optional[Tuple[str, str, str]] = None
        for stream in device.streams:
            compressor = device.compressors.get(stream)
            if compressor is None:
                continue
            health = self._stream_health(device, stream, compressor, stall, running)
            device.stream_health[stream] = health
            if stream != 'depth' and health[0] != HEALTH_OK:
                health = (health[0], '{0} {1}'.format(stream, health[1]),
                          '{0}: {1}'.format(stream, health[2]))
            if worst is None or _LEVEL_RANK[health[0]] > _LEVEL_RANK[worst[0]]:
                worst = health
        if worst is None:  # not reached: there is a compressor
            return
        previous, device.health = device.health, worst
        if worst[:2] == previous[:2]:
            return
        if worst[0] == HEALTH_ERROR:
            log.error('Device %s: %s', kinect_id, worst[2])
        elif worst[0] == HEALTH_WARN:
            log.warning('Device %s: %s', kinect_id, worst[2])
        elif previous[0] != HEALTH_OK:
            log.info('Device %s: streaming again', kinect_id)

    @staticmethod
    def _stream_health(device: _Device, stream: str, compressor: FrameCompressor,
                       stall: float, running: Any) -> Tuple[str, str, str]:
        """Return the (level, kind, message) of one stream since the last check."""
        sock = device.sockets.get(stream)
        counts = (compressor.frames_in, compressor.frames_dropped, compressor.frames_failed,
                  sock.peers_cut if sock is not None else 0)
        frames, dropped, failed, cut = [now - before for now, before in zip(
            counts, device.counts.get(stream, (0, 0, 0, 0)))]
        device.counts[stream] = counts
        idle = compressor.seconds_since_frame()
        previous = device.stream_health.get(stream, device.health)
        if not running:
            return (HEALTH_ERROR, 'stopped', 'device not running: no frames')
        if not compressor.is_alive:
            return (HEALTH_ERROR, 'compressor', 'compressor stopped: no frames sent')
        if not compressor.active:
            return (HEALTH_OK, 'idle', 'no subscriber: not compressed')
        if idle > stall:
            return (HEALTH_ERROR, 'silent', 'no {0} frame for {1:.1f} s'.format(stream, idle))
        if failed:
            return (HEALTH_ERROR if failed >= frames else HEALTH_WARN, 'failing',
                    '{0} of {1} frames failed to compress: {2}'.format(
                        failed, frames, compressor.last_error))
        if dropped:
            return (HEALTH_WARN, 'dropping', 'dropped {0} of {1} frames: compressor '
                    'overloaded'.format(dropped, frames))
        if cut:
            return (HEALTH_WARN, 'flood', 'cut off {0} flooding subscriber(s)'.format(cut))
        if previous[1] == 'starting' and not compressor.frames_in:
            return previous
        return (HEALTH_OK, 'streaming', 'streaming')

    # --- lifetime --------------------------------------------------------------------

    def start(self) -> None:
        """Start the server. If it is already running, only log a warning.

        If it cannot start it raises, and leaves nothing open behind.
        """
        if self.is_running:
            log.warning('Server %r already running', self.name)
            return
        try:
            self._start()
        except BaseException:
            self._release()
            raise
        self.is_running = True

    def _start(self) -> None:
        if self._curve is not None:
            if self._own_ctx:
                self._ctx = zmq.Context()
            if self._ctx is None:  # not reached: made just above
                raise RuntimeError('server {0!r} has no ZeroMQ context'.format(self.name))
            self._authenticator = _Authenticator(self._ctx, self._curve)
        self._control_socket = sock = self._socket(zmq.REP)
        sock.maxmsgsize = CONTROL_MAX_MESSAGE_SIZE
        base = 'tcp://' + self.address
        if self.control_port:
            sock.bind('{0}:{1}'.format(base, self.control_port))
            port = self.control_port
        else:
            port = sock.bind_to_random_port(base)
        self._public_address = self.address
        if self.address == ANY_ADDRESS:
            self._public_address = _interface_addresses()[0]
        self._control_stream = ZMQStream(sock, self._io_loop)
        self._control_stream.on_recv(self._handle_control, copy=False)
        self.endpoints = {EndpointType.control: 'tcp://{0}:{1}'.format(
            self._public_address, port)}
        for device in self._devices.values():
            self._open_device(device)
        log.info('Server %r control endpoint %s%s', self.name,
                 self.endpoints[EndpointType.control],
                 ' (bound to every interface)' if self.address == ANY_ADDRESS else '')
        if self.announce:
            self._start_announcing(port)
        self._health_timer = self._io_loop.call_later(self.health_period, self._check_health)

    def stop(self) -> None:
        """Stop the server. If it is not running, only log a warning."""
        if not self.is_running:
            log.warning('Server %r not running', self.name)
            return
        self._release()
        log.info('Server %r stopped', self.name)

    def _release(self) -> None:
        """Close whatever is open (all of it, or what a failed start opened)."""
        if self._health_timer is not None:
            self._io_loop.remove_timeout(self._health_timer)
            self._health_timer = None
        self._stop_announcing()
        for device in self._devices.values():
            self._close_device(device)
        if self._control_stream is not None:
            self._control_stream.close(linger=0)
        elif self._control_socket is not None:
            self._control_socket.close(linger=0)
        self._control_stream = self._control_socket = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_ctx and self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
        self.endpoints = {}
        self._public_address = None
        self.is_running = False

    def __enter__(self) -> 'Server':
        """Start the server (if not running) and return it."""
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        """Stop the server."""
        if self.is_running:
            self.stop()

    # --- zeroconf --------------------------------------------------------------------

    def _announced_addresses(self) -> List[str]:
        if self.address != ANY_ADDRESS:
            return [self.address]
        addresses = _interface_addresses()
        public = [a for a in addresses if not ipaddress.IPv4Address(a).is_loopback]
        return public or addresses

    def _start_announcing(self, port: int) -> None:
        self._zc_info = info = ServiceInfo(
            ZC_SERVICE_TYPE, '{0}.{1}'.format(self.name, ZC_SERVICE_TYPE),
            addresses=[socket.inet_aton(a) for a in self._announced_addresses()],
            port=port, properties={'version': str(PROTOCOL_VERSION)},
            server='{0}.local.'.format(socket.gethostname().split('.')[0]))
        self._zeroconf = zeroconf = _zeroconf_for(self.address)
        # Registration probes the network for about a second: keep it off the IOLoop.
        self._zc_thread = threading.Thread(target=self._register, args=(zeroconf, info),
                                           daemon=True, name='Server-zeroconf-register')
        self._zc_thread.start()

    def _register(self, zeroconf: Zeroconf, info: ServiceInfo) -> None:
        try:
            zeroconf.register_service(info, allow_name_change=True)
            log.info('Server %r announced over Zeroconf as %r', self.name, info.name)
        except Exception as err:  # the server still serves; it is just not announced
            log.error('Could not announce server %r over Zeroconf: %s', self.name, err)

    def _stop_announcing(self) -> None:
        zeroconf, info, registering = self._zeroconf, self._zc_info, self._zc_thread
        if zeroconf is None:
            return
        _run_off_loop(lambda: self._unregister(zeroconf, info, registering))
        self._zeroconf = None
        self._zc_thread = None

    def _unregister(self, zeroconf: Zeroconf, info: Optional[ServiceInfo],
                    registering: Optional[threading.Thread]) -> None:
        if registering is not None and info is not None:
            registering.join(5.0)
            try:
                zeroconf.unregister_service(info)
            except Exception as err:
                log.warning('Could not unregister server %r from Zeroconf: %s', self.name,
                            err)
        zeroconf.close()

    @property
    def announced_name(self) -> Optional[str]:
        """Return the Zeroconf instance name registered (None when not announced)."""
        info = self._zc_info
        return info.name if self._zeroconf is not None and info is not None else None

    # --- control protocol ------------------------------------------------------------

    def _now_ns(self) -> int:
        """Return the time on this server's clock, the one that stamps frames."""
        return time.time_ns() + self.clock_offset_ns

    def _handle_control(self, frames: List[zmq.Frame]) -> None:
        received_ns = self._now_ns()  # first: a pong's receipt time is as early as can be
        peer = _peer_address(frames[0]) if frames else None
        try:
            msg_type, payload = decode_control(frames)
            reply = self._reply_to(msg_type, payload, peer, received_ns)
        except ProtocolError as err:
            log.warning('Bad control message: %s', err)
            reply = encode_control(MessageType.error, {'reason': str(err)})
        except Exception as err:  # never let one request take the server down
            log.exception('Error handling control message')
            reply = encode_control(MessageType.error, {'reason': 'internal error: {0}'.format(
                type(err).__name__)})
        stream = self._control_stream
        if stream is not None:  # else stopped meanwhile: nobody to reply to
            stream.send_multipart(reply)

    def _reply_to(self, msg_type: MessageType, payload: Any, peer: Optional[str] = None,
                  received_ns: Optional[int] = None) -> List[bytes]:
        if msg_type is MessageType.ping:
            # A timed ping gets the server's times (the reply time last, as late as can
            # be); a plain one a plain pong, as in 2014.
            if received_ns is None:
                received_ns = self._now_ns()
            return encode_control(MessageType.pong, pong_payload(payload, received_ns,
                                                                 self._now_ns()))
        if msg_type is MessageType.who:
            return encode_control(MessageType.me, self.me_payload(peer))
        raise ProtocolError('unexpected message type "{0}" from a client'.format(
            msg_type.name))

    def me_payload(self, peer_address: Optional[str] = None) -> Dict[str, Any]:
        """Return the payload of this server's ``me`` reply.

        Its endpoints carry the address a client at *peer_address* (an IPv4 address, or
        None) reaches this server on: the bound one, or for a server bound to every
        interface (``0.0.0.0``), the one on the route to the peer.
        """
        address = self._public_address
        if self.address == ANY_ADDRESS and peer_address:
            address = _local_address_toward(peer_address) or address
        devices: List[Dict[str, Any]] = []
        for kinect_id, device in self._devices.items():
            record: Dict[str, Any] = {'id': kinect_id, 'endpoints': {
                stream: self._stream_endpoint(device, stream, address)
                for stream in device.streams}}
            if getattr(device.kinect, 'streams', None):
                record['streams'] = list(device.streams)
            for key in ('depth_camera', 'color_camera', 'ir_to_color'):
                value = getattr(device.kinect, key, None)
                if value:
                    record[key] = dict(value)
            shift = getattr(device.kinect, 'depth_shift_mm', None)
            if isinstance(shift, (int, float)) and math.isfinite(shift):
                record['depth_shift_mm'] = float(shift)
            devices.append(record)
        control = self.endpoints.get(EndpointType.control)
        if control is not None:
            control = 'tcp://{0}:{1}'.format(address, control.rsplit(':', 1)[1])
        return {
            'version': PROTOCOL_VERSION,
            'name': self.name,
            'endpoints': {'control': control},
            'devices': devices,
        }
