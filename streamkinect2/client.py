"""Client for a streaming Kinect2 server."""
import collections
import logging
import time

from blinker import Signal
from tornado.ioloop import IOLoop, PeriodicCallback
import zmq
from zmq.eventloop.zmqstream import ZMQStream

from . import codec as _codec
from .common import EndpointType, ProtocolError
from .device import DepthFrame
from .protocol import (decode_control, decode_frame_message, encode_control, MessageType,
                       validate_me_payload)
from .security import new_socket

__all__ = ['Client', 'FrameStats']

log = logging.getLogger(__name__)

#: Largest frame (in pixels) a client accepts by default: more than any Kinect's depth.
DEFAULT_MAX_FRAME_PIXELS = 1024 * 1024
#: Depth messages a client's socket queues before the newest are dropped.
DEPTH_RECV_HWM = 4
#: Seconds between two warnings about invalid depth messages from one device.
INVALID_LOG_PERIOD = 5.0


class FrameStats(object):
    """Counters for the depth stream of one device, as seen by a client."""

    __slots__ = ('received', 'invalid', 'dropped', 'payload_bytes', 'raw_bytes',
                 'last_sequence', 'last_latency')

    def __init__(self):
        """Start all counters at zero."""
        self.received = 0          # frames decoded and delivered
        self.invalid = 0           # messages rejected (malformed, undecodable)
        self.dropped = 0           # frames missing from the sequence (lost upstream)
        self.payload_bytes = 0     # bytes received (headers and payloads)
        self.raw_bytes = 0         # bytes the delivered frames decode to
        self.last_sequence = None
        self.last_latency = None   # seconds from capture to decoded, last frame

    def as_dict(self):
        """Return the counters as a dict."""
        return {name: getattr(self, name) for name in self.__slots__}


class _Request(object):
    __slots__ = ('msg_type', 'payload', 'callback', 'sent_at')

    def __init__(self, msg_type, payload, callback):
        self.msg_type = msg_type
        self.payload = payload
        self.callback = callback
        self.sent_at = None


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
    ``endpoints``: dict of endpoint addresses keyed by ``EndpointType``.
    ``is_connected``: True between :py:meth:`connect` and :py:meth:`disconnect` (which
    happens by itself when the server stops answering).
    ``kinect_ids``: ids of the server's devices. ``devices``: their ``me`` records.
    ``heartbeat_period``: delay in ms between heartbeat requests; changes are ignored
    once :py:meth:`connect` has been called. ``response_timeout``: the maximum wait in
    ms for a reply before the client gives up and disconnects.
    ``max_frame_pixels``: the largest frame accepted; a frame header may not make the
    client allocate more than that.

    *curve*, a :py:class:`~streamkinect2.security.CurveClientConfig`, turns on CURVE
    encryption and authentication towards a server that has it on.
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

    def __init__(self, control_endpoint, connect_immediately=False, zmq_ctx=None,
                 io_loop=None, curve=None):
        """Create a client for the server at *control_endpoint*."""
        self._curve = curve
        self.heartbeat_period = 500
        self.response_timeout = 2000
        self.max_frame_pixels = DEFAULT_MAX_FRAME_PIXELS
        self.server_name = None
        self.endpoints = {EndpointType.control: control_endpoint}
        self.is_connected = False
        self.devices = collections.OrderedDict()
        self.stats = {}
        self._ctx = zmq_ctx if zmq_ctx is not None else zmq.Context.instance()
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        self._control_stream = None
        self._depth_streams = {}
        self._invalid_logged = {}
        self._queue = collections.deque()
        self._in_flight = None
        self._last_sent = 0.0
        self._identified = False
        self._ticker = None
        if connect_immediately:
            self.connect()

    @property
    def kinect_ids(self):
        """List of the ids of the server's devices."""
        return list(self.devices)

    # --- connection ------------------------------------------------------------------

    def connect(self):
        """Explicitly connect the client (again, after a disconnect)."""
        if self.is_connected:
            log.warning('Client already connected')
            return
        sock = self._socket(zmq.REQ)
        sock.connect(self.endpoints[EndpointType.control])
        self._control_stream = ZMQStream(sock, self._io_loop)
        self._control_stream.on_recv(self._on_control_recv)
        self.is_connected = True
        self._identified = False
        self._queue.clear()
        self._in_flight = None
        self._heartbeat_ms = self.heartbeat_period  # fixed until the next connect()
        period = max(10, min(100, self._heartbeat_ms / 2, self.response_timeout / 4))
        self._ticker = PeriodicCallback(self._tick, period)
        self._ticker.start()
        self._who()

    def _socket(self, socket_type):
        return new_socket(self._ctx, socket_type, self._curve)

    def disconnect(self):
        """Explicitly disconnect the client."""
        if not self.is_connected:
            log.warning('Client not connected')
            return
        self._disconnect()

    def _disconnect(self, reason=None):
        if reason:
            log.warning('Disconnecting from %s: %s', self.endpoints[EndpointType.control],
                        reason)
        self._ticker.stop()
        self._ticker = None
        self._control_stream.close(linger=0)
        self._control_stream = None
        self.is_connected = False
        self._queue.clear()
        self._in_flight = None
        for kinect_id in list(self.devices):
            self._remove_device(kinect_id)
        if self._identified:
            self._identified = False
            self.on_disconnect.send(self)

    def __enter__(self):
        """Connect the client and return it."""
        self.connect()
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Disconnect the client."""
        if self.is_connected:
            self.disconnect()

    # --- requests --------------------------------------------------------------------

    def ping(self, pong_cb=None):
        """Send a 'ping'; *pong_cb*, if not None, is called with no arguments on 'pong'."""
        self._ensure_connected()

        def got_pong(msg_type, payload):
            if msg_type is not MessageType.pong:
                raise ProtocolError('expected pong, got {0}'.format(msg_type.name))
            if pong_cb is not None:
                pong_cb()
        self._request(MessageType.ping, None, got_pong)

    def _who(self):
        self._request(MessageType.who, None, self._got_me)

    def _ensure_connected(self):
        if not self.is_connected:
            raise RuntimeError('Client is not connected')

    def _request(self, msg_type, payload, callback):
        self._queue.append(_Request(msg_type, payload, callback))
        self._pump()

    def _pump(self):
        if self._in_flight is not None or not self._queue or not self.is_connected:
            return
        request = self._queue.popleft()
        request.sent_at = self._last_sent = time.monotonic()
        self._in_flight = request
        self._control_stream.send_multipart(encode_control(request.msg_type,
                                                           request.payload))

    def _tick(self):
        now = time.monotonic()
        request = self._in_flight
        if request is not None:
            if (now - request.sent_at) * 1000 > self.response_timeout:
                self._disconnect('no reply within {0} ms'.format(self.response_timeout))
        elif not self._queue and (now - self._last_sent) * 1000 >= self._heartbeat_ms:
            self._who()  # heartbeat, which also refreshes the device list

    def _on_control_recv(self, frames):
        request, self._in_flight = self._in_flight, None
        try:
            msg_type, payload = decode_control(frames)
            if msg_type is MessageType.error:
                reason = payload.get('reason') if isinstance(payload, dict) else None
                raise ProtocolError('server replied error: {0}'.format(reason))
            if request is None:
                raise ProtocolError('unsolicited {0} reply'.format(msg_type.name))
            request.callback(msg_type, payload)
        except ProtocolError as err:
            log.error('Protocol error from %s: %s', self.endpoints[EndpointType.control], err)
        except Exception:
            log.exception('Error handling reply from %s', self.endpoints[EndpointType.control])
        self._pump()

    def _got_me(self, msg_type, payload):
        if msg_type is not MessageType.me:
            raise ProtocolError('expected me, got {0}'.format(msg_type.name))
        try:
            validate_me_payload(payload)
        except ProtocolError:
            if not self._identified:
                # Nothing usable from this server: stop talking to it.
                self._io_loop.add_callback(self._disconnect_if_unidentified)
            raise
        self.server_name = payload['name']
        for name, address in payload['endpoints'].items():
            if name in EndpointType.__members__ and isinstance(address, str):
                self.endpoints[EndpointType[name]] = address
        records = collections.OrderedDict((d['id'], d) for d in payload['devices'])
        for kinect_id in list(self.devices):
            old, new = self.devices[kinect_id], records.get(kinect_id)
            if new is None or new.get('endpoints') != old.get('endpoints'):
                self._remove_device(kinect_id)
        first = not self._identified
        if first:
            self._identified = True
            log.info('Connected to %r at %s', self.server_name,
                     self.endpoints[EndpointType.control])
            self.on_connect.send(self)
        for kinect_id, record in records.items():
            if kinect_id not in self.devices and self.is_connected:
                self.devices[kinect_id] = record
                self.stats[kinect_id] = FrameStats()
                self.on_add_kinect.send(self, kinect_id=kinect_id)

    def _disconnect_if_unidentified(self):
        if self.is_connected and not self._identified:
            self._disconnect('server sent an invalid me reply')

    def _remove_device(self, kinect_id):
        self._close_depth_stream(kinect_id)
        del self.devices[kinect_id]
        self.on_remove_kinect.send(self, kinect_id=kinect_id)

    # --- depth -----------------------------------------------------------------------

    def device_info(self, kinect_id):
        """Return the ``me`` device record of *kinect_id* (a dict)."""
        return self.devices[kinect_id]

    def enable_depth_frames(self, kinect_id):
        """Enable streaming of depth frames from the device *kinect_id*.

        Raises ValueError if *kinect_id* does not correspond to a connected device.
        """
        record = self.devices.get(kinect_id)
        if record is None:
            raise ValueError('no device with id {0!r} on this server'.format(kinect_id))
        endpoint = record['endpoints'].get('depth')
        if not endpoint:
            raise ValueError('device {0!r} has no depth endpoint'.format(kinect_id))
        if kinect_id in self._depth_streams:
            return
        sock = self._socket(zmq.SUB)
        sock.rcvhwm = DEPTH_RECV_HWM
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b'')
        stream = ZMQStream(sock, self._io_loop)
        stream.on_recv(lambda frames: self._on_depth_message(kinect_id, frames), copy=False)
        self._depth_streams[kinect_id] = stream

    def disable_depth_frames(self, kinect_id):
        """Stop streaming depth frames from the device *kinect_id*."""
        if kinect_id not in self.devices:
            raise ValueError('no device with id {0!r} on this server'.format(kinect_id))
        self._close_depth_stream(kinect_id)

    def _close_depth_stream(self, kinect_id):
        stream = self._depth_streams.pop(kinect_id, None)
        if stream is not None:
            stream.close(linger=0)

    def _on_depth_message(self, kinect_id, frames):
        stats = self.stats.get(kinect_id)
        if stats is None or kinect_id not in self._depth_streams:
            return
        try:
            depth_frame = self.decode_depth_message(frames)
        except ProtocolError as err:
            stats.invalid += 1
            self._warn_invalid(kinect_id, stats, err)
            return
        stats.payload_bytes += sum(len(f.buffer) if hasattr(f, 'buffer') else len(f)
                                   for f in frames)
        stats.raw_bytes += depth_frame.data.nbytes
        if stats.last_sequence is not None and depth_frame.sequence > stats.last_sequence:
            stats.dropped += depth_frame.sequence - stats.last_sequence - 1
        stats.last_sequence = depth_frame.sequence
        stats.received += 1
        stats.last_latency = time.time() - depth_frame.timestamp
        self.on_depth_frame.send(self, depth_frame=depth_frame, kinect_id=kinect_id)

    def _warn_invalid(self, kinect_id, stats, err):
        # One warning per INVALID_LOG_PERIOD per device: a flood of bad messages must
        # not become a flood of log lines.
        now = time.monotonic()
        last_at, last_count = self._invalid_logged.get(kinect_id, (None, 0))
        if last_at is not None and now - last_at < INVALID_LOG_PERIOD:
            return
        self._invalid_logged[kinect_id] = (now, stats.invalid)
        log.warning('Dropped %d invalid depth message(s) from %s%s; last: %s',
                    stats.invalid - last_count, kinect_id,
                    '' if last_at is None else ' in {0:.0f} s'.format(now - last_at), err)

    def decode_depth_message(self, frames):
        """Decode and validate one depth message (list of frames) into a DepthFrame.

        Raises :py:class:`ProtocolError` if the message is malformed in any way.
        """
        header, payload = decode_frame_message(frames, self.max_frame_pixels)
        pixels = _codec.decode(payload, header.width, header.height, header.codec)
        return DepthFrame(pixels, sequence=header.sequence, timestamp_ns=header.timestamp_ns,
                          device_timestamp=header.device_timestamp)
