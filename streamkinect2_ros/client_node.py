"""ROS 2 node ``streamkinect2_client``: publish a streamkinect2 server's depth as Images.

The node connects to the server given by ``server_endpoint``, or discovers one over
Zeroconf by ``server_name`` (the first seen if empty), enables depth for every device
(or those in ``devices``) and publishes each device under its own namespace::

    <node namespace>/<device>/depth/image_raw     sensor_msgs/Image, 16UC1, millimetres
    <node namespace>/<device>/depth/camera_info   sensor_msgs/CameraInfo

where ``<device>`` is the device id made a valid ROS name (:py:func:`sanitise_name`).
When the server goes away the node logs it, publishes nothing, and reconnects by itself
(re-discovering the server by name, or retrying the fixed endpoint). Frame rate, drops
and latency are logged every ``log_period`` and published as ``diagnostic_msgs`` on
``/diagnostics``. ``frame_id`` and ``stamp_source`` can be changed while running.

The streamkinect2 client runs on a tornado IOLoop thread, which also publishes the
Images; the rclpy executor keeps the main thread (parameters, timers).
"""
import collections
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import CameraInfo, Image
from streamkinect2 import Client, ServerBrowser
from streamkinect2.security import CurveClientConfig
from tornado.ioloop import PeriodicCallback

from .conversions import (camera_info_fields, fill_camera_info, fill_image, frame_id_for,
                          sanitise_name)
from .params import declare_all, ParamSpec
from .rosutil import LoopNode, run_node

__all__ = ['NODE_NAME', 'PARAMETERS', 'ClientNode', 'main']

NODE_NAME = 'streamkinect2_client'
STAMP_SOURCES = ('capture', 'receive')
RELIABILITIES = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
                 'reliable': ReliabilityPolicy.RELIABLE}
#: Seconds of per-frame samples kept for the rate and latency figures.
WINDOW = 10.0

PARAMETERS = (
    ParamSpec('server_endpoint', '', 'Control endpoint of the server (tcp://host:port); '
              'empty: discover the server over Zeroconf', True),
    ParamSpec('server_name', '', 'Name of the server to discover; empty: the first one '
              'seen (ignored when server_endpoint is set)', True),
    ParamSpec('discovery_address', '', 'IPv4 address of the interface to discover servers '
              'on; empty: every interface', True),
    ParamSpec('devices', [], 'Ids (or sanitised names) of the devices to publish; unset or '
              'empty: all', True),
    ParamSpec('frame_id', 'kinect2_{device}_depth_optical_frame', 'Optical frame id of the '
              'Images and CameraInfos; {device} is replaced by the sanitised device id '
              '(REP 103/105). Can be changed at runtime', False),
    ParamSpec('stamp_source', 'capture', 'Header stamp: "capture" (host capture time '
              'carried by the frame) or "receive" (time the client received it). Can be '
              'changed at runtime', False),
    ParamSpec('qos_reliability', 'best_effort', 'Publisher reliability: best_effort (as '
              'the sensor-data profile) or reliable', True),
    ParamSpec('qos_depth', 5, 'Publisher history depth (keep last)', True),
    ParamSpec('diagnostics_period', 1.0, 'Seconds between diagnostic_msgs/DiagnosticArray '
              'messages on /diagnostics; 0: none', True),
    ParamSpec('log_period', 5.0, 'Seconds between log lines with rate, drops and latency; '
              '0: none', True),
    ParamSpec('reconnect_period', 1.0, 'Seconds between attempts to reach a server that '
              'is not answering', True),
    ParamSpec('response_timeout', 2.0, 'Seconds without a reply after which the server '
              'is considered gone', True),
    ParamSpec('curve_secret_file', '', "CURVE security: this client's .key_secret file "
              '(made by streamkinect2-keygen); empty: security off', True),
    ParamSpec('curve_server_key', '', "CURVE security: the server's public key (40 Z85 "
              'characters) or its .key file', True),
)


class _Device(object):
    """What the node knows about one published device (IOLoop thread writes)."""

    def __init__(self, kinect_id, image_pub, info_pub):
        self.kinect_id = kinect_id
        self.name = sanitise_name(kinect_id)
        self.image_pub = image_pub
        self.info_pub = info_pub
        self.camera_fields = None
        self.record = None
        self.streaming = False
        self.published = 0
        self.dropped = 0
        self.last_sequence = None
        self.samples = collections.deque(maxlen=4096)  # (monotonic, latency s)


class ClientNode(LoopNode):
    """The ``streamkinect2_client`` node. Call :py:meth:`close` before destroying it."""

    def __init__(self, **kwargs):
        """Declare the parameters, create the timers and start looking for the server."""
        super().__init__(NODE_NAME, **kwargs)
        self._client = None
        self._client_endpoint = None
        self._browser = None
        self._maintainer = None
        self._failed = {}
        self._identified = False
        self._waiting_logged = False
        self._lock = threading.Lock()
        self._devices = {}
        self.params = params = declare_all(self, PARAMETERS)
        self._check(params)
        self._curve = None
        if params['curve_secret_file'] or params['curve_server_key']:
            if not (params['curve_secret_file'] and params['curve_server_key']):
                raise ValueError('curve_secret_file and curve_server_key go together')
            self._curve = CurveClientConfig(params['curve_secret_file'],
                                            params['curve_server_key'])
        self.frame_id = params['frame_id']
        self.stamp_source = params['stamp_source']
        self._wanted = set(params['devices'])
        self.qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=params['qos_depth'],
                              reliability=RELIABILITIES[params['qos_reliability']],
                              durability=DurabilityPolicy.VOLATILE)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diag_pub = None
        self._reports = {}
        if params['diagnostics_period'] > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self.create_timer(params['diagnostics_period'], self._publish_diagnostics)
        if params['log_period'] > 0:
            self.create_timer(params['log_period'], self._log_figures)
        try:
            self.start_loop('streamkinect2-client-ioloop')
            self.loop.call(self._start_on_loop)
        except BaseException:
            self.close()
            raise

    # --- parameters ------------------------------------------------------------------

    @staticmethod
    def _check(params):
        problems = []
        if params['stamp_source'] not in STAMP_SOURCES:
            problems.append('stamp_source must be one of {0}'.format(STAMP_SOURCES))
        if not params['frame_id']:
            problems.append('frame_id must not be empty')
        if params['qos_reliability'] not in RELIABILITIES:
            problems.append('qos_reliability must be one of {0}'.format(
                sorted(RELIABILITIES)))
        if params['qos_depth'] < 1:
            problems.append('qos_depth must be at least 1')
        if params['reconnect_period'] <= 0 or params['response_timeout'] <= 0:
            problems.append('reconnect_period and response_timeout must be positive')
        endpoint = params['server_endpoint']
        if endpoint and not endpoint.startswith('tcp://'):
            problems.append('server_endpoint must look like tcp://host:port')
        if problems:
            raise ValueError('; '.join(problems))

    def _on_set_parameters(self, parameters):
        changes = {}
        for parameter in parameters:
            if parameter.name == 'frame_id':
                if not isinstance(parameter.value, str) or not parameter.value:
                    return SetParametersResult(successful=False,
                                               reason='frame_id must be a non-empty string')
            elif parameter.name == 'stamp_source':
                if parameter.value not in STAMP_SOURCES:
                    return SetParametersResult(
                        successful=False,
                        reason='stamp_source must be one of {0}'.format(STAMP_SOURCES))
            else:
                continue
            changes[parameter.name] = parameter.value
        # Plain attribute stores: the IOLoop thread reads them on the next frame.
        for name, value in changes.items():
            setattr(self, name, value)
            self.get_logger().info('{0} is now {1!r}'.format(name, value))
        return SetParametersResult(successful=True)

    # --- connection (IOLoop thread) --------------------------------------------------

    def _start_on_loop(self):
        params = self.params
        if params['server_endpoint']:
            self.get_logger().info('Connecting to the server at {0}'.format(
                params['server_endpoint']))
        else:
            self._browser = ServerBrowser(io_loop=self.loop.io_loop,
                                          address=params['discovery_address'] or None)
            ServerBrowser.on_add_server.connect(self._on_add_server, sender=self._browser)
            ServerBrowser.on_remove_server.connect(self._on_remove_server,
                                                   sender=self._browser)
            self.get_logger().info('Looking for {0} over Zeroconf{1}'.format(
                'server {0!r}'.format(params['server_name']) if params['server_name']
                else 'the first server', ' on ' + params['discovery_address']
                if params['discovery_address'] else ''))
        self._maintainer = PeriodicCallback(self._maintain,
                                            params['reconnect_period'] * 1000.0)
        self._maintainer.start()
        self._maintain()

    def _candidates(self):
        if self.params['server_endpoint']:
            return [self.params['server_endpoint']]
        name = self.params['server_name']
        return [info.endpoint for info in self._browser.servers
                if not name or info.name == name]

    def _pick_endpoint(self):
        candidates = self._candidates()
        if not candidates:
            return None
        # The first candidate that has not just failed; else the one that failed longest ago.
        now = time.monotonic()
        fresh = [e for e in candidates
                 if now - self._failed.get(e, -1e9) > self.params['response_timeout']]
        if fresh:
            return fresh[0]
        return min(candidates, key=lambda e: self._failed.get(e, 0.0))

    def _maintain(self):
        """Keep a connection: (re)connect when there is none (IOLoop thread)."""
        client = self._client
        if client is not None and client.is_connected:
            return
        if client is not None and not self._identified:
            self._failed[self._client_endpoint] = time.monotonic()
        endpoint = self._pick_endpoint()
        if endpoint is None:
            if not self._waiting_logged:
                self.get_logger().info('Waiting for the server to be announced')
                self._waiting_logged = True
            return
        self._waiting_logged = False
        if client is None or endpoint != self._client_endpoint:
            self._drop_client()
            client = Client(endpoint, zmq_ctx=self.zmq_ctx, io_loop=self.loop.io_loop,
                            curve=self._curve)
            client.heartbeat_period = max(50, int(self.params['response_timeout'] * 250))
            client.response_timeout = int(self.params['response_timeout'] * 1000)
            Client.on_connect.connect(self._on_connect, sender=client)
            Client.on_disconnect.connect(self._on_disconnect, sender=client)
            Client.on_add_kinect.connect(self._on_add_kinect, sender=client)
            Client.on_remove_kinect.connect(self._on_remove_kinect, sender=client)
            Client.on_depth_frame.connect(self._on_depth_frame, sender=client)
            self._client, self._client_endpoint = client, endpoint
        self._identified = False
        client.connect()

    def _drop_client(self):
        client, self._client, self._client_endpoint = self._client, None, None
        if client is None:
            return
        for signal, receiver in ((Client.on_connect, self._on_connect),
                                 (Client.on_disconnect, self._on_disconnect),
                                 (Client.on_add_kinect, self._on_add_kinect),
                                 (Client.on_remove_kinect, self._on_remove_kinect),
                                 (Client.on_depth_frame, self._on_depth_frame)):
            signal.disconnect(receiver, sender=client)
        if client.is_connected:
            client.disconnect()
        with self._lock:
            for device in self._devices.values():
                device.streaming = False

    def _on_add_server(self, browser, server_info):
        name = self.params['server_name']
        if name and server_info.name != name:
            return
        self._failed.pop(server_info.endpoint, None)
        if self._client is None or not self._client.is_connected or not self._identified:
            self.loop.io_loop.add_callback(self._maintain)

    def _on_remove_server(self, browser, server_info):
        if server_info.endpoint == self._client_endpoint:
            self.get_logger().info('Server {0!r} is no longer announced'.format(
                server_info.name))

    def _on_connect(self, client):
        self._identified = True
        self._failed.pop(self._client_endpoint, None)
        self.get_logger().info('Connected to server {0!r} at {1}'.format(
            client.server_name, self._client_endpoint))

    def _on_disconnect(self, client):
        self.get_logger().warning(
            'Server {0!r} at {1} went away; publishing nothing until it is back'.format(
                client.server_name, self._client_endpoint))
        with self._lock:
            for device in self._devices.values():
                device.streaming = False

    def _on_add_kinect(self, client, kinect_id):
        if self._wanted and not self._wanted & {kinect_id, sanitise_name(kinect_id)}:
            self.get_logger().info('Not publishing device {0} (not in devices)'.format(
                kinect_id))
            return
        device = self._devices.get(kinect_id)
        if device is None:
            name = sanitise_name(kinect_id)
            clash = [d.kinect_id for d in self._devices.values() if d.name == name]
            if clash:
                self.get_logger().error('Devices {0} and {1} map to the same name {2}; '
                                        'not publishing {1}'.format(clash[0], kinect_id, name))
                return
            image_pub = self.create_publisher(Image, name + '/depth/image_raw', self.qos)
            info_pub = self.create_publisher(CameraInfo, name + '/depth/camera_info',
                                             self.qos)
            device = _Device(kinect_id, image_pub, info_pub)
            with self._lock:
                self._devices[kinect_id] = device
            self.get_logger().info('Publishing device {0} on {1}'.format(
                kinect_id, image_pub.topic_name))
        device.record = client.devices.get(kinect_id)
        device.camera_fields = None
        device.last_sequence = None
        device.streaming = True
        client.enable_depth_frames(kinect_id)

    def _on_remove_kinect(self, client, kinect_id):
        device = self._devices.get(kinect_id)
        if device is not None:
            device.streaming = False
            if client.is_connected:
                self.get_logger().warning('Device {0} was removed from the server'.format(
                    kinect_id))

    def _on_depth_frame(self, client, depth_frame, kinect_id):
        device = self._devices.get(kinect_id)
        if device is None or not device.streaming or client is not self._client:
            return
        received_ns = time.time_ns()
        pixels = depth_frame.array
        frame_id = frame_id_for(self.frame_id, device.name)
        stamp_ns = depth_frame.timestamp_ns if self.stamp_source == 'capture' else received_ns
        if device.camera_fields is None or device.camera_fields['width'] != pixels.shape[1] \
                or device.camera_fields['height'] != pixels.shape[0]:
            intrinsics = (device.record or {}).get('depth_camera')
            device.camera_fields = camera_info_fields(pixels.shape[1], pixels.shape[0],
                                                      intrinsics)
        image = fill_image(Image(), pixels, frame_id, stamp_ns)
        info = fill_camera_info(CameraInfo(), device.camera_fields, frame_id, stamp_ns)
        try:
            device.image_pub.publish(image)
            device.info_pub.publish(info)
        except Exception:
            if not self.context.ok():  # shutting down: nothing to publish to
                return
            raise
        sequence = depth_frame.sequence
        with self._lock:
            if device.last_sequence is not None and sequence > device.last_sequence:
                device.dropped += sequence - device.last_sequence - 1
            device.last_sequence = sequence
            device.published += 1
            device.samples.append((time.monotonic(),
                                   (received_ns - depth_frame.timestamp_ns) * 1e-9))

    # --- figures (executor thread) ---------------------------------------------------

    def figures(self, period):
        """Return ``{device id: dict}`` of rate, latency and counters over *period* s."""
        now = time.monotonic()
        result = {}
        with self._lock:
            for kinect_id, device in self._devices.items():
                latencies = sorted(lat for t, lat in device.samples if now - t <= period)
                result[kinect_id] = {
                    'name': device.name,
                    'streaming': device.streaming,
                    'rate': len(latencies) / period if period > 0 else 0.0,
                    'latency_p50_ms': _percentile(latencies, 0.5) * 1e3,
                    'latency_p99_ms': _percentile(latencies, 0.99) * 1e3,
                    'published': device.published,
                    'dropped': device.dropped,
                }
        return result

    @property
    def connected_server(self):
        """Name of the server connected to, or None."""
        client = self._client
        if client is not None and client.is_connected and client.server_name:
            return client.server_name
        return None

    def _log_figures(self):
        period = min(self.params['log_period'], WINDOW)
        server = self.connected_server
        if server is None:
            self.get_logger().info('No server connected')
            return
        for kinect_id, fig in sorted(self.figures(period).items()):
            self.get_logger().info(
                '{0}: {1:.1f} Images/s, latency p50 {2:.1f} ms p99 {3:.1f} ms, '
                '{4} published, {5} dropped'.format(
                    kinect_id, fig['rate'], fig['latency_p50_ms'], fig['latency_p99_ms'],
                    fig['published'], fig['dropped']))

    def _publish_diagnostics(self):
        period = min(self.params['diagnostics_period'], WINDOW)
        server = self.connected_server
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        connection = DiagnosticStatus(name='{0}: connection'.format(self.get_name()),
                                      hardware_id=str(self._client_endpoint or ''))
        if server is None:
            connection.level = DiagnosticStatus.ERROR
            connection.message = 'no server connected'
        else:
            connection.level = DiagnosticStatus.OK
            connection.message = 'connected to {0}'.format(server)
        msg.status.append(connection)
        for kinect_id, fig in sorted(self.figures(period).items()):
            status = DiagnosticStatus(name='{0}: {1}'.format(self.get_name(), kinect_id),
                                      hardware_id=kinect_id)
            if not fig['streaming'] or server is None:
                status.level, status.message = DiagnosticStatus.ERROR, 'not streaming'
            elif fig['rate'] == 0:
                status.level, status.message = DiagnosticStatus.WARN, 'no frames'
            else:
                status.level, status.message = DiagnosticStatus.OK, 'streaming'
            status.values = [
                KeyValue(key='frame_rate', value='{0:.2f}'.format(fig['rate'])),
                KeyValue(key='latency_p50_ms', value='{0:.2f}'.format(fig['latency_p50_ms'])),
                KeyValue(key='latency_p99_ms', value='{0:.2f}'.format(fig['latency_p99_ms'])),
                KeyValue(key='published', value=str(fig['published'])),
                KeyValue(key='dropped', value=str(fig['dropped'])),
            ]
            msg.status.append(status)
        self._diag_pub.publish(msg)

    # --- shutdown --------------------------------------------------------------------

    def stop_on_loop(self):
        if self._maintainer is not None:
            self._maintainer.stop()
            self._maintainer = None
        self._drop_client()
        if self._browser is not None:
            for signal, receiver in ((ServerBrowser.on_add_server, self._on_add_server),
                                     (ServerBrowser.on_remove_server,
                                      self._on_remove_server)):
                signal.disconnect(receiver, sender=self._browser)
            self._browser.close()
            self._browser = None


def _percentile(sorted_values, fraction):
    if not sorted_values:
        return float('nan')
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def main(args=None):
    """Run the client node until shutdown; return the exit status."""
    return run_node(ClientNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
