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
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import CameraInfo, Image
from streamkinect2.client import STATS_WINDOW
from streamkinect2.connection import ServerConnection
from streamkinect2.security import CurveClientConfig

from .conversions import (camera_info_fields, fill_camera_info, fill_image, frame_id_for,
                          intrinsics_problems, sanitise_name)
from .params import declare_all, ParamSpec
from .rosutil import LoopNode, run_node

__all__ = ['NODE_NAME', 'PARAMETERS', 'ClientNode', 'main']

NODE_NAME = 'streamkinect2_client'
STAMP_SOURCES = ('capture', 'receive')
RELIABILITIES = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
                 'reliable': ReliabilityPolicy.RELIABLE}
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
    ParamSpec('qos_depth', 5, 'Publisher history depth (keep last)', True, (1, 1000)),
    ParamSpec('diagnostics_period', 1.0, 'Seconds between diagnostic_msgs/DiagnosticArray '
              'messages on /diagnostics (each device OK, WARN or ERROR); 0: none', True,
              (0.0, 3600.0)),
    ParamSpec('log_period', 5.0, 'Seconds between log lines with rate, drops and latency; '
              '0: none', True, (0.0, 3600.0)),
    ParamSpec('reconnect_period', 1.0, 'Seconds between attempts to reach a server that '
              'is not answering', True, (0.01, 3600.0)),
    ParamSpec('response_timeout', 2.0, 'Seconds without a reply after which the server '
              'is considered gone', True, (0.05, 3600.0)),
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
        self.publish_failures = 0
        self.failed_at = None      # monotonic time of the last publishing failure
        self.last_error = None
        self.failure_logged_at = None


class ClientNode(LoopNode):
    """The ``streamkinect2_client`` node. Call :py:meth:`close` before destroying it.

    Connection, reconnection and rediscovery are the library's
    :py:class:`~streamkinect2.connection.ServerConnection`; the node maps its devices to
    publishers, and reports the library's per-device stats.
    """

    def __init__(self, **kwargs):
        """Declare the parameters, create the timers and start looking for the server."""
        super().__init__(NODE_NAME, **kwargs)
        self._connection = None
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
        connection = ServerConnection(
            params['server_endpoint'] or None, server_name=params['server_name'] or None,
            discovery_address=params['discovery_address'] or None,
            io_loop=self.loop.io_loop, zmq_ctx=self.zmq_ctx, curve=self._curve,
            response_timeout=params['response_timeout'],
            retry_period=params['reconnect_period'])
        for name in ServerConnection.SIGNALS:
            getattr(ServerConnection, name).connect(getattr(self, '_' + name),
                                                    sender=connection)
        self._connection = connection
        if params['server_endpoint']:
            self.get_logger().info('Connecting to the server at {0}'.format(
                params['server_endpoint']))
        else:
            self.get_logger().info('Looking for {0} over Zeroconf{1}'.format(
                'server {0!r}'.format(params['server_name']) if params['server_name']
                else 'the first server', ' on ' + params['discovery_address']
                if params['discovery_address'] else ''))
        connection.start()

    def _on_connect(self, connection):
        self.get_logger().info('Connected to server {0!r} at {1}'.format(
            connection.server_name, connection.endpoint))

    def _on_disconnect(self, connection):
        self.get_logger().warning(
            'Server {0!r} at {1} went away; publishing nothing until it is back'.format(
                connection.client.server_name, connection.endpoint))
        with self._lock:
            for device in self._devices.values():
                device.streaming = False

    def _on_add_kinect(self, connection, kinect_id):
        if self._wanted and not self._wanted & {kinect_id, sanitise_name(kinect_id)}:
            self.get_logger().info('Not publishing device {0} (not in devices)'.format(
                kinect_id))
            return
        device = self._devices.get(kinect_id)
        if device is None:
            device = self._add_device(kinect_id)
            if device is None:
                return
        device.record = connection.devices.get(kinect_id)
        device.camera_fields = None
        try:
            connection.enable_depth_frames(kinect_id)
        except ValueError as err:
            self.get_logger().error('Not publishing device {0}: {1}'.format(kinect_id, err))
            return
        device.streaming = True

    def _add_device(self, kinect_id):
        """Create the publishers of a new device (None if it cannot be published)."""
        name = sanitise_name(kinect_id)
        clash = [d.kinect_id for d in self._devices.values() if d.name == name]
        if clash:
            self.get_logger().error('Devices {0} and {1} map to the same name {2}; '
                                    'not publishing {1}'.format(clash[0], kinect_id, name))
            return None
        # Devices kept from earlier connections (not streaming) make room first: the
        # node never holds more publishers than the connection takes devices.
        idle = [d for d in self._devices.values() if not d.streaming]
        while len(self._devices) >= self._connection.max_devices and idle:
            self._remove_device(idle.pop(0).kinect_id)
        if len(self._devices) >= self._connection.max_devices:
            self.get_logger().error('Not publishing device {0}: already publishing {1} '
                                    'devices'.format(kinect_id, len(self._devices)))
            return None
        image_pub = self.create_publisher(Image, name + '/depth/image_raw', self.qos)
        info_pub = self.create_publisher(CameraInfo, name + '/depth/camera_info', self.qos)
        device = _Device(kinect_id, image_pub, info_pub)
        with self._lock:
            self._devices[kinect_id] = device
        self.get_logger().info('Publishing device {0} on {1}'.format(
            kinect_id, image_pub.topic_name))
        return device

    def _remove_device(self, kinect_id):
        """Forget a device and release its publishers."""
        with self._lock:
            device = self._devices.pop(kinect_id, None)
        if device is not None:
            self.destroy_publisher(device.image_pub)
            self.destroy_publisher(device.info_pub)

    def _on_remove_kinect(self, connection, kinect_id):
        device = self._devices.get(kinect_id)
        if device is None:
            return
        device.streaming = False
        if connection.client is not None and connection.client.is_connected:
            # The server removed it: release its publishers. (On a disconnect they
            # stay, for the server's return; new devices make room if need be.)
            self.get_logger().warning('Device {0} was removed from the server'.format(
                kinect_id))
            self._remove_device(kinect_id)

    def _on_depth_frame(self, connection, depth_frame, kinect_id):
        device = self._devices.get(kinect_id)
        if device is None or not device.streaming:
            return
        try:
            self._publish(device, depth_frame)
        except Exception as err:
            if not self.context.ok():  # shutting down: nothing to publish to
                return
            self._publish_failed(device, err)

    def _publish(self, device, depth_frame):
        pixels = depth_frame.array
        frame_id = frame_id_for(self.frame_id, device.name)
        stamp_ns = depth_frame.timestamp_ns if self.stamp_source == 'capture' \
            else time.time_ns()
        if device.camera_fields is None or device.camera_fields['width'] != pixels.shape[1] \
                or device.camera_fields['height'] != pixels.shape[0]:
            intrinsics = (device.record or {}).get('depth_camera')
            device.camera_fields = camera_info_fields(pixels.shape[1], pixels.shape[0],
                                                      intrinsics)
            problems = intrinsics_problems(intrinsics, pixels.shape[1], pixels.shape[0])
            if problems:  # once per record: the fields are kept until the size changes
                self.get_logger().warning(
                    "Device {0}: the server's depth_camera record is not usable ({1}); "
                    'CameraInfo carries the default Kinect v2 intrinsics'.format(
                        device.kinect_id, '; '.join(problems)))
        image = fill_image(Image(), pixels, frame_id, stamp_ns)
        info = fill_camera_info(CameraInfo(), device.camera_fields, frame_id, stamp_ns)
        device.image_pub.publish(image)
        device.info_pub.publish(info)
        device.published += 1

    def _publish_failed(self, device, err):
        now = time.monotonic()
        device.publish_failures += 1
        device.failed_at = now
        device.last_error = '{0}: {1}'.format(type(err).__name__, err)
        if device.failure_logged_at is None or now - device.failure_logged_at > 5.0:
            device.failure_logged_at = now
            self.get_logger().error('Could not publish a frame of {0} ({1} failures so '
                                    'far): {2}'.format(device.kinect_id,
                                                       device.publish_failures,
                                                       device.last_error))

    # --- figures (executor thread) ---------------------------------------------------

    def figures(self, period):
        """Return ``{device id: dict}`` of rate, latency, counters and health over *period* s.

        Rate, latency and drops are the library's (the connection's per-device
        :py:class:`~streamkinect2.client.FrameStats`); ``published`` is the node's.
        """
        connection = self._connection
        stats_by_id = connection.stats if connection is not None else {}
        now = time.monotonic()
        result = {}
        with self._lock:
            devices = list(self._devices.values())
        for device in devices:
            stats = stats_by_id.get(device.kinect_id)
            streaming = device.streaming and stats is not None
            result[device.kinect_id] = {
                'name': device.name,
                'streaming': streaming,
                'stalled': bool(stats is not None and stats.stalled),
                'rate': stats.rate(period) if stats is not None else 0.0,
                'latency_p50_ms': (stats.latency_percentile(0.5, period) * 1e3
                                   if stats is not None else float('nan')),
                'latency_p99_ms': (stats.latency_percentile(0.99, period) * 1e3
                                   if stats is not None else float('nan')),
                'received': stats.received if stats is not None else 0,
                'invalid': stats.invalid if stats is not None else 0,
                'published': device.published,
                'dropped': stats.dropped if stats is not None else 0,
                'publish_failing': device.failed_at is not None
                and now - device.failed_at <= period,
                'last_error': device.last_error,
            }
        return result

    @property
    def connected_server(self):
        """Name of the server connected to, or None."""
        connection = self._connection
        return connection.server_name if connection is not None else None

    def _log_figures(self):
        period = min(self.params['log_period'], STATS_WINDOW)
        server = self.connected_server
        if server is None:
            self.get_logger().info('No server connected')
            return
        for kinect_id, fig in sorted(self.figures(period).items()):
            self.get_logger().info(
                '{0}: {1:.1f} Images/s, latency p50 {2:.1f} ms p99 {3:.1f} ms, '
                '{4} published, {5} dropped{6}'.format(
                    kinect_id, fig['rate'], fig['latency_p50_ms'], fig['latency_p99_ms'],
                    fig['published'], fig['dropped'],
                    ', STALLED' if fig['stalled'] else ''))

    @staticmethod
    def _device_level(fig, connected):
        """Return ``(level, message)`` of a device's diagnostic status."""
        if not connected or not fig['streaming']:
            return DiagnosticStatus.ERROR, 'not streaming'
        if fig['stalled'] or fig['rate'] == 0:
            return DiagnosticStatus.WARN, 'no frames while the server answers'
        if fig['publish_failing']:
            return DiagnosticStatus.WARN, 'frames received but not published: {0}'.format(
                fig['last_error'])
        return DiagnosticStatus.OK, 'streaming'

    def _publish_diagnostics(self):
        period = min(self.params['diagnostics_period'], STATS_WINDOW)
        server = self.connected_server
        connection = self._connection
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        status = DiagnosticStatus(
            name='{0}: connection'.format(self.get_name()),
            hardware_id=str((connection.endpoint if connection is not None else None) or ''))
        if server is None:
            status.level = DiagnosticStatus.ERROR
            status.message = 'no server connected'
        else:
            status.level = DiagnosticStatus.OK
            status.message = 'connected to {0}'.format(server)
        msg.status.append(status)
        for kinect_id, fig in sorted(self.figures(period).items()):
            status = DiagnosticStatus(name='{0}: {1}'.format(self.get_name(), kinect_id),
                                      hardware_id=kinect_id)
            status.level, status.message = self._device_level(fig, server is not None)
            status.values = [
                KeyValue(key='frame_rate', value='{0:.2f}'.format(fig['rate'])),
                KeyValue(key='latency_p50_ms', value='{0:.2f}'.format(fig['latency_p50_ms'])),
                KeyValue(key='latency_p99_ms', value='{0:.2f}'.format(fig['latency_p99_ms'])),
                KeyValue(key='received', value=str(fig['received'])),
                KeyValue(key='published', value=str(fig['published'])),
                KeyValue(key='dropped', value=str(fig['dropped'])),
                KeyValue(key='invalid', value=str(fig['invalid'])),
            ]
            msg.status.append(status)
        self._diag_pub.publish(msg)

    # --- shutdown --------------------------------------------------------------------

    def stop_on_loop(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            for name in ServerConnection.SIGNALS:
                getattr(ServerConnection, name).disconnect(getattr(self, '_' + name),
                                                           sender=connection)
            connection.stop()
        with self._lock:
            for device in self._devices.values():
                device.streaming = False


def main(args=None):
    """Run the client node until shutdown; return the exit status."""
    return run_node(ClientNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
