"""ROS 2 node ``streamkinect2_server``: serve Kinect v2 streams over the network.

The node owns the devices (the mock, or a real backend: see :py:mod:`.backends`) and a
:py:class:`streamkinect2.Server`, which compresses their depth and IR frames losslessly
and their colour as JPEG (``color_quality``, ``color_resolution``), and streams those
chosen (``streams``; default all a device offers) to clients over ZeroMQ, announced over
Zeroconf. The library runs on a
tornado IOLoop thread; the rclpy executor keeps the main thread (parameters,
diagnostics). On shutdown (Ctrl-C, SIGTERM, launch shutdown) the server unregisters from
Zeroconf and every socket is closed.

Numeric parameters have ranges, string parameters their allowed values, in their
descriptors (``ros2 param describe``); anything else stops the node at once with one
error naming the parameter and what it allows.
``/diagnostics`` carries one status per device, OK, WARN or ERROR as the server's health
checks find it, its worst stream (a device not running or silent, frames failing to
compress or dropped, flooding subscribers cut off), with the depth counters and, per
stream, ``<stream>.health`` and ``<stream>.<counter>``; each change of health is logged
through the node's logger, with the traceback of a failing frame.
"""
import sys

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from streamkinect2 import EndpointType, Server
from streamkinect2.compress import COLOR_RESOLUTIONS
from streamkinect2.device import STREAMS
from streamkinect2.freenect2_device import PIPELINES
from streamkinect2.security import CurveServerConfig

from .backends import available_backends, create_devices
from .params import declare_all, ParamSpec
from .rosutil import LoopNode, run_node

__all__ = ['NODE_NAME', 'PARAMETERS', 'ServerNode', 'main']

NODE_NAME = 'streamkinect2_server'

PARAMETERS = (
    ParamSpec('server_name', '', 'Human-readable server name, announced over Zeroconf '
              '(at most 60 bytes); empty: "Kinect2 <host> <random>"', True),
    ParamSpec('address', '', 'IPv4 address of the interface to bind and announce on; '
              'empty: the interface holding the default route', True),
    ParamSpec('announce', True, 'Announce the server over Zeroconf (_kinect2._tcp)', True),
    ParamSpec('control_port', 0, 'TCP port of the control endpoint; 0: a free port', True,
              (0, 65535)),
    ParamSpec('device', 'mock', 'Device backend: mock (synthetic frames), or freenect2 (real '
              'Kinect v2 sensors through the optional pylibfreenect2)', True,
              choices=tuple(available_backends())),
    ParamSpec('mock_count', 1, 'device=mock: number of mock devices', True, (1, 64)),
    ParamSpec('mock_fps', 30.0, 'device=mock: frames per second of each mock device', True,
              (0.01, 1000.0)),
    ParamSpec('mock_ids', [], 'device=mock: device ids (at most mock_count); a missing '
              'id is mock<i>, i the device index (the next free number if taken)', True),
    ParamSpec('freenect2_serials', [], 'device=freenect2: serial numbers of the sensors to '
              'serve; unset or empty: every connected sensor', True),
    ParamSpec('freenect2_pipeline', 'auto', 'device=freenect2: libfreenect2 packet pipeline: '
              'auto, cuda, opencl, opengl or cpu; falls back to the next available', True,
              choices=('auto',) + tuple(name for name, _ in PIPELINES)),
    ParamSpec('freenect2_min_depth', 500, 'device=freenect2: nearest depth kept, mm; nearer '
              'is 0 (no reading)', True, (0, 65535)),
    ParamSpec('freenect2_max_depth', 4500, 'device=freenect2: farthest depth kept, mm (at '
              'most 65535); farther is 0 (no reading)', True, (0, 65535)),
    ParamSpec('freenect2_frame_timeout', 2.0, 'device=freenect2: seconds without a frame '
              'after which a sensor counts as unplugged and is removed', True, (0.1, 3600.0)),
    ParamSpec('freenect2_start_timeout', 5.0, 'device=freenect2: seconds from the start of '
              'a sensor to its first frame; none by then: reopen it with the next packet '
              'pipeline', True, (0.1, 3600.0)),
    ParamSpec('streams', [], 'Streams served, of {0}; unset or empty: every stream a device '
              'offers'.format(', '.join(STREAMS)), True, choices=STREAMS),
    ParamSpec('color_quality', 0, 'JPEG quality of the colour stream, 1 (smallest) to 100; '
              '0: 90 at hd, 75 at qhd (depth + qhd colour then stays under 50 Mbit/s)',
              True, (0, 100)),
    ParamSpec('color_resolution', 'hd', 'Colour resolution sent: {0} (hd: 1920 x 1080 as '
              'captured; qhd: halved, 960 x 540, for thin links)'.format(
                  ' or '.join(COLOR_RESOLUTIONS)), True, choices=COLOR_RESOLUTIONS),
    ParamSpec('diagnostics_period', 1.0, 'Seconds between diagnostic_msgs/DiagnosticArray '
              'messages on /diagnostics (each device OK, WARN or ERROR); 0: none', True,
              (0.0, 3600.0)),
    ParamSpec('curve_secret_file', '', "CURVE security: the server's .key_secret file "
              '(made by streamkinect2-keygen); empty: security off', True),
    ParamSpec('curve_allowed_clients', [], 'CURVE security: public keys (40 Z85 characters) '
              'or .key files of the clients admitted; nobody else gets anything', True),
)


_LEVELS = {'OK': DiagnosticStatus.OK, 'WARN': DiagnosticStatus.WARN,
           'ERROR': DiagnosticStatus.ERROR}


class ServerNode(LoopNode):
    """The ``streamkinect2_server`` node. Call :py:meth:`close` before destroying it."""

    def __init__(self, **kwargs):
        """Declare the parameters, open the devices and start serving."""
        super().__init__(NODE_NAME, **kwargs)
        self._server = None
        self._curve = None
        self._devices = []
        try:
            # Values out of range or not allowed are refused here, before anything opens.
            self.params = declare_all(self, PARAMETERS)
            self._start()
        except BaseException:
            self.close()
            raise
        self._diag_pub = None
        period = self.params['diagnostics_period']
        if period > 0:
            self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self.create_timer(period, self._publish_diagnostics)

    def _start(self):
        params = self.params
        options = {name: value for name, value in params.items()
                   if name.startswith(params['device'] + '_')}
        options['streams'] = params['streams']  # a device makes only what is served
        self._curve = None
        if params['curve_secret_file']:
            self._curve = CurveServerConfig(params['curve_secret_file'],
                                            params['curve_allowed_clients'])
        elif params['curve_allowed_clients']:
            raise ValueError('curve_allowed_clients needs curve_secret_file')
        self._devices = create_devices(params['device'], options)
        for device in self._devices:
            lost = getattr(type(device), 'on_device_lost', None)
            if lost is not None:
                lost.connect(self._on_device_lost, sender=device)
        self.start_loop('streamkinect2-server-ioloop')
        control = self.loop.call(self._start_on_loop)
        self.get_logger().info('Server {0!r} control endpoint {1} ({2}); devices: {3}'.format(
            self._server.name, control,
            'announced over Zeroconf' if params['announce'] else 'not announced',
            '; '.join('{0}: {1}'.format(device_id, ', '.join(
                '{0} on {1}'.format(stream, self._server.device_endpoint(device_id, stream))
                for stream in self._server.device_streams(device_id)))
                for device_id in self.device_endpoints())))

    def _start_on_loop(self):
        params = self.params
        self._server = Server(
            address=params['address'] or None, name=params['server_name'] or None,
            zmq_ctx=self.zmq_ctx, io_loop=self.loop.io_loop,
            announce=params['announce'], control_port=params['control_port'] or None,
            curve=self._curve, color_quality=params['color_quality'] or None,
            color_resolution=params['color_resolution'], streams=params['streams'] or None)
        period = params['diagnostics_period']
        self._server.health_period = min(period, 1.0) if period > 0 else 1.0
        for device in self._devices:
            self._server.add_kinect(device)
        self._server.start()
        for device in list(self._devices):
            try:
                device.start()
            except Exception as err:  # one sensor that will not start: serve the others
                if len(self._devices) == 1:
                    raise
                self.get_logger().error('Device {0} did not start, not served: {1}'.format(
                    device.unique_kinect_id, err))
                self._server.remove_kinect(device)
                self._devices.remove(device)
                _close_device(device)
        return self._server.endpoints[EndpointType.control]

    def _on_device_lost(self, device):
        # Device thread: hand over to the loop, which owns the server.
        self.loop.io_loop.add_callback(self._remove_lost, device)

    def _remove_lost(self, device):
        server = self._server
        if server is None or device not in server.kinects:
            return
        server.remove_kinect(device)  # clients see on_remove_kinect at their next who
        if device.is_running:
            device.stop()
        _close_device(device)
        self.get_logger().error('Sensor {0} lost (unplugged?): removed; still serving: '
                                '{1}'.format(device.unique_kinect_id, ', '.join(
                                    k.unique_kinect_id for k in server.kinects) or 'none'))

    @property
    def devices(self):
        """Return the devices this node serves (the backend's objects)."""
        return list(self._devices)

    @property
    def control_endpoint(self):
        """Return the control endpoint clients connect to (None once closed)."""
        server = self._server
        return server.endpoints.get(EndpointType.control) if server is not None else None

    def device_endpoints(self, stream='depth'):
        """Return ``{device id: endpoint of its *stream*}`` (None: not served)."""
        return {device.unique_kinect_id: self._server.device_endpoint(device.unique_kinect_id,
                                                                      stream)
                for device in self._devices}

    def _collect_stats(self):
        server = self._server
        if server is None or not server.is_running:
            return {}
        stats = {}
        for device in server.kinects:
            kinect_id = device.unique_kinect_id
            counters = server.device_stats(kinect_id)
            streams = counters.pop('streams', {})
            for stream, values in streams.items():
                level, message = server.device_health(kinect_id, stream)
                counters['{0}.health'.format(stream)] = '{0}: {1}'.format(level, message)
                for key, value in values.items():
                    counters['{0}.{1}'.format(stream, key)] = value
            stats[kinect_id] = (server.device_health(kinect_id), counters)
        return stats

    def _publish_diagnostics(self):
        try:
            stats = self.loop.call(self._collect_stats, timeout=1.0)
        except (TimeoutError, RuntimeError):
            return
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        for device_id, ((level, message), counters) in stats.items():
            # The library logs each change of health (bridged to this node's log).
            status = DiagnosticStatus(
                level=_LEVELS.get(level, DiagnosticStatus.ERROR),
                name='{0}: {1}'.format(self.get_name(), device_id), message=message,
                hardware_id=device_id)
            status.values = [KeyValue(key=key, value=str(value))
                             for key, value in sorted(counters.items())]
            status.values.append(KeyValue(key='control_endpoint',
                                          value=str(self.control_endpoint)))
            msg.status.append(status)
        self._diag_pub.publish(msg)

    def stop_on_loop(self):
        if self._server is not None and self._server.is_running:
            self._server.stop()  # unregisters from Zeroconf, closes the sockets
        for device in self._devices:
            if device.is_running:
                device.stop()
            _close_device(device)

    def close(self):
        """Stop serving: unregister, close every socket, stop and close the devices."""
        super().close()
        for device in self._devices:  # if the loop never ran
            if getattr(device, 'is_running', False):
                device.stop()
            _close_device(device)


def _close_device(device):
    """Release a stopped device (a real sensor's USB handle); devices without close() pass."""
    close = getattr(device, 'close', None)
    if close is not None:
        close()


def main(args=None):
    """Run the server node until shutdown; return the exit status."""
    return run_node(ServerNode, args=args)


if __name__ == '__main__':
    sys.exit(main())
