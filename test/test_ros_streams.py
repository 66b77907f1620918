"""The client node's colour and IR topics beside depth, end to end with real rclpy.

Two kinds of server: :py:class:`StreamServer`, a stand-in on real ZeroMQ sockets in
this process that sends captures the test knows byte for byte (and records which stream
sockets were ever subscribed to), and the real server node with mock devices. The
client node runs in a subprocess, as in ``test_ros_nodes.py``.
"""
import json
import os
import threading
import time

import numpy as np
import pytest

ros_helpers = pytest.importorskip('ros_helpers')  # sets the ROS environment first
rclpy = pytest.importorskip('rclpy')
diagnostic_msgs = pytest.importorskip('diagnostic_msgs.msg')

from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from streamkinect2.codec import CODEC_JPEG, encode_jpeg, halve_bgrx  # noqa: E402
from streamkinect2.compress import encode_frame_message  # noqa: E402
from streamkinect2.device import (DepthFrame, IrFrame, MOCK_CALIBRATION,  # noqa: E402
                                  STREAMS)
from streamkinect2.mock import MockKinect  # noqa: E402
from streamkinect2.protocol import frame_flags, FrameHeader, FrameMessage  # noqa: E402
import zmq  # noqa: E402

LOOPBACK = ros_helpers.LOOPBACK
NODE_NAME = 'streamkinect2_client'
CLIENT_YAML = os.path.join(ros_helpers.CONFIG, 'client.yaml')
SERVER_YAML = os.path.join(ros_helpers.CONFIG, 'server.yaml')
COLOR_FORMAT = 'bgr8; jpeg compressed bgr8'  # image_transport's, for a bgr8 image


def stamp_ns(msg):
    """Return the header stamp of *msg* in nanoseconds."""
    return msg.header.stamp.sec * 1000000000 + msg.header.stamp.nanosec


class StreamServer(object):
    """A stand-in server on loopback: one device with depth, IR and colour sockets.

    Every *period* s while :py:attr:`streaming` is set it sends one capture: the mock's
    depth and IR frames and a JPEG of the mock's colour frame (halved for ``'qhd'``) with
    one sequence and one capture timestamp, colour flagged paired. :py:attr:`sent` maps
    each capture timestamp to ``(sequence, jpeg bytes)``; :py:attr:`subscribed` holds the
    streams whose socket a client ever subscribed to (the sockets are XPUB). With
    *damaged*, the colour JPEG of every odd sequence has its entropy-coded data damaged
    (its header and end intact: only decoding finds out).
    """

    def __init__(self, device_id, resolution='hd', streams=STREAMS, period=0.1,
                 record_extra=None, damaged=False):
        """Bind the sockets and start the thread."""
        self.device_id = device_id
        self.resolution = resolution
        self.damaged = damaged
        self.sent = {}
        self.subscribed = set()
        self.requests = 0
        self.streaming = threading.Event()
        self.streaming.set()
        self._period = period
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.linger = 0
        self.endpoint = 'tcp://{0}:{1}'.format(
            LOOPBACK, self._router.bind_to_random_port('tcp://' + LOOPBACK))
        self._pubs = {}
        self._endpoints = {}
        for stream in streams:
            sock = self._ctx.socket(zmq.XPUB)
            sock.linger = 0
            port = sock.bind_to_random_port('tcp://' + LOOPBACK)
            self._pubs[stream] = sock
            self._endpoints[stream] = 'tcp://{0}:{1}'.format(LOOPBACK, port)
        record = {'id': device_id, 'endpoints': dict(self._endpoints),
                  'streams': list(streams),
                  'depth_camera': MOCK_CALIBRATION['depth_camera'],
                  'color_camera': MOCK_CALIBRATION['color_camera'],
                  'ir_to_color': MOCK_CALIBRATION['ir_to_color']}
        record.update(record_extra or {})
        self.set_devices([record])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='StreamServer', daemon=True)
        self._thread.start()

    def set_devices(self, records):
        """Answer ``who`` with the device *records* from now on."""
        self._me = [b'\x04', json.dumps({
            'version': 1, 'name': 'streams', 'endpoints': {'control': self.endpoint},
            'devices': records}, separators=(',', ':')).encode('utf8')]

    def colour_pixels(self, sequence):
        """Return the BGRX pixels the colour JPEG of *sequence* is made of."""
        pixels = MockKinect.render_color(sequence)
        return halve_bgrx(pixels) if self.resolution == 'qhd' else pixels

    def _send_capture(self, sequence):
        captured_ns = time.time_ns()
        messages = {}
        if 'depth' in self._pubs:
            messages['depth'] = encode_frame_message(DepthFrame(
                MockKinect.render_frame(sequence), sequence=sequence,
                timestamp_ns=captured_ns))
        if 'ir' in self._pubs:
            messages['ir'] = encode_frame_message(IrFrame(
                MockKinect.render_ir(sequence), sequence=sequence,
                timestamp_ns=captured_ns), stream='ir')
        jpeg = None
        if 'color' in self._pubs:
            pixels = self.colour_pixels(sequence)
            jpeg = encode_jpeg(pixels, 90)
            if self.damaged and sequence % 2:
                middle = len(jpeg) // 3
                jpeg = jpeg[:middle] + b'\xff\x01' * 2000 + jpeg[middle + 4000:]
            header = FrameHeader(CODEC_JPEG, pixels.shape[1], pixels.shape[0],
                                 frame_flags('color', paired=True), sequence, captured_ns,
                                 0, 0)
            messages['color'] = FrameMessage.build(header, jpeg)
        # Recorded before anything is sent: a frame can be on a topic a moment later.
        self.sent[captured_ns] = (sequence, jpeg)
        for old in sorted(self.sent)[:-300]:
            del self.sent[old]
        for stream, message in messages.items():
            self._pubs[stream].send_multipart(message.parts)

    def _run(self):
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        for sock in self._pubs.values():
            poller.register(sock, zmq.POLLIN)
        sequence = 0
        next_frame = time.monotonic()
        while not self._stop.is_set():
            timeout = max(0.0, min(0.05, next_frame - time.monotonic()))
            for sock, _ in poller.poll(timeout * 1000):
                if sock is self._router:
                    identity, empty, *frames = self._router.recv_multipart()
                    self.requests += 1
                    answer = [b'\x02'] if frames[0] == b'\x01' else self._me
                    self._router.send_multipart([identity, empty] + answer)
                    continue
                for stream, pub in self._pubs.items():
                    if pub is sock and sock.recv()[:1] == b'\x01':
                        self.subscribed.add(stream)
            if self.streaming.is_set() and time.monotonic() >= next_frame:
                sequence += 1
                self._send_capture(sequence)
                next_frame = time.monotonic() + self._period

    def close(self):
        """Stop the thread and close the sockets."""
        self._stop.set()
        self._thread.join(10.0)
        for sock in [self._router] + list(self._pubs.values()):
            sock.close(linger=0)
        self._ctx.term()

    def __enter__(self):
        """Return the running server."""
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        """Close the server."""
        self.close()


def start_client(namespace, **params):
    """Start a client node (shipped YAML plus overrides) in *namespace*."""
    overrides = {'discovery_address': LOOPBACK, 'log_period': 1.0, 'diagnostics_period': 0.5,
                 'response_timeout': 2.0, 'reconnect_period': 0.5}
    overrides.update(params)
    return ros_helpers.NodeProcess('client_node', overrides, CLIENT_YAML, namespace)


def start_server(name, device_id, **params):
    """Start a mock server node on loopback, from the shipped YAML plus overrides."""
    overrides = {'address': LOOPBACK, 'server_name': name, 'announce': 'false',
                 'mock_ids': '[{0}]'.format(device_id), 'mock_fps': 10.0,
                 'diagnostics_period': 0.0}
    overrides.update(params)
    return ros_helpers.NodeProcess('server_node', overrides, SERVER_YAML)


class Topics(object):
    """Collects what one device's topics carry (all but ``color/image_raw`` at first)."""

    TOPICS = {'depth': ('depth/image_raw', Image),
              'depth_info': ('depth/camera_info', CameraInfo),
              'ir': ('ir/image_raw', Image), 'ir_info': ('ir/camera_info', CameraInfo),
              'compressed': ('color/image_raw/compressed', CompressedImage),
              'color_info': ('color/camera_info', CameraInfo)}

    def __init__(self, sub, namespace, device):
        """Subscribe to the device's topics, and to /diagnostics."""
        self.sub = sub
        self.base = '{0}/{1}/'.format(namespace, device)
        self.device = device
        self.got = {key: [] for key in self.TOPICS}
        self.got['color'] = []
        self.subs = [sub.node.create_subscription(kind, self.base + topic,
                                                  self.got[key].append,
                                                  qos_profile_sensor_data)
                     for key, (topic, kind) in self.TOPICS.items()]
        self.diagnostics = None
        self.subs.append(sub.node.create_subscription(
            diagnostic_msgs.DiagnosticArray, '/diagnostics', self._on_diagnostics, 10))

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if NODE_NAME in status.name and status.hardware_id == self.device:
                self.diagnostics = {value.key: value.value for value in status.values}

    def subscribe_color(self):
        """Subscribe to ``color/image_raw`` too."""
        self.subs.append(self.sub.node.create_subscription(
            Image, self.base + 'color/image_raw', self.got['color'].append,
            qos_profile_sensor_data))

    def have(self, count, *keys):
        """Tell whether each of *keys* has at least *count* messages."""
        return all(len(self.got[key]) >= count for key in keys)


def check_camera_info(info, width, height, record, frame_id):
    """Assert *info* describes a *width* x *height* image of the camera *record*."""
    assert (info.width, info.height) == (width, height)
    assert info.header.frame_id == frame_id
    assert info.distortion_model == 'plumb_bob'
    sx, sy = width / record['width'], height / record['height']
    assert list(info.k) == pytest.approx([record['fx'] * sx, 0, record['cx'] * sx,
                                          0, record['fy'] * sy, record['cy'] * sy, 0, 0, 1])
    assert list(info.d) == pytest.approx([record['k1'], record['k2'], record['p1'],
                                          record['p2'], record['k3']])


@pytest.mark.parametrize('resolution,size', [('hd', (1920, 1080)), ('qhd', (960, 540))])
def test_colour_and_ir_from_the_wire_to_the_topics(resolution, size):
    device = ros_helpers.unique('rgbd_')
    namespace = '/' + ros_helpers.unique('t')
    depth_frame = 'kinect2_{0}_depth_optical_frame'.format(device)
    rgb_frame = 'kinect2_{0}_rgb_optical_frame'.format(device)
    width, height = size
    with StreamServer(device, resolution) as fake, ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=fake.endpoint) as client:
        topics = Topics(sub, namespace, device)
        sub.spin_until(lambda: topics.have(4, *Topics.TOPICS) and topics.diagnostics
                       and int(topics.diagnostics.get('color_published', 0)) >= 4,
                       40.0, 'every topic but color/image_raw')
        got = topics.got

        # Colour: the JPEG bytes of the wire, as they are, with image_transport's format.
        for msg in got['compressed']:
            assert msg.format == COLOR_FORMAT
            assert msg.header.frame_id == rgb_frame
            sequence, jpeg = fake.sent[stamp_ns(msg)]
            assert bytes(msg.data) == jpeg
        # Nobody subscribes to color/image_raw: nothing was decoded.
        assert topics.diagnostics['color_decoded'] == '0', topics.diagnostics
        # IR and depth: byte-exact 16UC1, the capture's sequence in their pixels.
        for key, render in (('ir', MockKinect.render_ir), ('depth', MockKinect.render_frame)):
            for img in got[key]:
                assert (img.encoding, img.width, img.height, img.step) == (
                    '16UC1', 512, 424, 1024)
                assert img.header.frame_id == depth_frame
                pixels = np.frombuffer(bytes(img.data), np.uint16).reshape(424, 512)
                sequence, _ = fake.sent[stamp_ns(img)]
                assert pixels.tobytes() == render(sequence).tobytes()
        # One capture, one stamp: the three streams of a capture share it on the topics.
        stamps = {key: {stamp_ns(m) for m in got[key]}
                  for key in ('depth', 'ir', 'compressed')}
        assert stamps['depth'] & stamps['ir'] & stamps['compressed']
        # CameraInfo: every image's size; IR and depth share the depth camera.
        for info in got['color_info']:
            check_camera_info(info, width, height, MOCK_CALIBRATION['color_camera'],
                              rgb_frame)
        for key in ('ir_info', 'depth_info'):
            for info in got[key]:
                check_camera_info(info, 512, 424, MOCK_CALIBRATION['depth_camera'],
                                  depth_frame)
        assert {stamp_ns(m) for m in got['color_info']} & stamps['compressed']
        assert {stamp_ns(m) for m in got['ir_info']} & stamps['ir']

        # A subscriber to color/image_raw: bgr8, decoded, within JPEG tolerance.
        topics.subscribe_color()
        sub.spin_until(lambda: topics.have(2, 'color'), 20.0, 'color/image_raw')
        for img in got['color'][:2]:
            assert (img.encoding, img.width, img.height, img.step) == (
                'bgr8', width, height, width * 3)
            assert img.header.frame_id == rgb_frame
            sequence, _ = fake.sent[stamp_ns(img)]
            pixels = np.frombuffer(bytes(img.data), np.uint8).reshape(height, width, 3)
            assert MockKinect.sequence_of_color(pixels) == sequence
            error = np.abs(pixels.astype(np.int16)
                           - fake.colour_pixels(sequence)[:, :, :3].astype(np.int16))
            assert error.mean() < 2.0, error.mean()
        # (best effort between processes: either message of a capture may be lost, so
        # compare with every CompressedImage received so far, not a snapshot)
        sub.spin_until(lambda: {stamp_ns(i) for i in got['color']}
                       & {stamp_ns(m) for m in got['compressed']},
                       10.0, 'an Image and a CompressedImage of one capture')
        sub.spin_until(lambda: int(topics.diagnostics['color_decoded']) > 0, 10.0,
                       'decoded colour frames counted')
        for key in ('frame_rate', 'ir_frame_rate', 'color_frame_rate', 'ir_received',
                    'color_received', 'ir_invalid', 'color_invalid', 'ir_dropped',
                    'color_dropped'):
            assert key in topics.diagnostics, key
        client.wait_for_output('{0} color: '.format(device), 10.0)
        assert 'Traceback' not in client.output(), client.output()
        assert fake.subscribed == set(STREAMS)


def test_a_colour_frame_that_cannot_be_decoded_loses_only_its_image():
    device = ros_helpers.unique('rgbd_')
    namespace = '/' + ros_helpers.unique('t')
    with StreamServer(device, 'qhd', damaged=True) as fake, \
            ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=fake.endpoint) as client:
        topics = Topics(sub, namespace, device)
        topics.subscribe_color()
        sub.spin_until(lambda: topics.have(6, 'depth', 'ir', 'compressed', 'color'), 40.0,
                       'every stream despite damaged JPEGs')
        client.wait_for_output('Could not publish a color frame', 10.0)
        got = topics.got
        # Every CompressedImage is the bytes sent, damaged or not: forwarded as they are.
        sequences = []
        for msg in got['compressed']:
            sequence, jpeg = fake.sent[stamp_ns(msg)]
            assert bytes(msg.data) == jpeg
            sequences.append(sequence)
        assert any(sequence % 2 for sequence in sequences)
        # Only the intact ones became Images; depth and IR lost nothing to them.
        for img in got['color']:
            assert fake.sent[stamp_ns(img)][0] % 2 == 0
        assert any(fake.sent[stamp_ns(img)][0] % 2 for img in got['depth'])
        assert any(fake.sent[stamp_ns(img)][0] % 2 for img in got['ir'])
        # The CameraInfo of a damaged frame went out with its CompressedImage.
        sub.spin_until(lambda: any(fake.sent[stamp_ns(info)][0] % 2
                                   for info in got['color_info']), 5.0,
                       'the CameraInfo of a damaged frame')
        assert client.proc.poll() is None
        assert 'Traceback' not in client.output(), client.output()


def test_a_removed_device_releases_the_publishers_of_every_stream():
    device = ros_helpers.unique('rgbd_')
    namespace = '/' + ros_helpers.unique('t')

    def device_topics(sub):
        return {t for t in ros_helpers.published_topics(sub, namespace)
                if t.startswith(namespace + '/')}
    with StreamServer(device, 'qhd') as fake, ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=fake.endpoint) as client:
        base = '{0}/{1}/'.format(namespace, device)
        every = {base + topic for topic in (
            'depth/image_raw', 'depth/image_raw/compressedDepth', 'depth/camera_info',
            'ir/image_raw', 'ir/camera_info', 'color/image_raw',
            'color/image_raw/compressed', 'color/camera_info')}
        sub.spin_until(lambda: device_topics(sub) == every, 30.0, 'the eight topics')
        fake.set_devices([])
        sub.spin_until(lambda: not device_topics(sub), 20.0, 'every topic released')
        client.wait_for_output('was removed from the server', 5.0)
        assert 'Traceback' not in client.output(), client.output()


def test_streams_parameter_depth_only():
    device = ros_helpers.unique('rgbd_')
    namespace = '/' + ros_helpers.unique('t')
    with StreamServer(device) as fake, ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=fake.endpoint,
                         streams='[depth]') as client:
        topics = Topics(sub, namespace, device)
        sub.spin_until(lambda: topics.have(3, 'depth', 'depth_info'), 30.0, 'depth')
        device_topics = {t for t in ros_helpers.published_topics(sub, namespace)
                         if t.startswith(namespace + '/')}
        assert device_topics == {topics.base + 'depth/image_raw',
                                 topics.base + 'depth/image_raw/compressedDepth',
                                 topics.base + 'depth/camera_info'}
        # Only the depth socket was ever subscribed to: IR and colour never travelled.
        assert fake.subscribed == {'depth'}
        assert not any(topics.got[key] for key in ('ir', 'compressed', 'color_info'))
        assert 'Traceback' not in client.output(), client.output()


@pytest.mark.parametrize('codec', ['png', 'rvl'])
def test_compressed_depth_is_lossless_in_image_transports_format_while_subscribed(codec):
    # Decoded with a decoder written from image_transport_plugins' source (not the
    # encoder's inverse): byte for byte the depth Image of the same capture.
    spec = pytest.importorskip('compressed_depth_spec')
    device = ros_helpers.unique('rgbd_')
    namespace = '/' + ros_helpers.unique('t')
    with StreamServer(device, streams=('depth',)) as fake, \
            ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=fake.endpoint, streams='[depth]',
                         compressed_depth_format=codec) as client:
        topics = Topics(sub, namespace, device)
        sub.spin_until(lambda: topics.have(3, 'depth') and topics.diagnostics, 30.0,
                       'depth and diagnostics')
        assert topics.diagnostics['compressed_depth'] == '0'  # nobody subscribed
        compressed = []
        sub.node.create_subscription(CompressedImage,
                                     topics.base + 'depth/image_raw/compressedDepth',
                                     compressed.append, qos_profile_sensor_data)
        sub.spin_until(lambda: len(compressed) >= 3, 30.0, 'compressedDepth messages')
        depth_by_stamp = {stamp_ns(image): image for image in topics.got['depth']}
        sub.spin_until(lambda: all(stamp_ns(m) in depth_by_stamp for m in compressed[:3])
                       or depth_by_stamp.update({stamp_ns(i): i for i in topics.got['depth']}),
                       10.0, 'the depth Images of the same captures')
        for msg in compressed[:3]:
            assert msg.format == '16UC1; compressedDepth ' + codec
            assert msg.header.frame_id == 'kinect2_{0}_depth_optical_frame'.format(device)
            image = depth_by_stamp[stamp_ns(msg)]
            decoded = spec.decode(msg.format, bytes(msg.data)).image
            assert decoded.shape == (image.height, image.width)
            assert decoded.dtype == np.uint16
            assert decoded.tobytes() == bytes(image.data)
        assert 'Traceback' not in client.output(), client.output()


def test_streams_the_server_does_not_offer_are_left_out_with_a_warning():
    device = ros_helpers.unique('rgbd_')
    namespace = '/' + ros_helpers.unique('t')
    with StreamServer(device, streams=('depth', 'color')) as fake, \
            ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=fake.endpoint,
                         streams='[ir, color]') as client:
        topics = Topics(sub, namespace, device)
        sub.spin_until(lambda: topics.have(3, 'compressed', 'color_info'), 30.0, 'colour')
        client.wait_for_output('does not offer ir', 10.0)
        device_topics = {t for t in ros_helpers.published_topics(sub, namespace)
                         if t.startswith(namespace + '/')}
        assert device_topics == {topics.base + 'color/image_raw',
                                 topics.base + 'color/image_raw/compressed',
                                 topics.base + 'color/camera_info'}
        assert fake.subscribed == {'color'}
        # color_frame_id changes at runtime, as frame_id does; an empty one is refused.
        params = AsyncParameterClient(sub.node, namespace + '/' + NODE_NAME)
        sub.spin_until(lambda: params.services_are_ready(), 10.0, 'parameter services')
        refused = sub.spin_future(params.set_parameters(
            [Parameter('color_frame_id', value='')]), 10.0)
        assert not refused.results[0].successful
        accepted = sub.spin_future(params.set_parameters(
            [Parameter('color_frame_id', value='cam_{device}_rgb')]), 10.0)
        assert accepted.results[0].successful
        new_frame = 'cam_{0}_rgb'.format(device)
        sub.spin_until(lambda: any(m.header.frame_id == new_frame
                                   for m in topics.got['compressed'])
                       and any(m.header.frame_id == new_frame
                               for m in topics.got['color_info']), 10.0,
                       'colour messages in the new frame')


def test_an_unknown_stream_stops_the_node_at_start():
    with start_client('/' + ros_helpers.unique('t'), server_endpoint='tcp://127.0.0.1:9',
                      streams='[depth, rgb]') as client:
        client.proc.wait(30.0)
        assert client.proc.returncode != 0
        assert "streams: 'rgb' is not one of: depth, ir, color" in client.output()


@pytest.mark.parametrize('resolution,size', [('hd', (1920, 1080)), ('qhd', (960, 540))])
def test_server_node_streams_share_the_capture_stamp_on_the_topics(resolution, size):
    # The real server node and mock: depth, IR and paired colour of one capture carry
    # one stamp; IR is byte-exact; colour holds the capture's sequence code.
    device = ros_helpers.unique('mock_')
    namespace = '/' + ros_helpers.unique('t')
    port = ros_helpers.free_port()
    endpoint = 'tcp://{0}:{1}'.format(LOOPBACK, port)
    width, height = size
    with start_server(ros_helpers.unique('sk2-test-'), device, control_port=port,
                      color_resolution=resolution), \
            ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=endpoint) as client:
        topics = Topics(sub, namespace, device)
        topics.subscribe_color()
        sub.spin_until(lambda: topics.have(5, 'depth', 'ir', 'compressed', 'color'), 40.0,
                       'depth, IR and colour from the server node')
        got = topics.got
        depth_by_stamp = {}
        for img in got['depth']:
            pixels = np.frombuffer(bytes(img.data), np.uint16).reshape(424, 512)
            depth_by_stamp[stamp_ns(img)] = MockKinect.sequence_of(pixels)
        for img in got['ir']:
            pixels = np.frombuffer(bytes(img.data), np.uint16).reshape(424, 512)
            sequence = MockKinect.sequence_of(pixels)
            assert pixels.tobytes() == MockKinect.render_ir(sequence).tobytes()
            if stamp_ns(img) in depth_by_stamp:
                assert depth_by_stamp[stamp_ns(img)] == sequence
        shared = 0
        for img in got['color']:
            assert (img.encoding, img.width, img.height) == ('bgr8', width, height)
            pixels = np.frombuffer(bytes(img.data), np.uint8).reshape(height, width, 3)
            sequence = MockKinect.sequence_of_color(pixels)
            expected = MockKinect.render_color(sequence)
            if resolution == 'qhd':
                expected = halve_bgrx(expected)
            expected = expected[:, :, :3].astype(np.int16)
            # JPEG tolerance: quality 90 at hd, 75 at qhd (the node's default of each).
            assert np.abs(pixels.astype(np.int16) - expected).mean() < (
                2.0 if resolution == 'hd' else 3.0)
            if stamp_ns(img) in depth_by_stamp:
                assert depth_by_stamp[stamp_ns(img)] == sequence
                shared += 1
        assert shared, 'no colour Image shares its stamp with a depth Image'
        for msg in got['compressed']:
            assert msg.format == COLOR_FORMAT
        check_camera_info(got['color_info'][-1], width, height,
                          MOCK_CALIBRATION['color_camera'],
                          'kinect2_{0}_rgb_optical_frame'.format(device))
        assert 'Traceback' not in client.output(), client.output()
