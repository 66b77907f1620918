"""iai_kinect2's topic layout, computed on the receiving machine from the streams.

With ``kinect2_layout:=true`` the client node publishes, beside each device's own
``depth/…``, ``ir/…`` and ``color/…`` topics, the topics of kinect2_bridge under a base
name (``base_name``, default ``kinect2``, relative to the node's namespace)::

    <base>/sd/image_depth_rect    16UC1 mm: depth undistorted, IR camera, 512 x 424
    <base>/sd/image_ir_rect       16UC1: IR amplitude undistorted (same pixel grid)
    <base>/sd/image_color_rect    bgr8: colour registered into the IR camera (0 unseen)
    <base>/sd/camera_info         the rectified IR camera (D zeros, P = [K | 0])
    <base>/sd/points              PointCloud2 x y z rgb, organised 424 x 512
    <base>/qhd/image_depth_rect   16UC1 mm: depth registered into the rectified colour
                                  camera at 960 x 540 (nearest depth wins)
    <base>/qhd/image_color_rect   bgr8: colour undistorted, 960 x 540
    <base>/qhd/image_color        bgr8: colour as received, scaled to 960 x 540
    <base>/qhd/camera_info        the rectified colour camera at 960 x 540
    <base>/qhd/points             PointCloud2 x y z rgb, organised 540 x 960
    <base>/hd/…                   as qhd, at 1920 x 1080

Frame ids are kinect2_bridge's: ``<base_tf>_ir_optical_frame`` for every sd topic,
``<base_tf>_rgb_optical_frame`` for qhd and hd. Each resolution's ``camera_info``
describes its rectified images (what ``depth_image_proc`` and image_geometry users
pair them with); the unrectified ``image_color`` is described, distortion included, by
the device's own ``color/camera_info``.

Nothing is computed for a topic nobody subscribes to: each capture's work is decided
by the subscription counts of the publishers, and the IR and colour streams are only
received while a topic needing them has a subscriber (or the device's own topics
publish them). The work runs on one worker thread per device, never on the IOLoop
thread that receives the frames: a slot per kind of work (depth, IR, colour) holds the
latest capture; one replaced before the worker got to it is counted as skipped.
Colour-and-depth outputs (``sd/image_color_rect``, ``points``) are made only from a
colour frame paired with the depth capture it carries the sequence of. Colour is taken
at the calibration's size (hd, 1920 x 1080) or half of it (qhd), as a server sends it;
a frame of another size is refused before it is decoded (``color_refused``, an error
logged at most every 5 s) and the depth outputs go on. A frame that does not decode
(damaged scan data) is a lost capture (``failures``, logged alike).

The calibration is the device's own (factory values from its ``me`` record) unless
``calib_path`` names iai_kinect2 calibration files or ``camera_info_url`` a
camera_info_manager YAML for the depth camera (:py:class:`CalibrationSources`). With
``publish_tf`` (and tf2_msgs importable) the static transforms ``<base_tf>_link`` ->
``<base_tf>_rgb_optical_frame`` -> ``<base_tf>_ir_optical_frame`` go to ``/tf_static``.
"""
import collections
import os
import threading

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from streamkinect2.calibration import (Calibration, IAI_KINECT2_FILES,
                                       read_camera_info_yaml)
from streamkinect2.device import DEPTH_HEIGHT, DEPTH_WIDTH
from streamkinect2.registration import Registration

from .conversions import (fill_camera_info, fill_image, fill_point_cloud, sanitise_name,
                          stamp_from_ns)
from .params import ParamSpec
from .rosutil import create_overridable_publisher, LogThrottle

__all__ = ['CalibrationSources', 'DeviceLayout', 'Kinect2Layout',
           'LAYOUT_PARAMETERS', 'OUTPUTS', 'RESOLUTIONS', 'StaticTfPublisher',
           'frame_ids', 'resolve_camera_info_url', 'static_transforms', 'streams_needed',
           'tf2_msgs_missing']

LAYOUT_PARAMETERS = (
    ParamSpec('kinect2_layout', False, "Also publish iai_kinect2's (kinect2_bridge's) "
              'topics: <base_name>/{sd,qhd,hd}/{image_depth_rect, image_color_rect, '
              'image_ir_rect (sd) or image_color (qhd, hd), camera_info, points}, computed '
              'here only while subscribed', True),
    ParamSpec('base_name', 'kinect2', 'Namespace of the kinect2_layout topics (relative to '
              "the node's). One device: as given; each further device at once: "
              '<base_name>_<device>; "{device}" is replaced by the sanitised device id', True),
    ParamSpec('base_name_tf', '', 'Prefix of the kinect2_layout frame ids '
              '(<base_name_tf>_rgb_optical_frame, _ir_optical_frame, _link); empty: the '
              "device's base name (base_name with / as _)", True),
    ParamSpec('publish_tf', True, 'With kinect2_layout: publish the static transforms '
              '<base_name_tf>_link -> _rgb_optical_frame -> _ir_optical_frame on /tf_static '
              '(needs tf2_msgs)', True),
    ParamSpec('calib_path', '', 'Folder of iai_kinect2 calibration files (calib_color.yaml, '
              'calib_ir.yaml, calib_pose.yaml, calib_depth.yaml), directly or in a '
              '<device id>/ subfolder per device; empty: the values the device reports', True),
    ParamSpec('camera_info_url', '', 'camera_info_manager YAML of the depth (IR) camera: '
              'file://, package:// or a path; used for depth/, ir/ and sd/camera_info, '
              'undistortion and registration; empty: unused', True),
)

#: The three resolutions of kinect2_bridge and their images besides camera_info, points.
RESOLUTIONS = ('sd', 'qhd', 'hd')
_IMAGES = {'sd': ('image_depth_rect', 'image_color_rect', 'image_ir_rect'),
           'qhd': ('image_depth_rect', 'image_color_rect', 'image_color'),
           'hd': ('image_depth_rect', 'image_color_rect', 'image_color')}
#: Every output, as its topic relative to the base name (``'qhd/points'``), with its type.
OUTPUTS = collections.OrderedDict(
    [('{0}/{1}'.format(res, name), Image) for res in RESOLUTIONS for name in _IMAGES[res]]
    + [('{0}/camera_info'.format(res), CameraInfo) for res in RESOLUTIONS]
    + [('{0}/points'.format(res), PointCloud2) for res in RESOLUTIONS])

_LINK, _RGB, _IR = '_link', '_rgb_optical_frame', '_ir_optical_frame'
_RING = 8            # depth captures remembered for the colour frames paired with them
_PENDING_COLOR = 4   # colour frames waiting for the depth capture they were paired with
_CACHE = 3           # undistorted / registered depth kept by the worker for colour jobs
_LOG_EVERY = 5.0     # seconds between two logs of a recurring worker error


def frame_ids(base_tf):
    """Return ``{resolution: frame id}``: the IR optical frame for sd, rgb for qhd and hd."""
    return {'sd': base_tf + _IR, 'qhd': base_tf + _RGB, 'hd': base_tf + _RGB}


def _with_colour(name, res):
    """Tell whether output *res*/*name* needs colour and depth of one capture."""
    return name == 'points' or (res == 'sd' and name == 'image_color_rect')


def streams_needed(outputs, color_offered):
    """Return the streams (a set of depth, ir, color) that *outputs* need.

    Clouds carry colour when the device offers colour (*color_offered*), and are XYZ
    only otherwise. Every camera_info goes out with the depth captures (and, at qhd
    and hd, the colour frames): it needs depth.
    """
    streams = set()
    for output in outputs:
        res, name = output.split('/')
        if name == 'image_ir_rect':
            streams.add('ir')
        elif name == 'image_color' or (name == 'image_color_rect' and res != 'sd'):
            streams.add('color')
        else:
            streams.add('depth')
            if _with_colour(name, res) and (color_offered or name != 'points'):
                streams.add('color')
    return streams


# --- TF --------------------------------------------------------------------------------

def static_transforms(calibration, base_tf, stamp_ns):
    """Return kinect2_bridge's two static ``geometry_msgs/TransformStamped`` of a device.

    ``<base_tf>_link`` -> ``<base_tf>_rgb_optical_frame`` (the calibration's
    ``color_in_link()``: identity, as kinect2_bridge) and ``<base_tf>_rgb_optical_frame``
    -> ``<base_tf>_ir_optical_frame`` (``ir_in_color()``: a point p in the IR camera's
    frame is R p + t in the colour camera's), stamped *stamp_ns*.
    """
    from geometry_msgs.msg import TransformStamped

    messages = []
    for parent, child, (translation, quaternion) in (
            (base_tf + _LINK, base_tf + _RGB, calibration.color_in_link()),
            (base_tf + _RGB, base_tf + _IR, calibration.ir_in_color())):
        msg = TransformStamped()
        stamp_from_ns(msg.header.stamp, stamp_ns)
        msg.header.frame_id = parent
        msg.child_frame_id = child
        vector, rotation = msg.transform.translation, msg.transform.rotation
        vector.x, vector.y, vector.z = (float(value) for value in translation)
        rotation.x, rotation.y, rotation.z, rotation.w = (float(value)
                                                          for value in quaternion)
        messages.append(msg)
    return messages


def tf2_msgs_missing():
    """Return why tf2_msgs cannot be imported (a sentence), or None when it can."""
    try:
        import tf2_msgs.msg  # noqa: F401
    except ImportError as err:
        distro = os.environ.get('ROS_DISTRO')
        package = ('ros-{0}-tf2-msgs'.format(distro) if distro
                   else 'ros-<distro>-tf2-msgs, e.g. ros-kilted-tf2-msgs,')
        return ('tf2_msgs is not importable ({0}), so the static transforms are NOT '
                'published on /tf_static: install {1} from a ROS 2 distribution (there is '
                'no PyPI wheel) and source it, or set publish_tf:=false'.format(err, package))
    return None


class StaticTfPublisher(object):
    """``/tf_static`` as tf2_ros's static broadcaster: every transform, latched.

    Transient local, reliable, depth 1: a late subscriber gets the last message, which
    holds every transform published so far (a transform of the same child frame
    replaces the earlier one).
    """

    def __init__(self, node):
        """Create the publisher on *node* (tf2_msgs must be importable)."""
        from tf2_msgs.msg import TFMessage

        self._message_class = TFMessage
        self._transforms = collections.OrderedDict()
        self._lock = threading.Lock()
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.publisher = node.create_publisher(TFMessage, '/tf_static', qos)

    def publish(self, transforms):
        """Add *transforms* (TransformStamped) to the set and publish all of it."""
        with self._lock:
            for transform in transforms:
                self._transforms[transform.child_frame_id] = transform
            self.publisher.publish(self._message_class(
                transforms=list(self._transforms.values())))


# --- calibration sources ---------------------------------------------------------------

def resolve_camera_info_url(url):
    """Return the file a ``camera_info_url`` names (file://, package:// or a path).

    ``package://<package>/<path>`` is ``<path>`` in the package's share directory
    (ament_index); ValueError for another scheme or an unknown package.
    """
    if url.startswith('file://'):
        return url[len('file://'):]
    if url.startswith('package://'):
        package, _, rest = url[len('package://'):].partition('/')
        try:
            from ament_index_python.packages import get_package_share_directory
            share = get_package_share_directory(package)
        except (ImportError, LookupError, ValueError, OSError) as err:
            # (OSError: no AMENT_PREFIX_PATH, i.e. no ROS workspace sourced)
            raise ValueError('camera_info_url {0}: package {1!r} not found ({2})'.format(
                url, package, err)) from None
        return os.path.join(share, rest)
    if '://' in url:
        raise ValueError('camera_info_url {0}: only file://, package:// URLs and plain '
                         'paths are understood'.format(url))
    return os.path.expanduser(url)


def _has_calibration(directory):
    return any(os.path.isfile(os.path.join(directory, name)) for name in IAI_KINECT2_FILES)


class CalibrationSources(object):
    """The calibrations the user gave (``calib_path``, ``camera_info_url``), read at start.

    Every file is read and checked here, so that a bad one stops the node at start with
    one error naming the file and the field (:py:class:`CalibrationError`). ``calib_path``
    holds kinect2_bridge's files directly (one calibration for every device) or a
    subfolder per device named by its id or its sanitised name (kinect2_bridge's
    ``calib_path`` + ``sensor``). A device without files gets the values it reports.
    """

    def __init__(self, calib_path='', camera_info_url=''):
        """Read and check every calibration file given (CalibrationError, ValueError)."""
        self.common = None       # a Calibration for every device
        self.per_device = {}     # folder name -> Calibration
        self.depth_camera = None  # the CameraModel of camera_info_url
        self.calib_path = calib_path
        if calib_path:
            directory = os.path.expanduser(calib_path)
            if not os.path.isdir(directory):
                raise ValueError('calib_path {0!r} is not a folder'.format(calib_path))
            if _has_calibration(directory):
                self.common = Calibration.from_iai_kinect2(directory)
            else:
                for name in sorted(os.listdir(directory)):
                    folder = os.path.join(directory, name)
                    if os.path.isdir(folder) and _has_calibration(folder):
                        self.per_device[name] = Calibration.from_iai_kinect2(folder)
                if not self.per_device:
                    raise ValueError('calib_path {0!r} holds none of {1}, nor a folder per '
                                     'device with them'.format(calib_path,
                                                               ', '.join(IAI_KINECT2_FILES)))
        if camera_info_url:
            self.depth_camera = read_camera_info_yaml(resolve_camera_info_url(camera_info_url),
                                                      size=(DEPTH_WIDTH, DEPTH_HEIGHT))

    def given(self, kinect_id):
        """Return the user's Calibration for device *kinect_id* (None: none given)."""
        if self.common is not None:
            return self.common
        return (self.per_device.get(str(kinect_id))
                or self.per_device.get(sanitise_name(kinect_id)))

    def calibration(self, kinect_id, record):
        """Return the Calibration of device *kinect_id* whose ``me`` record is *record*.

        The user's files if any, else the device's own values (the parts of a record
        that are not usable give way to the defaults, logged by
        :py:meth:`Calibration.from_device_record`), with ``camera_info_url``'s depth
        camera when given.
        """
        calibration = self.given(kinect_id)
        if calibration is None:
            calibration = Calibration.from_device_record(record)
        if self.depth_camera is not None:
            calibration = calibration.with_depth_camera(self.depth_camera)
        return calibration

    def camera_fields(self, kinect_id, stream, width, height):
        """Return the CameraInfo fields of a device's own *stream* topic from user files.

        None when the user gave nothing for that camera of that device (the node then
        describes it from the device's record).
        """
        if stream in ('depth', 'ir'):
            model = self.depth_camera
            if model is None and self.given(kinect_id) is not None:
                model = self.given(kinect_id).depth
        else:
            calibration = self.given(kinect_id)
            model = calibration.color if calibration is not None else None
        if model is None:
            return None
        if (model.width, model.height) != (width, height):
            model = model.scaled(width, height)
        return model.camera_info_fields()


# --- the work --------------------------------------------------------------------------

class _Worker(object):
    """One thread doing one device's work, a latest-job slot per kind of work."""

    KINDS = ('depth', 'ir', 'color')

    def __init__(self, name, process, on_error):
        self._process = process
        self._on_error = on_error
        self._condition = threading.Condition()
        self._slots = {}
        self._stopping = False
        # Every key from the start: other threads sum them while this one counts.
        self.submitted = collections.Counter(dict.fromkeys(self.KINDS, 0))
        self.processed = collections.Counter(dict.fromkeys(self.KINDS, 0))
        self.skipped = collections.Counter(dict.fromkeys(self.KINDS, 0))
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, kind, job):
        """Put *job* in the slot of *kind*, replacing (and counting) one not started."""
        with self._condition:
            if kind in self._slots:
                self.skipped[kind] += 1
            self._slots[kind] = job
            self.submitted[kind] += 1
            self._condition.notify()

    def _run(self):
        while True:
            with self._condition:
                while not self._slots and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                kind = next(k for k in self.KINDS if k in self._slots)
                job = self._slots.pop(kind)
            try:
                self._process(kind, job)
            except Exception as err:  # one capture lost; the worker goes on
                self.failures += 1
                self._on_error(kind, err)
            self.processed[kind] += 1

    def close(self, timeout=10.0):
        """Drop the jobs waiting, stop the thread (after the job it is on) and join it."""
        with self._condition:
            self._stopping = True
            self._slots.clear()
            self._condition.notify()
        self._thread.join(timeout)


class DeviceLayout(object):
    """The kinect2_bridge topics of one device: publishers, frame matching, the worker.

    Created, fed (:py:meth:`on_frame`) and closed on the IOLoop thread; the worker
    thread computes and publishes.
    """

    def __init__(self, node, kinect_id, base, base_tf, calibration, color_offered, qos):
        """Create the publishers under *base* and start the worker."""
        self.node = node
        self.kinect_id = kinect_id
        self.base = base
        self.base_tf = base_tf
        self.calibration = calibration
        self.color_offered = color_offered
        self.frames = frame_ids(base_tf)
        self.registration = Registration(calibration)
        self.cameras = {res: getattr(self.registration, res) for res in RESOLUTIONS}
        self._infos = {res: camera.camera_info_fields()
                       for res, camera in self.cameras.items()}
        self._info_stamps = {}
        self.publishers = collections.OrderedDict()
        try:
            for output, kind in OUTPUTS.items():
                self.publishers[output] = create_overridable_publisher(
                    node, kind, '{0}/{1}'.format(base, output), qos)
        except BaseException:
            self._destroy_publishers()
            raise
        self._depths = collections.OrderedDict()   # sequence -> (frame, stamp ns)
        self._pending = collections.OrderedDict()  # colour frames waiting for their depth
        self._latest_depth = None
        self._rects = collections.OrderedDict()
        self._registered = collections.OrderedDict()
        self.counts = collections.Counter()        # outputs published, work done
        self.unmatched = 0
        self._error_log = LogThrottle(_LOG_EVERY)
        color = calibration.color
        #: The colour frame sizes taken: the calibration's (hd) and its half (qhd), those a
        #: server sends; frames of another size are refused before decoding (counted).
        self.color_sizes = ((int(color.width), int(color.height)),
                            (int(color.width) // 2, int(color.height) // 2))
        self.refused_color = 0
        self._refused_log = LogThrottle(_LOG_EVERY)
        self._worker = _Worker('kinect2-layout-' + sanitise_name(kinect_id), self._process,
                               self._failed)

    # --- IOLoop thread ---------------------------------------------------------------

    def wanted(self):
        """Return the outputs with a subscriber now (a set of keys of OUTPUTS)."""
        return {output for output, publisher in self.publishers.items()
                if publisher.get_subscription_count() > 0}

    def needed_streams(self):
        """Return the streams the outputs subscribed to now need."""
        return streams_needed(self.wanted(), self.color_offered)

    def _depth_outputs(self, wanted):
        return {output for output in wanted if output.endswith(('image_depth_rect',
                                                                'camera_info'))
                or (output.endswith('/points') and not self.color_offered)}

    def _color_outputs(self, wanted, with_depth):
        """Return the outputs of *wanted* a colour frame makes (*with_depth*: and depth)."""
        outputs = set()
        for output in wanted:
            res, name = output.split('/')
            if res != 'sd' and name in ('image_color', 'image_color_rect', 'camera_info'):
                outputs.add(output)
            elif with_depth and (output == 'sd/image_color_rect'
                                 or (name == 'points' and self.color_offered)):
                outputs.add(output)
        # camera_info alone goes out with the depth captures: no colour work for it.
        return outputs if any(not o.endswith('camera_info') for o in outputs) else set()

    def _needs_depth(self, wanted):
        """Tell whether colour-and-depth outputs are wanted."""
        return self._color_outputs(wanted, True) != self._color_outputs(wanted, False)

    def on_frame(self, stream, frame, stamp_ns):
        """Take one received frame of *stream* (stamped *stamp_ns*); queue the work."""
        wanted = self.wanted()
        if stream == 'depth':
            if self._latest_depth is not None and frame.sequence <= self._latest_depth:
                self.reset()  # the device started again: old captures match nothing
            self._depths[frame.sequence] = (frame, stamp_ns)
            while len(self._depths) > _RING:
                self._depths.popitem(last=False)
            self._latest_depth = frame.sequence
            outputs = self._depth_outputs(wanted)
            if outputs:
                self._worker.submit('depth', (frame, stamp_ns, outputs))
            for sequence in [s for s in self._pending if s <= frame.sequence]:
                color, color_stamp = self._pending.pop(sequence)
                self._queue_color(color, color_stamp, wanted, (frame, stamp_ns)
                                  if sequence == frame.sequence else None)
        elif stream == 'ir':
            if 'sd/image_ir_rect' in wanted:
                outputs = wanted & {'sd/image_ir_rect', 'sd/camera_info'}
                self._worker.submit('ir', (frame, stamp_ns, outputs))
        elif stream == 'color':
            if tuple(frame.shape) not in self.color_sizes:
                self._refuse_color(frame)
                return
            depth = None
            if frame.paired:
                depth = self._depths.get(frame.sequence)
                if depth is None and self._needs_depth(wanted) and (
                        self._latest_depth is None or frame.sequence > self._latest_depth):
                    # Its depth capture has not arrived yet (another socket): wait for it.
                    self._pending[frame.sequence] = (frame, stamp_ns)
                    while len(self._pending) > _PENDING_COLOR:
                        color, color_stamp = self._pending.popitem(last=False)[1]
                        self._queue_color(color, color_stamp, wanted, None)
                    return
            self._queue_color(frame, stamp_ns, wanted, depth)

    def _refuse_color(self, frame):
        """Count a colour frame of a size the calibration does not describe; say so at times."""
        self.refused_color += 1
        if self._refused_log.due():
            (hd_width, hd_height), (qhd_width, qhd_height) = self.color_sizes
            self.node.get_logger().error(
                'kinect2 layout of device {0}: colour frames of {1}x{2} refused ({3} so far): '
                'its colour camera is calibrated at {4}x{5}, and the layout takes frames of '
                '{4}x{5} (hd) or {6}x{7} (qhd) alone'.format(
                    self.kinect_id, frame.shape[0], frame.shape[1], self.refused_color,
                    hd_width, hd_height, qhd_width, qhd_height))

    def reset(self):
        """Forget the captures kept for matching (a new connection, a restarted device)."""
        self._depths.clear()
        self._pending.clear()
        self._latest_depth = None

    def _queue_color(self, frame, stamp_ns, wanted, depth):
        outputs = self._color_outputs(wanted, depth is not None)
        if depth is None and self._needs_depth(wanted):
            self.unmatched += 1  # colour-and-depth outputs wanted, no depth to pair with
        if outputs:
            stamp = depth[1] if depth is not None else stamp_ns
            self._worker.submit('color', (frame, stamp, depth[0] if depth else None, outputs))

    def close(self):
        """Stop the worker and release the publishers (IOLoop thread)."""
        self._worker.close()
        self._destroy_publishers()

    def _destroy_publishers(self):
        for publisher in self.publishers.values():
            self.node.destroy_publisher(publisher)
        self.publishers.clear()

    # --- figures (any thread) --------------------------------------------------------

    def figures(self):
        """Return the work counters: jobs per kind, skipped, unmatched, outputs published."""
        worker = self._worker
        figures = {'base': self.base, 'calibration': self.calibration.source,
                   'jobs': sum(worker.processed.values()),
                   'skipped': sum(worker.skipped.values()),
                   'unmatched_color': self.unmatched, 'color_refused': self.refused_color,
                   'failures': worker.failures}
        figures.update({'{0}_jobs'.format(kind): worker.processed[kind]
                        for kind in _Worker.KINDS})
        figures.update({'{0}_skipped'.format(kind): worker.skipped[kind]
                        for kind in _Worker.KINDS})
        for key in ('depth_rect', 'ir_rect', 'registered_depth', 'color_rect',
                    'color_to_depth', 'clouds'):
            figures[key] = self.counts[key]
        for output in OUTPUTS:
            figures[output] = self.counts[output]
        return figures

    # --- worker thread ---------------------------------------------------------------

    def _failed(self, kind, err):
        if not self.node.context.ok():
            return
        if self._error_log.due():
            self.node.get_logger().error(
                'kinect2 layout of device {0}: a {1} capture was lost ({2} so far): '
                '{3}: {4}'.format(self.kinect_id, kind, self._worker.failures,
                                  type(err).__name__, err))

    def _process(self, kind, job):
        if kind == 'depth':
            self._process_depth(*job)
        elif kind == 'ir':
            self._process_ir(*job)
        else:
            self._process_color(*job)

    def _publish(self, output, msg):
        self.publishers[output].publish(msg)
        self.counts[output] += 1

    def _publish_image(self, output, pixels, stamp_ns):
        res = output.split('/')[0]
        self._publish(output, fill_image(Image(), pixels, self.frames[res], stamp_ns))

    def _publish_info(self, res, stamp_ns, outputs):
        output = res + '/camera_info'
        if output in outputs and self._info_stamps.get(res) != stamp_ns:
            self._info_stamps[res] = stamp_ns  # once per stamp (depth and colour jobs)
            self._publish(output, fill_camera_info(CameraInfo(), self._infos[res],
                                                   self.frames[res], stamp_ns))

    def _publish_cloud(self, res, points, stamp_ns):
        self._publish(res + '/points', fill_point_cloud(PointCloud2(), points,
                                                        self.frames[res], stamp_ns))

    @staticmethod
    def _remember(cache, key, value):
        cache[key] = value
        while len(cache) > _CACHE:
            cache.popitem(last=False)
        return value

    def _depth_rect(self, frame):
        key = (frame.sequence, frame.timestamp_ns)  # the sequence alone restarts
        rect = self._rects.get(key)
        if rect is None:
            self.counts['depth_rect'] += 1
            rect = self._remember(self._rects, key, self.registration.depth_rect(frame.array))
        return rect

    def _registered_depth(self, frame, res):
        key = (frame.sequence, frame.timestamp_ns, res)
        depth = self._registered.get(key)
        if depth is None:
            self.counts['registered_depth'] += 1
            depth = self._remember(self._registered, key, self.registration.register_depth(
                self._depth_rect(frame), self.cameras[res]))
        return depth

    def _points(self, depth, res, color=None):
        self.counts['clouds'] += 1
        return self.registration.points(depth, self.cameras[res], color=color)

    def _process_depth(self, frame, stamp_ns, outputs):
        if 'sd/image_depth_rect' in outputs:
            self._publish_image('sd/image_depth_rect', self._depth_rect(frame), stamp_ns)
        if 'sd/points' in outputs:  # a device without colour: XYZ
            self._publish_cloud('sd', self._points(self._depth_rect(frame), 'sd'), stamp_ns)
        self._publish_info('sd', stamp_ns, outputs)
        for res in ('qhd', 'hd'):
            if res + '/image_depth_rect' in outputs:
                self._publish_image(res + '/image_depth_rect',
                                    self._registered_depth(frame, res), stamp_ns)
            if res + '/points' in outputs:
                self._publish_cloud(res, self._points(self._registered_depth(frame, res),
                                                      res), stamp_ns)
            self._publish_info(res, stamp_ns, outputs)

    def _process_ir(self, frame, stamp_ns, outputs):
        self.counts['ir_rect'] += 1
        self._publish_image('sd/image_ir_rect', self.registration.ir_rect(frame.array),
                            stamp_ns)
        self._publish_info('sd', stamp_ns, outputs)

    def _process_color(self, frame, stamp_ns, depth, outputs):
        bgr = frame.array  # decoded here, off the IOLoop thread
        for res in ('qhd', 'hd'):
            camera = self.cameras[res]
            if res + '/image_color' in outputs:
                self._publish_image(res + '/image_color', _resized(bgr, camera), stamp_ns)
            rect = None
            if res + '/image_color_rect' in outputs or res + '/points' in outputs:
                self.counts['color_rect'] += 1
                rect = self.registration.color_rect(bgr, camera)
            if res + '/image_color_rect' in outputs:
                self._publish_image(res + '/image_color_rect', rect, stamp_ns)
            if res + '/points' in outputs:
                self._publish_cloud(res, self._points(self._registered_depth(depth, res),
                                                      res, rect), stamp_ns)
            self._publish_info(res, stamp_ns, outputs)
        if outputs & {'sd/image_color_rect', 'sd/points'}:
            rect = self._depth_rect(depth)
            self.counts['color_to_depth'] += 1
            registered = self.registration.color_to_depth(bgr, rect)
            if 'sd/image_color_rect' in outputs:
                self._publish_image('sd/image_color_rect', registered, stamp_ns)
            if 'sd/points' in outputs:
                self._publish_cloud('sd', self._points(rect, 'sd', registered), stamp_ns)


def _resized(bgr, camera):
    """Return the received colour image *bgr* at the size of *camera* (as it is if equal)."""
    if (bgr.shape[1], bgr.shape[0]) == (camera.width, camera.height):
        return bgr
    import cv2
    smaller = camera.width < bgr.shape[1]
    return cv2.resize(bgr, (camera.width, camera.height),
                      interpolation=cv2.INTER_AREA if smaller else cv2.INTER_LINEAR)


# --- the node's part -------------------------------------------------------------------

class Kinect2Layout(object):
    """The kinect2_bridge layout of a client node: a :py:class:`DeviceLayout` per device.

    Created in the node's ``__init__`` (checks the names; a ValueError stops the node);
    devices are added, fed and removed on the IOLoop thread.
    """

    def __init__(self, node, params, sources, qos):
        """Check *params*' names, set up TF; *sources* are the node's CalibrationSources."""
        self.node = node
        self.base_name = params['base_name'].rstrip('/')
        self.base_name_tf = params['base_name_tf']
        self.sources = sources
        self.qos = qos
        self.devices = {}
        self._check_names()
        self.tf = None
        if params['publish_tf']:
            missing = tf2_msgs_missing()
            if missing is None:
                self.tf = StaticTfPublisher(node)
            else:
                node.get_logger().warning('publish_tf: ' + missing)

    def _check_names(self):
        from rclpy.validate_topic_name import validate_topic_name

        if not self.base_name:
            raise ValueError('base_name must not be empty')
        sample = self.base_name.replace('{device}', 'device') + '_device/sd/points'
        try:
            validate_topic_name(sample)
        except Exception as err:
            raise ValueError('base_name {0!r} does not make valid topic names: {1}'.format(
                self.base_name, err)) from None
        if '/' in self.base_name_tf or ' ' in self.base_name_tf:
            raise ValueError('base_name_tf {0!r}: a frame id prefix has no / nor '
                             'spaces'.format(self.base_name_tf))

    def names(self, kinect_id):
        """Return ``(base, base_tf)`` for a new device: the plain ones if free, else suffixed."""
        device = sanitise_name(kinect_id)
        taken = {layout.base for layout in self.devices.values()}
        if '{device}' in self.base_name:
            base = self.base_name.replace('{device}', device)
        elif self.base_name not in taken:
            base = self.base_name
        else:
            base = '{0}_{1}'.format(self.base_name, device)
        plain = base == self.base_name
        if not self.base_name_tf:
            base_tf = base.strip('/').replace('/', '_')
        elif '{device}' in self.base_name_tf:
            base_tf = self.base_name_tf.replace('{device}', device)
        else:
            base_tf = self.base_name_tf if plain else '{0}_{1}'.format(self.base_name_tf,
                                                                       device)
        return base, base_tf

    def add_device(self, kinect_id, record, color_offered):
        """Publish the layout of device *kinect_id* (again, after a reconnection)."""
        calibration = self.sources.calibration(kinect_id, record)
        old = self.devices.get(kinect_id)
        if old is not None:
            if old.calibration == calibration and old.color_offered == color_offered:
                old.reset()  # (IOLoop thread, as on_frame)
                return old
            self.remove_device(kinect_id)
        base, base_tf = self.names(kinect_id)
        layout = DeviceLayout(self.node, kinect_id, base, base_tf, calibration,
                              color_offered, self.qos)
        self.devices[kinect_id] = layout
        if self.tf is not None:
            self.tf.publish(static_transforms(calibration, base_tf,
                                              self.node.get_clock().now().nanoseconds))
        self.node.get_logger().info(
            'Device {0}: kinect2_bridge topics under {1}, frames {2}_rgb_optical_frame and '
            '{2}_ir_optical_frame, calibration: {3}'.format(
                kinect_id, self.node.resolve_topic_name(base), base_tf, calibration.source))
        return layout

    def remove_device(self, kinect_id):
        """Stop the work and release the publishers of device *kinect_id*."""
        layout = self.devices.pop(kinect_id, None)
        if layout is not None:
            layout.close()

    def on_frame(self, kinect_id, stream, frame, stamp_ns):
        """Hand a received frame to its device's layout (IOLoop thread)."""
        layout = self.devices.get(kinect_id)
        if layout is not None:
            layout.on_frame(stream, frame, stamp_ns)

    def needed_streams(self, kinect_id):
        """Return the streams of *kinect_id* its subscribed layout topics need."""
        layout = self.devices.get(kinect_id)
        return layout.needed_streams() if layout is not None else set()

    def figures(self, kinect_id):
        """Return the layout's figures of *kinect_id* (None if it has none)."""
        layout = self.devices.get(kinect_id)
        return layout.figures() if layout is not None else None

    def close(self):
        """Stop every device's work and release the publishers."""
        for kinect_id in list(self.devices):
            self.remove_device(kinect_id)
