"""ROS 2 node ``streamkinect2_client``: publish a streamkinect2 server's streams.

The node connects to the server given by ``server_endpoint``, or discovers one over
Zeroconf by ``server_name`` (the first seen if empty), enables the streams chosen by
``streams`` (default: every stream the server offers: depth, IR, colour) for every device
(or those in ``devices``) and publishes each device under its own namespace::

    <ns>/<device>/depth/image_raw               sensor_msgs/Image, 16UC1, millimetres
    <ns>/<device>/depth/image_raw/compressedDepth
                                                sensor_msgs/CompressedImage, lossless
    <ns>/<device>/depth/camera_info             sensor_msgs/CameraInfo
    <ns>/<device>/ir/image_raw                  sensor_msgs/Image, 16UC1, amplitude
    <ns>/<device>/ir/camera_info                sensor_msgs/CameraInfo (the depth camera's)
    <ns>/<device>/color/image_raw               sensor_msgs/Image, bgr8
    <ns>/<device>/color/image_raw/compressed    sensor_msgs/CompressedImage, the wire JPEG
    <ns>/<device>/color/camera_info             sensor_msgs/CameraInfo

where ``<device>`` is the device id made a valid ROS name (:py:func:`sanitise_name`).
Depth is also published, only while subscribed, in image_transport's ``compressedDepth``
format (PNG or RVL, lossless: :py:mod:`.compressed_depth`), the topic ``ros2 bag record``
stores at about a third of the raw size. Colour travels as JPEG: the node forwards the
received bytes to ``compressed`` as they are, and decodes them for ``image_raw`` only
while that topic has a subscriber. Every
message of one capture carries its capture stamp (a colour frame paired with a depth
capture by the server carries that capture's). When the server goes away the node logs
it, publishes nothing, and reconnects by itself (re-discovering the server by name, or
retrying the fixed endpoint). Frame rate, drops and latency per stream are logged every
``log_period`` and published as ``diagnostic_msgs`` on ``/diagnostics``. ``frame_id``,
``color_frame_id`` and ``stamp_source`` can be changed while running.

Every topic's QoS starts from ``qos_reliability`` and ``qos_depth`` (keep last,
volatile); rclpy's ``qos_overrides./<topic>.publisher.<policy>`` parameters (history,
depth, reliability, durability; read-only, declared as a device's publishers are made)
override it per topic. With ``use_sim_time``, ``stamp_source: receive`` stamps with sim
time; capture stamps are the server host's wall clock whatever this node's clock.

With ``kinect2_layout`` the node also publishes iai_kinect2's topics (``<base_name>/sd``,
``qhd``, ``hd``: registered depth and colour, point clouds, static TF), computed here
while subscribed: :py:mod:`.kinect2_layout`. ``calib_path`` and ``camera_info_url`` give
calibration files for registration and for every CameraInfo.

The streamkinect2 client runs on a tornado IOLoop thread, which also publishes the
Images; the rclpy executor keeps the main thread (parameters, timers).
"""
import os
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from rclpy.utilities import get_rmw_implementation_identifier
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from streamkinect2.client import STATS_WINDOW
from streamkinect2.connection import ServerConnection
from streamkinect2.device import STREAMS
from streamkinect2.security import CurveClientConfig
from tornado.ioloop import PeriodicCallback

from .compressed_depth import CODECS, fill_compressed_depth_image, TRANSPORT
from .conversions import (camera_info_fields, DEFAULT_COLOR_INTRINSICS,
                          DEFAULT_DEPTH_INTRINSICS, fill_camera_info, fill_compressed_image,
                          fill_image, frame_id_for, intrinsics_problems, sanitise_name)
from .demo import config_path
from .kinect2_layout import CalibrationSources, Kinect2Layout, LAYOUT_PARAMETERS
from .params import declare_all, ParamSpec
from .rosutil import (check_qos_overrides, create_overridable_publisher, LogThrottle,
                      LoopNode, run_node)

__all__ = ['FASTDDS_PROFILE', 'NODE_NAME', 'PARAMETERS', 'STREAMS', 'ClientNode',
           'large_data_profile_env', 'main', 'offered_streams']

NODE_NAME = 'streamkinect2_client'
STAMP_SOURCES = ('capture', 'capture_corrected', 'receive')
RELIABILITIES = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
                 'reliable': ReliabilityPolicy.RELIABLE}
#: Per stream: the device record key of its camera's intrinsics and their defaults (IR
#: comes from the depth camera), and the parameter holding its frame id template.
_CAMERAS = {'depth': ('depth_camera', DEFAULT_DEPTH_INTRINSICS, 'frame_id'),
            'ir': ('depth_camera', DEFAULT_DEPTH_INTRINSICS, 'frame_id'),
            'color': ('color_camera', DEFAULT_COLOR_INTRINSICS, 'color_frame_id')}
#: Parameters that can be changed while the node runs: plain strings read on each frame.
_RUNTIME = ('frame_id', 'color_frame_id', 'stamp_source')
PARAMETERS = (
    ParamSpec('server_endpoint', '', 'Control endpoint of the server (tcp://host:port); '
              'empty: discover the server over Zeroconf', True),
    ParamSpec('server_name', '', 'Name of the server to discover; empty: the first one '
              'seen (ignored when server_endpoint is set)', True),
    ParamSpec('discovery_address', '', 'IPv4 address of the interface to discover servers '
              'on; empty: every interface', True),
    ParamSpec('devices', [], 'Ids (or sanitised names) of the devices to publish; unset or '
              'empty: all', True),
    ParamSpec('streams', [], 'Streams to publish, of depth, ir and color (e.g. [depth]); '
              'unset or empty: every stream the server offers', True, choices=STREAMS),
    ParamSpec('frame_id', 'kinect2_{device}_depth_optical_frame', 'Optical frame id of the '
              'depth and IR Images and CameraInfos; {device} is replaced by the sanitised '
              'device id (REP 103/105). Can be changed at runtime', False),
    ParamSpec('color_frame_id', 'kinect2_{device}_rgb_optical_frame', 'Optical frame id of '
              'the colour Images, CompressedImages and CameraInfos; {device} as in frame_id. '
              'Can be changed at runtime', False),
    ParamSpec('stamp_source', 'capture', 'Header stamp: "capture" (host capture time '
              'carried by the frame, on the server\'s clock), "capture_corrected" (that '
              "time moved onto this host's clock by the estimated offset between the two "
              'clocks; the receive time until there is an estimate) or "receive" (time the '
              "client received it, on the node's clock: sim time with use_sim_time, when "
              'the capture stamps stay wall time). Can be changed at runtime', False,
              choices=STAMP_SOURCES),
    ParamSpec('compressed_depth_format', 'png', 'Codec of depth/image_raw/compressedDepth '
              '(image_transport compressed_depth): png (every distribution decodes it) or '
              'rvl (smaller and cheaper; jazzy and later decode it)', True, choices=CODECS),
    ParamSpec('compressed_depth_png_level', -1, 'zlib level 0-9 of the compressedDepth PNG '
              "(as the plugin's png_level); -1: Huffman-only with the Paeth filter, about "
              'as small as level 6 for less than the cost of level 1', True, (-1, 9)),
    ParamSpec('qos_reliability', 'best_effort', 'Publisher reliability: best_effort (as '
              'the sensor-data profile) or reliable; the default of every topic, which '
              'qos_overrides./<topic>.publisher.reliability overrides', True,
              choices=tuple(RELIABILITIES)),
    ParamSpec('qos_depth', 5, 'Publisher history depth (keep last); the default of every '
              'topic, which qos_overrides./<topic>.publisher.depth overrides', True,
              (1, 1000)),
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
) + LAYOUT_PARAMETERS
#: Seconds between two checks of the kinect2 layout's subscribers (streams it needs).
_LAYOUT_POLL = 0.2
#: The Fast DDS profile for large Images, in config/ (docs/ros.md, "Large images and DDS").
FASTDDS_PROFILE = 'fastdds_large_data.xml'
#: Variables by which a user chooses Fast DDS's configuration: the node then keeps it.
_FASTDDS_CHOICES = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                    'FASTDDS_BUILTIN_TRANSPORTS', 'SKIP_DEFAULT_XML_FILE')
#: Profile files Fast DDS (3, 2) loads from the working directory when no variable is set.
_FASTDDS_CWD_PROFILES = ('DEFAULT_FASTDDS_PROFILES.xml', 'DEFAULT_FASTRTPS_PROFILES.xml')
#: Distributions whose Fast DDS 2 reads FASTRTPS_DEFAULT_PROFILES_FILE (3 deprecates it).
_FASTRTPS_DISTROS = ('humble', 'iron', 'jazzy')


def offered_streams(record):
    """Return the streams a device record from ``me`` offers (those with an endpoint).

    A record without endpoints (or not a dict) offers depth alone, as a 2014 server's.
    """
    endpoints = record.get('endpoints') if isinstance(record, dict) else None
    if not isinstance(endpoints, dict):
        return ('depth',)
    return tuple(stream for stream in STREAMS if stream in endpoints)


class _Stream(object):
    """The publishers and counters of one stream of a published device."""

    def __init__(self, node, name, stream):
        """Create the publishers of *stream* for the device named *name*.

        Each starts from ``node.qos`` (qos_reliability, qos_depth), overridden by the
        topic's ``qos_overrides./<topic>.publisher.*`` parameters.
        """
        self.stream = stream
        self.image_pub = create_overridable_publisher(
            node, Image, '{0}/{1}/image_raw'.format(name, stream), node.qos)
        self.info_pub = create_overridable_publisher(
            node, CameraInfo, '{0}/{1}/camera_info'.format(name, stream), node.qos)
        self.compressed_pub = None
        self.compressed_depth_pub = None
        if stream == 'depth':  # lossless, for bags: only encoded while subscribed
            self.compressed_depth_pub = create_overridable_publisher(
                node, CompressedImage,
                '{0}/{1}/image_raw/{2}'.format(name, stream, TRANSPORT), node.qos)
        if stream == 'color':
            self.compressed_pub = create_overridable_publisher(
                node, CompressedImage, '{0}/{1}/image_raw/compressed'.format(name, stream),
                node.qos)
        self.camera_fields = None
        self.received = 0          # frames of the stream the node was handed
        self.published = 0         # of those, published on every topic that wanted them
        self.dropped_in_node = 0   # of those, not (device not streaming, publishing failed)
        self.decoded = 0           # colour frames decoded for image_raw
        self.encoded = 0           # depth frames encoded for compressedDepth
        self.publish_failures = 0
        self.failed_at = None      # monotonic time of the last publishing failure
        self.last_error = None
        self.failure_log = LogThrottle(5.0)

    @property
    def publishers(self):
        """Return the publishers of the stream."""
        return [pub for pub in (self.image_pub, self.info_pub, self.compressed_pub,
                                self.compressed_depth_pub) if pub is not None]


class _Device(object):
    """What the node knows about one published device (IOLoop thread writes)."""

    def __init__(self, kinect_id):
        self.kinect_id = kinect_id
        self.name = sanitise_name(kinect_id)
        self.streams = {}          # stream name -> _Stream, those published
        self.record = None
        self.streaming = False
        self.enabled = set()       # streams enabled on the current client


class ClientNode(LoopNode):
    """The ``streamkinect2_client`` node. Call :py:meth:`close` before destroying it.

    Connection, reconnection and rediscovery are the library's
    :py:class:`~streamkinect2.connection.ServerConnection`; the node maps its devices'
    streams to publishers, and reports the library's per-stream stats.
    """

    def __init__(self, **kwargs):
        """Declare the parameters, create the timers and start looking for the server."""
        super().__init__(NODE_NAME, **kwargs)
        self._connection = None
        self._lock = threading.Lock()
        self._devices = {}
        # Values out of range or not allowed are refused here; so are bad QoS overrides,
        # which rclpy reads only as each device's publishers are made.
        self.params = params = declare_all(self, PARAMETERS, on_set=self._on_set_parameters)
        self._check(params)
        check_qos_overrides(self.given_parameters())
        self._curve = None
        if params['curve_secret_file'] or params['curve_server_key']:
            if not (params['curve_secret_file'] and params['curve_server_key']):
                raise ValueError('curve_secret_file and curve_server_key go together')
            self._curve = CurveClientConfig(params['curve_secret_file'],
                                            params['curve_server_key'])
        self.frame_id = params['frame_id']
        self.color_frame_id = params['color_frame_id']
        self.stamp_source = params['stamp_source']
        self._uncorrected_client = None  # the client last warned about (capture_corrected)
        self.compressed_depth_format = params['compressed_depth_format']
        level = params['compressed_depth_png_level']
        self.compressed_depth_png_level = None if level < 0 else level
        self._wanted = set(params['devices'])
        # The user's calibration files, read now: a bad one stops the node here.
        self._calibrations = CalibrationSources(params['calib_path'],
                                                params['camera_info_url'])
        self._streams = tuple(stream for stream in STREAMS if stream in params['streams'])
        self.qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=params['qos_depth'],
                              reliability=RELIABILITIES[params['qos_reliability']],
                              durability=DurabilityPolicy.VOLATILE)
        self._layout = None
        self._layout_poll = None
        if params['kinect2_layout']:
            self._layout = Kinect2Layout(self, params, self._calibrations, self.qos)
        self._diag_pub = None
        if params['diagnostics_period'] > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self.create_timer(params['diagnostics_period'], self._publish_diagnostics)
        if params['log_period'] > 0:
            self.create_timer(params['log_period'], self._log_figures)
        self._log_middleware()
        try:
            self.start_loop('streamkinect2-client-ioloop')
            self.loop.call(self._start_on_loop)
        except BaseException:
            self.close()
            raise

    def _log_middleware(self):
        """Log the Fast DDS profile in use: without one, large Images can get lost."""
        if not get_rmw_implementation_identifier().startswith('rmw_fastrtps'):
            return
        profile = (os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE')
                   or os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE'))
        if profile:
            self.get_logger().info('Fast DDS profile: {0}'.format(profile))
        else:
            self.get_logger().info("Fast DDS profile: none (Fast DDS's defaults: its 512 KiB "
                                   'shared memory can lose Images to busy subscribers; see '
                                   'config/{0})'.format(FASTDDS_PROFILE))

    # --- parameters ------------------------------------------------------------------

    @staticmethod
    def _check(params):
        """Check what descriptors cannot say (ranges and allowed values: declare_all)."""
        problems = []
        for name in ('frame_id', 'color_frame_id'):
            if not params[name]:
                problems.append('{0} must not be empty'.format(name))
        endpoint = params['server_endpoint']
        if endpoint and not endpoint.startswith('tcp://'):
            problems.append('server_endpoint must look like tcp://host:port')
        if problems:
            raise ValueError('; '.join(problems))

    def _on_set_parameters(self, parameters):
        # Called by declare_all's check, once the values are allowed (stamp_source's).
        changes = {}
        for parameter in parameters:
            if parameter.name in ('frame_id', 'color_frame_id'):
                if not isinstance(parameter.value, str) or not parameter.value:
                    return SetParametersResult(
                        successful=False,
                        reason='{0} must be a non-empty string'.format(parameter.name))
            elif parameter.name != 'stamp_source':
                continue
            changes[parameter.name] = parameter.value
        # Plain attribute stores: the IOLoop thread reads them on the next frame.
        for name, value in changes.items():
            assert name in _RUNTIME
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
        if self._layout is not None:
            self._layout_poll = PeriodicCallback(self._refresh_streams, _LAYOUT_POLL * 1e3)
            self._layout_poll.start()

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

    def _chosen_streams(self, kinect_id, record):
        """Return the streams to publish of a device whose ``me`` record is *record*."""
        offered = offered_streams(record)
        if not self._streams:
            return offered
        chosen = tuple(stream for stream in self._streams if stream in offered)
        missing = [stream for stream in self._streams if stream not in offered]
        if missing:
            self.get_logger().warning('Device {0} does not offer {1} (it offers {2})'.format(
                kinect_id, ', '.join(missing), ', '.join(offered)))
        return chosen

    def _on_add_kinect(self, connection, kinect_id):
        if self._wanted and not self._wanted & {kinect_id, sanitise_name(kinect_id)}:
            self.get_logger().info('Not publishing device {0} (not in devices)'.format(
                kinect_id))
            return
        record = connection.devices.get(kinect_id)
        streams = self._chosen_streams(kinect_id, record)
        if not streams:
            self.get_logger().error('Not publishing device {0}: it offers none of the '
                                    'streams asked for'.format(kinect_id))
            return
        device = self._devices.get(kinect_id)
        if device is None:
            device = self._add_device(kinect_id)
            if device is None:
                return
        device.record = record
        self._set_streams(device, streams)
        for stream in list(device.streams):
            try:
                getattr(connection, 'enable_{0}_frames'.format(stream))(kinect_id)
            except ValueError as err:
                self.get_logger().error('Not publishing {0} of device {1}: {2}'.format(
                    stream, kinect_id, err))
                self._set_streams(device, [s for s in device.streams if s != stream])
        if not device.streams:
            self._remove_device(kinect_id)
            return
        device.enabled = set(device.streams)
        if self._layout is not None:
            try:
                self._layout.add_device(kinect_id, record, 'color' in offered_streams(record))
            except Exception as err:  # the device's own topics are published all the same
                self.get_logger().error('Not publishing the kinect2 layout of device {0}: '
                                        '{1}: {2}'.format(kinect_id, type(err).__name__, err))
            self._refresh_device_streams(device)
        device.streaming = True
        self.get_logger().info('Publishing device {0} under {1}: {2}'.format(
            kinect_id, self.resolve_topic_name(device.name), ', '.join(device.streams)))

    def _set_streams(self, device, streams):
        """Give *device* the publishers of *streams* exactly; camera fields start anew."""
        for stream in [s for s in device.streams if s not in streams]:
            with self._lock:
                gone = device.streams.pop(stream)
            for pub in gone.publishers:
                self.destroy_publisher(pub)
        added = {stream: _Stream(self, device.name, stream)
                 for stream in streams if stream not in device.streams}
        with self._lock:
            device.streams.update(added)
            # In STREAMS order, whatever the order of the changes.
            device.streams = {stream: device.streams[stream]
                              for stream in STREAMS if stream in device.streams}
        for published in device.streams.values():
            published.camera_fields = None  # the record may have changed

    def _add_device(self, kinect_id):
        """Return a new device to publish (None if it cannot be published)."""
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
        device = _Device(kinect_id)
        with self._lock:
            self._devices[kinect_id] = device
        return device

    def _remove_device(self, kinect_id):
        """Forget a device and release the publishers of all its streams."""
        with self._lock:
            device = self._devices.pop(kinect_id, None)
        if self._layout is not None:
            self._layout.remove_device(kinect_id)
        if device is not None:
            for published in device.streams.values():
                for pub in published.publishers:
                    self.destroy_publisher(pub)

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
        self._on_frame(kinect_id, 'depth', depth_frame)

    def _on_ir_frame(self, connection, ir_frame, kinect_id):
        self._on_frame(kinect_id, 'ir', ir_frame)

    def _on_color_frame(self, connection, color_frame, kinect_id):
        self._on_frame(kinect_id, 'color', color_frame)

    def _refresh_streams(self):
        """Enable the streams the kinect2 layout's subscribers need, drop the others."""
        for device in list(self._devices.values()):
            if device.streaming:
                self._refresh_device_streams(device)

    def _refresh_device_streams(self, device):
        """Receive the device's own streams and those its layout topics need now."""
        needed = set(device.streams) | self._layout.needed_streams(device.kinect_id)
        for stream in offered_streams(device.record):
            if (stream in needed) == (stream in device.enabled):
                continue
            action = 'enable' if stream in needed else 'disable'
            try:
                getattr(self._connection, '{0}_{1}_frames'.format(action, stream))(
                    device.kinect_id)
            except ValueError as err:  # not connected (any more): on_add_kinect redoes it
                self.get_logger().debug('Could not {0} {1} of {2}: {3}'.format(
                    action, stream, device.kinect_id, err))
                continue
            (device.enabled.add if stream in needed else device.enabled.discard)(stream)

    def _stamp_ns(self, frame):
        """Return the header stamp of *frame*'s messages (``stamp_source``).

        ``capture_corrected`` moves the capture stamp onto this host's clock with the
        library's estimate of the server's clock offset; without one yet (or from a
        server that does not report its clock) it is the receive time, with a warning
        once per connection.

        ``receive`` is the node's clock (sim time with ``use_sim_time``); the capture
        stamps, corrected or not, and their stand-in, are wall time.
        """
        source = self.stamp_source
        if source == 'capture':
            return frame.timestamp_ns
        if source == 'receive':
            return self.get_clock().now().nanoseconds
        if source == 'capture_corrected':
            client = self._connection.client if self._connection is not None else None
            local = client.to_local_ns(frame.timestamp_ns) if client is not None else None
            if local is not None:
                return local
            if client is not None and client is not self._uncorrected_client:
                self._uncorrected_client = client
                self.get_logger().warning(
                    'stamp_source capture_corrected: no estimate of the clock offset of '
                    'server {0!r} yet{1}; stamping with the receive time until there is '
                    'one'.format(client.server_name, '' if client.clock.supported is not False
                                 else ' (it does not report its clock)'))
        return time.time_ns()

    def _on_frame(self, kinect_id, stream, frame):
        device = self._devices.get(kinect_id)
        if device is None:
            return
        published = device.streams.get(stream)
        if published is not None:
            published.received += 1
        if not device.streaming:
            if published is not None:
                published.dropped_in_node += 1
            return
        if self._layout is not None:
            try:
                self._layout.on_frame(kinect_id, stream, frame, self._stamp_ns(frame))
            except Exception as err:
                if not self.context.ok():
                    return
                self.get_logger().error('kinect2 layout: could not take a {0} frame of {1}: '
                                        '{2}: {3}'.format(stream, kinect_id,
                                                          type(err).__name__, err))
        if published is None:
            return
        count = published.published
        try:
            self._publish(device, published, frame)
        except Exception as err:
            if not self.context.ok():  # shutting down: nothing to publish to
                return
            if published.published == count:
                published.dropped_in_node += 1
            self._publish_failed(device, published, err)

    def _camera_fields(self, device, published, width, height):
        """Return the CameraInfo fields of *published* for a *width* x *height* image."""
        fields = published.camera_fields
        if fields is not None and fields['width'] == width and fields['height'] == height:
            return fields
        first = fields is None  # since the record came (a new size: not a new record)
        fields = self._calibrations.camera_fields(device.kinect_id, published.stream, width,
                                                  height)
        if fields is not None:  # the user's calibration (calib_path, camera_info_url)
            published.camera_fields = fields
            return fields
        key, defaults, _ = _CAMERAS[published.stream]
        intrinsics = (device.record or {}).get(key)
        fields = camera_info_fields(width, height, intrinsics, defaults)
        problems = intrinsics_problems(intrinsics, width, height, defaults)
        if problems and first:  # once per record, whatever sizes the frames come in
            self.get_logger().warning(
                "Device {0}: the server's {1} record is not usable ({2}); {3} CameraInfo "
                'carries the default Kinect v2 intrinsics'.format(
                    device.kinect_id, key, '; '.join(problems), published.stream))
        published.camera_fields = fields
        return fields

    def _publish(self, device, published, frame):
        """Publish *frame* of one stream of *device* on that stream's topics."""
        frame_id = frame_id_for(getattr(self, _CAMERAS[published.stream][2]), device.name)
        stamp_ns = self._stamp_ns(frame)
        width, height = frame.shape
        info = fill_camera_info(CameraInfo(), self._camera_fields(device, published, width,
                                                                  height), frame_id, stamp_ns)
        if published.compressed_pub is None:  # depth, IR: 16UC1
            published.image_pub.publish(fill_image(Image(), frame.array, frame_id, stamp_ns))
            published.info_pub.publish(info)
            published.published += 1
            pub = published.compressed_depth_pub
            if pub is not None and pub.get_subscription_count() > 0:
                pub.publish(fill_compressed_depth_image(
                    CompressedImage, frame.array, frame_id, stamp_ns,
                    self.compressed_depth_format, self.compressed_depth_png_level))
                published.encoded += 1
            return
        if frame.jpeg is not None:  # the wire bytes, as they are
            published.compressed_pub.publish(fill_compressed_image(
                CompressedImage(), frame.jpeg, frame_id, stamp_ns))
        published.info_pub.publish(info)
        if published.image_pub.get_subscription_count() > 0:
            # Decoding only for a subscriber. The client checked the JPEG's header and
            # end; damage in between shows here (ValueError), and only this Image is lost.
            pixels = frame.array
            published.decoded += 1
            if (pixels.shape[1], pixels.shape[0]) != (width, height):
                raise ValueError('colour frame decodes to {0}x{1}, not the {2}x{3} it '
                                 'claims'.format(pixels.shape[1], pixels.shape[0], width,
                                                 height))
            published.image_pub.publish(fill_image(Image(), pixels, frame_id, stamp_ns))
        published.published += 1

    def _publish_failed(self, device, published, err):
        now = time.monotonic()
        published.publish_failures += 1
        published.failed_at = now
        published.last_error = '{0}: {1}'.format(type(err).__name__, err)
        if published.failure_log.due():
            self.get_logger().error('Could not publish a {0} frame of {1} ({2} failures so '
                                    'far): {3}'.format(published.stream, device.kinect_id,
                                                       published.publish_failures,
                                                       published.last_error))

    # --- figures (executor thread) ---------------------------------------------------

    @staticmethod
    def _stream_stats(connection, kinect_id, stream):
        """Return the library's FrameStats of one stream of a device, or None."""
        return connection.stream_stats(kinect_id, stream) if connection is not None else None

    def figures(self, period):
        """Return ``{device id: dict}`` of health and per-stream figures over *period* s.

        Each device's dict has ``name``, ``streaming``, ``publish_failing``,
        ``last_error`` and ``streams``: ``{stream: dict}`` of rate, latency and counters.
        Rate, latency, invalid and ``dropped`` (lost between the server and this node:
        missing sequence numbers) are the library's (the connection's per-stream
        :py:class:`~streamkinect2.client.FrameStats`). The node's, since it started:
        ``received`` (frames it was handed), of which ``published`` (on every topic that
        wanted them) and ``dropped_in_node`` (not: the device was not streaming, or
        publishing failed); and ``decoded`` (colour), ``encoded`` (compressedDepth).
        """
        connection = self._connection
        now = time.monotonic()
        result = {}
        with self._lock:
            devices = [(device, dict(device.streams)) for device in self._devices.values()]
        for device, streams in devices:
            figures = {}
            for stream, published in streams.items():
                stats = self._stream_stats(connection, device.kinect_id, stream)
                figures[stream] = {
                    'receiving': stats is not None,
                    'stalled': bool(stats is not None and stats.stalled),
                    'rate': stats.rate(period) if stats is not None else 0.0,
                    'latency_p50_ms': (stats.latency_percentile(0.5, period) * 1e3
                                       if stats is not None else float('nan')),
                    'latency_p99_ms': (stats.latency_percentile(0.99, period) * 1e3
                                       if stats is not None else float('nan')),
                    'received': published.received,
                    'invalid': stats.invalid if stats is not None else 0,
                    'dropped': stats.dropped if stats is not None else 0,
                    'dropped_in_node': published.dropped_in_node,
                    'published': published.published,
                    'decoded': published.decoded,
                    'encoded': published.encoded,
                    'publish_failing': published.failed_at is not None
                    and now - published.failed_at <= period,
                    'last_error': published.last_error,
                }
            failing = [fig for fig in figures.values() if fig['publish_failing']]
            result[device.kinect_id] = {
                'name': device.name,
                'streaming': device.streaming and bool(figures)
                and all(fig['receiving'] for fig in figures.values()),
                'publish_failing': bool(failing),
                'last_error': failing[0]['last_error'] if failing else None,
                'streams': figures,
                'kinect2': self._layout_figures(device),
            }
        return result

    def _layout_figures(self, device):
        """Return the kinect2 layout's figures of *device* and the streams received."""
        figures = self._layout.figures(device.kinect_id) if self._layout is not None else None
        if figures is not None:
            figures['receiving'] = ','.join(s for s in STREAMS if s in device.enabled)
        return figures

    @property
    def connected_server(self):
        """Name of the server connected to, or None."""
        connection = self._connection
        return connection.server_name if connection is not None else None

    def clock_figures(self):
        """Return the library's estimate of the server's clock offset, or None.

        A dict (:py:meth:`streamkinect2.clock.ClockOffsetEstimator.as_dict`: offset,
        round trip and uncertainty in ns, samples, ...) while connected.
        """
        connection = self._connection
        client = connection.client if connection is not None else None
        return client.clock.as_dict() if client is not None else None

    @staticmethod
    def _clock_values(clock):
        """Return the /diagnostics KeyValues of the clock estimate *clock* (a dict)."""
        def ms(key):
            value = clock[key]
            return 'unknown' if value is None else '{0:.3f}'.format(value * 1e-6)
        state = {True: 'estimated', False: 'not reported by the server'}.get(
            clock['supported'], 'estimating')
        return [KeyValue(key=key, value=value) for key, value in (
            ('clock', state), ('clock_offset_ms', ms('offset_ns')),
            ('clock_round_trip_ms', ms('round_trip_ns')),
            ('clock_uncertainty_ms', ms('uncertainty_ns')),
            ('clock_samples', str(clock['samples'])),
            ('clock_rejected', str(clock['rejected'])))]

    def _log_figures(self):
        period = min(self.params['log_period'], STATS_WINDOW)
        server = self.connected_server
        if server is None:
            self.get_logger().info('No server connected')
            return
        clock = self.clock_figures()
        if clock is not None and clock['offset_ns'] is not None:
            self.get_logger().info(
                "Server {0!r} clock: {1:+.3f} ms from this host's, round trip {2:.3f} ms, "
                'uncertainty {3:.3f} ms ({4} samples, {5} rejected)'.format(
                    server, clock['offset_ns'] * 1e-6, clock['round_trip_ns'] * 1e-6,
                    clock['uncertainty_ns'] * 1e-6, clock['samples'], clock['rejected']))
        elif clock is not None:
            self.get_logger().info('Server {0!r} clock: no estimate{1}'.format(
                server, ' (it does not report its clock)' if clock['supported'] is False
                else ''))
        for kinect_id, device in sorted(self.figures(period).items()):
            for stream, fig in device['streams'].items():
                self.get_logger().info(
                    '{0} {1}: {2:.1f} Images/s, latency p50 {3:.1f} ms p99 {4:.1f} ms, '
                    '{5} received ({6} lost before, {7} invalid), {8} dropped in the node, '
                    '{9} published{10}'.format(
                        kinect_id, stream, fig['rate'], fig['latency_p50_ms'],
                        fig['latency_p99_ms'], fig['received'], fig['dropped'],
                        fig['invalid'], fig['dropped_in_node'], fig['published'],
                        ', STALLED' if fig['stalled'] else ''))
            layout = device['kinect2']
            if layout is not None:
                self.get_logger().info(
                    '{0} kinect2 layout under {1}: {2} captures worked on, {3} skipped (worker '
                    'busy), {4} colour frames without their depth, {5} refused (not the '
                    "calibration's size or its half), {6} failed; receiving {7}".format(
                        kinect_id, layout['base'], layout['jobs'], layout['skipped'],
                        layout['unmatched_color'], layout['color_refused'],
                        layout['failures'], layout['receiving']))

    @staticmethod
    def _device_level(device, connected):
        """Return ``(level, message)`` of a device's diagnostic status."""
        if not connected or not device['streaming']:
            return DiagnosticStatus.ERROR, 'not streaming'
        silent = [stream for stream, fig in device['streams'].items()
                  if fig['stalled'] or fig['rate'] == 0]
        if silent:
            return DiagnosticStatus.WARN, 'no {0} frames while the server answers'.format(
                ', '.join(silent))
        if device['publish_failing']:
            return DiagnosticStatus.WARN, 'frames received but not published: {0}'.format(
                device['last_error'])
        return DiagnosticStatus.OK, 'streaming {0}'.format(', '.join(device['streams']))

    @staticmethod
    def _stream_values(stream, fig):
        """Return the KeyValues of one stream: depth's keys bare, the others' prefixed."""
        prefix = '' if stream == 'depth' else stream + '_'
        values = [
            ('frame_rate', '{0:.2f}'.format(fig['rate'])),
            ('latency_p50_ms', '{0:.2f}'.format(fig['latency_p50_ms'])),
            ('latency_p99_ms', '{0:.2f}'.format(fig['latency_p99_ms'])),
            ('received', str(fig['received'])),
            ('dropped', str(fig['dropped'])),
            ('dropped_in_node', str(fig['dropped_in_node'])),
            ('published', str(fig['published'])),
            ('invalid', str(fig['invalid'])),
        ]
        if stream == 'color':
            values.append(('decoded', str(fig['decoded'])))
        if stream == 'depth':  # frames encoded for compressedDepth
            values.append(('compressed_depth', str(fig['encoded'])))
        return [KeyValue(key=prefix + key, value=value) for key, value in values]

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
            clock = self.clock_figures()
            if clock is not None:
                status.values = self._clock_values(clock)
                if self.stamp_source == 'capture_corrected' and clock['supported'] is False:
                    status.level = DiagnosticStatus.WARN
                    status.message += (': it does not report its clock, stamps are receive '
                                       'times')
        msg.status.append(status)
        for kinect_id, device in sorted(self.figures(period).items()):
            status = DiagnosticStatus(name='{0}: {1}'.format(self.get_name(), kinect_id),
                                      hardware_id=kinect_id)
            status.level, status.message = self._device_level(device, server is not None)
            status.values = [value for stream, fig in device['streams'].items()
                             for value in self._stream_values(stream, fig)]
            if device['kinect2'] is not None:  # the layout's work: kinect2_<figure>
                status.values += [KeyValue(key='kinect2_' + key.replace('/', '_'),
                                           value=str(value))
                                  for key, value in device['kinect2'].items()]
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
        if self._layout_poll is not None:
            self._layout_poll.stop()
            self._layout_poll = None
        if self._layout is not None:
            self._layout.close()  # the workers stop before the publishers go


def large_data_profile_env(environ=None, cwd=None):
    """Return the variables giving Fast DDS the shipped profile for large Images.

    ``{'FASTDDS_DEFAULT_PROFILES_FILE': <config/fastdds_large_data.xml>}``
    (``FASTRTPS_DEFAULT_PROFILES_FILE`` for the Fast DDS 2 of humble, iron and jazzy), or
    ``{}`` when *environ* (default: this process's) already chooses Fast DDS's
    configuration (a profile file, ``FASTDDS_BUILTIN_TRANSPORTS``,
    ``SKIP_DEFAULT_XML_FILE``) or the working directory *cwd* holds the profile file
    Fast DDS loads by itself. Why: docs/ros.md, "Large images and DDS".
    """
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    if any(name in environ for name in _FASTDDS_CHOICES) or any(
            os.path.exists(os.path.join(cwd, name)) for name in _FASTDDS_CWD_PROFILES):
        return {}
    try:
        path = config_path(FASTDDS_PROFILE)
    except FileNotFoundError:  # an installation without it: Fast DDS's defaults
        return {}
    variable = ('FASTRTPS_DEFAULT_PROFILES_FILE' if environ.get('ROS_DISTRO') in
                _FASTRTPS_DISTROS else 'FASTDDS_DEFAULT_PROFILES_FILE')
    return {variable: path}


def main(args=None):
    """Run the client node until shutdown; return the exit status.

    Unless Fast DDS is configured otherwise, the node's participant takes the shipped
    profile for large Images (:py:func:`large_data_profile_env`); the node logs which.
    """
    os.environ.update(large_data_profile_env())
    return run_node(ClientNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
