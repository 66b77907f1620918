"""Server: stream Kinect2 depth to clients, and find servers on the network."""
import collections
import ipaddress
import logging
import socket
import threading
import uuid

from blinker import Signal
from tornado.ioloop import IOLoop
from zeroconf import (InterfaceChoice, IPVersion, ServiceBrowser, ServiceInfo,
                      ServiceStateChange, Zeroconf)
import zmq
from zmq.eventloop.zmqstream import ZMQStream

from .common import EndpointType, PROTOCOL_VERSION, ProtocolError, ZC_SERVICE_TYPE
from .compress import DepthFrameCompressor
from .protocol import decode_control, encode_control, MessageType
from .security import _Authenticator, new_socket

__all__ = ['Server', 'ServerBrowser', 'ServerInfo', 'default_address']

log = logging.getLogger(__name__)

#: Messages larger than this make ZeroMQ drop the sending peer (defence in depth; the
#: protocol answers payloads above ``protocol.MAX_CONTROL_BYTES`` with an error).
CONTROL_MAX_MESSAGE_SIZE = 1024 * 1024
#: Depth messages queued per subscriber before newer ones are dropped.
DEPTH_SEND_HWM = 4

ServerInfo = collections.namedtuple('ServerInfo', ['name', 'endpoint'])
ServerInfo.__doc__ = """Kinect2 stream server information.

A subclass of :py:class:`tuple` with named accessors, holding *name*, *endpoint*:
*name* is the server's human-readable name; *endpoint* is the control endpoint to pass
to :py:class:`streamkinect2.client.Client`.
"""


def default_address():
    """Return the IPv4 address of the interface holding the default route.

    Falls back to 127.0.0.1 when there is none. No packet is sent: connecting a UDP
    socket only asks the kernel for a route.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(('192.0.2.1', 9))  # TEST-NET-1: never contacted
            return probe.getsockname()[0]
        except OSError:
            return '127.0.0.1'


def _check_ipv4(address):
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise ValueError('address must be a decimal-dotted IPv4 address, got {0!r}'.format(
            address)) from None


def _zeroconf_for(address):
    """Return a new Zeroconf bound to *address* (None or 0.0.0.0: every interface).

    It is created on a short-lived thread with no asyncio loop, so that zeroconf runs
    its own loop thread rather than borrowing the IOLoop's: its blocking calls then
    never wait on the thread that makes them.
    """
    if address in (None, '0.0.0.0'):
        interfaces = InterfaceChoice.All
    else:
        interfaces = [address]
    made = []

    def make():
        try:
            made.append(Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only))
        except Exception as err:
            made.append(err)
    _run_off_loop(make)
    if not made or isinstance(made[0], Exception):
        raise RuntimeError('could not start Zeroconf on {0}: {1}'.format(
            address or 'all interfaces', made[0] if made else 'timed out'))
    return made[0]


def _run_off_loop(func, timeout=10.0):
    """Run *func* on a short-lived thread and wait for it.

    zeroconf refuses blocking calls from a thread running an asyncio loop, which the
    IOLoop thread is; its own loop runs on another thread, so waiting here is safe.
    """
    thread = threading.Thread(target=func, daemon=True, name='streamkinect2-zeroconf')
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning('Zeroconf shutdown did not finish within %.0f s', timeout)


class _Device(object):
    __slots__ = ('kinect', 'socket', 'endpoint', 'compressor')

    def __init__(self, kinect):
        self.kinect = kinect
        self.socket = None
        self.endpoint = None
        self.compressor = None


class Server(object):
    """A server capable of streaming Kinect2 data to interested clients.

    Servers may have their lifetime managed by using them within a ``with`` statement.

    *address* is the bind address (a decimal-dotted IPv4 address). If None, the address
    of the interface with the default route is used. Zeroconf announcements go out on
    that interface only. *control_port* fixes the control port (default: a random free
    port).

    *name* is a human-readable string describing the server; if None a unique default
    is used. *zmq_ctx* is the zmq context to create sockets in (default
    ``zmq.Context.instance()``). *io_loop* is the tornado IOLoop the sockets are served
    on (default ``IOLoop.current()``); call the server's methods on that loop's thread.
    If *announce* is True the server is announced over Zeroconf when it starts.
    *curve*, a :py:class:`~streamkinect2.security.CurveServerConfig`, turns on CURVE
    encryption and client authentication for every socket (default: off).

    ``address``: the address bound to. ``endpoints``: dict of zeromq endpoints keyed by
    :py:class:`~streamkinect2.common.EndpointType` (per-device depth endpoints are in
    the ``me`` reply). ``is_running``: True while running.
    """

    def __init__(self, address=None, start_immediately=False, name=None, zmq_ctx=None,
                 io_loop=None, announce=True, control_port=None, codec=None, curve=None):
        """Create a server; it starts serving on :py:meth:`start`."""
        self.address = _check_ipv4(address) if address is not None else default_address()
        self.name = name if name is not None else 'Kinect2 {0} {1}'.format(
            socket.gethostname(), uuid.uuid4().hex[:6])
        if not isinstance(self.name, str) or not self.name or len(self.name.encode()) > 60:
            raise ValueError('name must be a non-empty string of at most 60 bytes')
        self.announce = bool(announce)
        self.control_port = control_port
        self.codec = codec
        self.endpoints = {}
        self.is_running = False
        self._curve = curve
        # ZeroMQ allows one authenticator per context: a secure server gets its own.
        self._own_ctx = zmq_ctx is None and curve is not None
        self._ctx = zmq_ctx if zmq_ctx is not None else (
            None if self._own_ctx else zmq.Context.instance())
        self._authenticator = None
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self._devices = collections.OrderedDict()
        self._control_socket = None
        self._control_stream = None
        self._zeroconf = None
        self._zc_info = None
        self._zc_thread = None
        if start_immediately:
            self.start()

    # --- devices ---------------------------------------------------------------------

    @property
    def kinects(self):
        """List of kinect devices managed by this server. See :py:meth:`add_kinect`."""
        return [d.kinect for d in self._devices.values()]

    def add_kinect(self, kinect):
        """Add a Kinect device (an object with the interface of ``MockKinect``)."""
        kinect_id = kinect.unique_kinect_id
        if kinect_id in self._devices:
            raise ValueError('a kinect with id {0!r} is already added'.format(kinect_id))
        device = _Device(kinect)
        self._devices[kinect_id] = device
        if self.is_running:
            self._open_device(device)

    def remove_kinect(self, kinect):
        """Remove a Kinect device previously added via :py:meth:`add_kinect`."""
        device = self._devices.pop(kinect.unique_kinect_id, None)
        if device is None or device.kinect is not kinect:
            raise ValueError('kinect {0!r} was not added to this server'.format(
                kinect.unique_kinect_id))
        self._close_device(device)

    def device_endpoint(self, kinect_id):
        """Return the depth endpoint of the device *kinect_id* (None while stopped)."""
        return self._devices[kinect_id].endpoint

    def device_stats(self, kinect_id):
        """Return ``dict(frames_in, frames_out, frames_dropped)`` for a device."""
        compressor = self._devices[kinect_id].compressor
        if compressor is None:
            return {'frames_in': 0, 'frames_out': 0, 'frames_dropped': 0}
        return {'frames_in': compressor.frames_in, 'frames_out': compressor.frames_out,
                'frames_dropped': compressor.frames_dropped}

    def _socket(self, socket_type):
        return new_socket(self._ctx, socket_type, self._curve)

    def _open_device(self, device):
        sock = self._socket(zmq.PUB)
        sock.sndhwm = DEPTH_SEND_HWM
        port = sock.bind_to_random_port('tcp://' + self.address)
        device.socket = sock
        device.endpoint = 'tcp://{0}:{1}'.format(self.address, port)
        device.compressor = DepthFrameCompressor(device.kinect, io_loop=self._io_loop,
                                                 codec=self.codec)
        device.compressor.on_compressed_frame.connect(self._send_frame,
                                                      sender=device.compressor)
        log.info('Device %s streams depth on %s', device.kinect.unique_kinect_id,
                 device.endpoint)

    def _close_device(self, device):
        if device.compressor is not None:
            device.compressor.on_compressed_frame.disconnect(self._send_frame,
                                                             sender=device.compressor)
            device.compressor.close()
            device.compressor = None
        if device.socket is not None:
            device.socket.close(linger=0)
            device.socket = None
        device.endpoint = None

    def _send_frame(self, compressor, compressed_frame=None):
        device = self._devices.get(compressor.kinect.unique_kinect_id)
        if device is None or device.socket is None:
            return
        try:
            device.socket.send_multipart(compressed_frame.parts, copy=False,
                                         flags=zmq.NOBLOCK)
        except zmq.Again:  # all subscribers' queues are full: drop, newest wins later
            pass

    # --- lifetime --------------------------------------------------------------------

    def start(self):
        """Start the server. If it is already running, only log a warning."""
        if self.is_running:
            log.warning('Server %r already running', self.name)
            return
        if self._curve is not None:
            if self._own_ctx:
                self._ctx = zmq.Context()
            self._authenticator = _Authenticator(self._ctx, self._curve)
        sock = self._socket(zmq.REP)
        sock.maxmsgsize = CONTROL_MAX_MESSAGE_SIZE
        base = 'tcp://' + self.address
        if self.control_port:
            sock.bind('{0}:{1}'.format(base, self.control_port))
            port = self.control_port
        else:
            port = sock.bind_to_random_port(base)
        self._control_socket = sock
        self._control_stream = ZMQStream(sock, self._io_loop)
        self._control_stream.on_recv(self._handle_control)
        self.endpoints = {EndpointType.control: '{0}:{1}'.format(base, port)}
        self.is_running = True
        for device in self._devices.values():
            self._open_device(device)
        log.info('Server %r control endpoint %s', self.name,
                 self.endpoints[EndpointType.control])
        if self.announce:
            self._start_announcing(port)

    def stop(self):
        """Stop the server. If it is not running, only log a warning."""
        if not self.is_running:
            log.warning('Server %r not running', self.name)
            return
        self._stop_announcing()
        for device in self._devices.values():
            self._close_device(device)
        self._control_stream.close(linger=0)
        self._control_stream = None
        self._control_socket = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_ctx:
            self._ctx.term()
            self._ctx = None
        self.endpoints = {}
        self.is_running = False
        log.info('Server %r stopped', self.name)

    def __enter__(self):
        """Start the server (if not running) and return it."""
        if not self.is_running:
            self.start()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Stop the server."""
        if self.is_running:
            self.stop()

    # --- zeroconf --------------------------------------------------------------------

    def _start_announcing(self, port):
        self._zc_info = ServiceInfo(
            ZC_SERVICE_TYPE, '{0}.{1}'.format(self.name, ZC_SERVICE_TYPE),
            addresses=[socket.inet_aton(self.address)], port=port,
            properties={'version': str(PROTOCOL_VERSION)},
            server='{0}.local.'.format(socket.gethostname().split('.')[0]))
        self._zeroconf = _zeroconf_for(self.address)
        # Registration probes the network for about a second: keep it off the IOLoop.
        self._zc_thread = threading.Thread(target=self._register, daemon=True,
                                           name='Server-zeroconf-register')
        self._zc_thread.start()

    def _register(self):
        try:
            self._zeroconf.register_service(self._zc_info, allow_name_change=True)
            log.info('Server %r announced over Zeroconf as %r', self.name,
                     self._zc_info.name)
        except Exception as err:  # the server still serves; it is just not announced
            log.error('Could not announce server %r over Zeroconf: %s', self.name, err)

    def _stop_announcing(self):
        if self._zeroconf is None:
            return
        _run_off_loop(self._unregister)
        self._zeroconf = None
        self._zc_thread = None

    def _unregister(self):
        self._zc_thread.join(5.0)
        try:
            self._zeroconf.unregister_service(self._zc_info)
        except Exception as err:
            log.warning('Could not unregister server %r from Zeroconf: %s', self.name, err)
        self._zeroconf.close()

    @property
    def announced_name(self):
        """Return the Zeroconf instance name registered (None when not announced)."""
        return self._zc_info.name if self._zeroconf is not None else None

    # --- control protocol ------------------------------------------------------------

    def _handle_control(self, frames):
        try:
            msg_type, payload = decode_control(frames)
            reply = self._reply_to(msg_type, payload)
        except ProtocolError as err:
            log.warning('Bad control message: %s', err)
            reply = encode_control(MessageType.error, {'reason': str(err)})
        except Exception as err:  # never let one request take the server down
            log.exception('Error handling control message')
            reply = encode_control(MessageType.error, {'reason': 'internal error: {0}'.format(
                type(err).__name__)})
        self._control_stream.send_multipart(reply)

    def _reply_to(self, msg_type, payload):
        if msg_type is MessageType.ping:
            return encode_control(MessageType.pong)
        if msg_type is MessageType.who:
            return encode_control(MessageType.me, self.me_payload())
        raise ProtocolError('unexpected message type "{0}" from a client'.format(
            msg_type.name))

    def me_payload(self):
        """Return the payload of this server's ``me`` reply."""
        devices = []
        for kinect_id, device in self._devices.items():
            record = {'id': kinect_id, 'endpoints': {'depth': device.endpoint}}
            camera = getattr(device.kinect, 'depth_camera', None)
            if camera:
                record['depth_camera'] = dict(camera)
            devices.append(record)
        return {
            'version': PROTOCOL_VERSION,
            'name': self.name,
            'endpoints': {'control': self.endpoints[EndpointType.control]},
            'devices': devices,
        }


class ServerBrowser(object):
    """An object which listens for kinect2 streaming servers on the network.

    It keeps listening until :py:meth:`close` is called (or the ``with`` block ends).

    *io_loop* is the :py:class:`tornado.ioloop.IOLoop` the signals are emitted on
    (default ``IOLoop.current()``): discovery runs on zeroconf's own threads and hands
    each event to the loop. *address* is the IPv4 address of the interface to listen on,
    or None for every interface.

    ``on_add_server`` and ``on_remove_server`` are emitted with a keyword argument
    ``server_info``, a :py:class:`ServerInfo`.
    """

    #: Emitted (keyword argument ``server_info``) when a server appears.
    on_add_server = Signal()
    #: Emitted (keyword argument ``server_info``) when a server goes away.
    on_remove_server = Signal()

    def __init__(self, io_loop=None, address=None, resolve_timeout=3.0):
        """Start browsing for ``_kinect2._tcp.local.`` services."""
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self._resolve_timeout_ms = int(resolve_timeout * 1000)
        self._servers = {}
        self._lock = threading.Lock()
        self._zeroconf = _zeroconf_for(_check_ipv4(address) if address else None)
        self._browser = ServiceBrowser(self._zeroconf, ZC_SERVICE_TYPE,
                                       handlers=[self._on_service_state_change])

    @property
    def servers(self):
        """List of :py:class:`ServerInfo` for the servers currently known."""
        with self._lock:
            return list(self._servers.values())

    def _on_service_state_change(self, zeroconf, service_type, name, state_change):
        # Runs on zeroconf's browser thread.
        if service_type != ZC_SERVICE_TYPE:
            return
        if state_change is ServiceStateChange.Removed:
            with self._lock:
                info = self._servers.pop(name, None)
            if info is not None:
                self._emit(self.on_remove_server, info)
            return
        zc_info = zeroconf.get_service_info(service_type, name,
                                            timeout=self._resolve_timeout_ms)
        if zc_info is None or not zc_info.port:
            log.warning('Could not resolve server %r', name)
            return
        addresses = zc_info.parsed_addresses(IPVersion.V4Only)
        if not addresses:
            log.warning('Server %r announced no IPv4 address', name)
            return
        info = ServerInfo(name=name[:-(len(ZC_SERVICE_TYPE) + 1)],
                          endpoint='tcp://{0}:{1}'.format(addresses[0], zc_info.port))
        with self._lock:
            old = self._servers.get(name)
            self._servers[name] = info
        if old == info:
            return
        if old is not None:
            self._emit(self.on_remove_server, old)
        log.info('Found server %r at %s', info.name, info.endpoint)
        self._emit(self.on_add_server, info)

    def _emit(self, signal, info):
        try:
            self._io_loop.add_callback(signal.send, self, server_info=info)
        except RuntimeError:  # loop closed
            pass

    def close(self):
        """Stop listening and release the zeroconf sockets and threads."""
        if self._browser is None:
            return
        browser, self._browser = self._browser, None

        def shut_down():
            browser.cancel()
            self._zeroconf.close()
        _run_off_loop(shut_down)

    def __enter__(self):
        """Return the browser."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Close the browser."""
        self.close()
