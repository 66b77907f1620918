"""Delivering large Images without loss: the Fast DDS profile and where frames go missing.

The client node takes the shipped Fast DDS profile (``config/fastdds_large_data.xml``)
unless the user configured Fast DDS: checked in the node's process by the shared-memory
segment Fast DDS maps there (its size is the profile's). Its ``/diagnostics`` tell, per
stream, the frames received from the server, lost on the way (missing sequence numbers),
dropped in the node and published: checked against a stand-in server that leaves gaps in
its sequence and sends colour that cannot be decoded. Speed belongs in
``bench/bench_ros.py``.
"""
import fnmatch
import os
import re
import sys
import time
import xml.etree.ElementTree as ElementTree

import pytest

ros_helpers = pytest.importorskip('ros_helpers')  # sets the ROS environment first
rclpy = pytest.importorskip('rclpy')
diagnostic_msgs = pytest.importorskip('diagnostic_msgs.msg')

from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from streamkinect2.device import STREAMS  # noqa: E402
from streamkinect2_ros import client_node  # noqa: E402
from test_ros_streams import start_client, StreamServer  # noqa: E402

PROFILE = os.path.join(ros_helpers.CONFIG, client_node.FASTDDS_PROFILE)
#: The profile the node takes: the installed one (a colcon workspace's share directory)
#: or, from the source tree, PROFILE.
USED = client_node.config_path(client_node.FASTDDS_PROFILE)
NAMESPACE = '{http://www.eprosima.com}'
#: The segment Fast DDS maps in a participant's process: /dev/shm/fastdds_<16 hex digits>.
SEGMENT = re.compile(r'\s/dev/shm/fastdds_[0-9a-f]{16}$')
#: The smallest segment measured to lose nothing at 4 devices x 30 fps (bench_ros.py).
ENOUGH = 2 * 1024 * 1024


def profile_tree():
    """Return the shipped profile's root element."""
    return ElementTree.parse(PROFILE).getroot()


def local(tag):
    """Return *tag* without its XML namespace."""
    return tag.rsplit('}', 1)[-1]


def shm_segment_size(root):
    """Return the segment_size of the profile's SHM transport descriptor."""
    for descriptor in root.iter(NAMESPACE + 'transport_descriptor'):
        if descriptor.findtext(NAMESPACE + 'type') == 'SHM':
            return int(descriptor.findtext(NAMESPACE + 'segment_size'))
    raise AssertionError('no SHM transport descriptor')


def fastdds_xsd():
    """Return the text of the installed Fast DDS's profile schema, or skip."""
    for prefix in (sys.prefix, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)[0]):
        path = os.path.join(prefix, 'share', 'fastdds', 'fastdds_profiles.xsd')
        if prefix and os.path.exists(path):
            with open(path) as xsd:
                return xsd.read()
    pytest.skip('fastdds_profiles.xsd not installed')


def test_the_profile_is_a_valid_default_participant_profile():
    root = profile_tree()
    assert local(root.tag) == 'dds'
    # Every element is one the installed Fast DDS's schema declares.
    declared = set(re.findall(r'<xs:element name="([A-Za-z_]+)"', fastdds_xsd()))
    used = {local(element.tag) for element in root.iter()}
    assert used <= declared | {'dds'}, used - declared
    participants = root.findall('{0}profiles/{0}participant'.format(NAMESPACE))
    assert len(participants) == 1
    participant = participants[0]
    assert participant.get('is_default_profile') == 'true'
    rtps = participant.find(NAMESPACE + 'rtps')
    assert rtps.findtext(NAMESPACE + 'useBuiltinTransports') == 'false'
    # The transports it uses are those it describes: shared memory and UDPv4 (the
    # network, and discovery), as Fast DDS's defaults, with a larger segment.
    described = {d.findtext(NAMESPACE + 'transport_id'): d.findtext(NAMESPACE + 'type')
                 for d in root.iter(NAMESPACE + 'transport_descriptor')}
    used_ids = [t.text for t in rtps.iter(NAMESPACE + 'transport_id')]
    assert sorted(described[i] for i in used_ids) == ['SHM', 'UDPv4']
    assert shm_segment_size(root) >= ENOUGH


def test_the_profile_is_installed_with_the_package():
    with open(os.path.join(ros_helpers.REPO, 'setup.py')) as setup:
        patterns = re.findall(r"glob\('(config/[^']*)'\)", setup.read())
    assert any(fnmatch.fnmatch('config/' + client_node.FASTDDS_PROFILE, pattern)
               for pattern in patterns), patterns


def test_the_user_choice_of_fastdds_configuration_is_kept(tmp_path):
    with open(USED, 'rb') as used, open(PROFILE, 'rb') as source:
        assert used.read() == source.read()  # the installed file is the shipped one
    shipped = {'FASTDDS_DEFAULT_PROFILES_FILE': USED}
    assert client_node.large_data_profile_env({}, str(tmp_path)) == shipped
    assert client_node.large_data_profile_env({'ROS_DISTRO': 'jazzy'}, str(tmp_path)) == {
        'FASTRTPS_DEFAULT_PROFILES_FILE': USED}
    for name in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                 'FASTDDS_BUILTIN_TRANSPORTS', 'SKIP_DEFAULT_XML_FILE'):
        assert client_node.large_data_profile_env({name: 'x'}, str(tmp_path)) == {}
    (tmp_path / 'DEFAULT_FASTDDS_PROFILES.xml').write_text('<dds/>')
    assert client_node.large_data_profile_env({}, str(tmp_path)) == {}


def mapped_segment(pid):
    """Return the size of the Fast DDS segment mapped in process *pid* (None: none yet)."""
    try:
        with open('/proc/{0}/maps'.format(pid)) as maps:
            sizes = [int(end, 16) - int(start, 16)
                     for start, end in (line.split()[0].split('-')
                                        for line in maps if SEGMENT.search(line.rstrip()))]
    except OSError:
        return None
    return max(sizes) if sizes else None


def wait_for_segment(node, timeout=60.0):
    """Return the size of the segment *node*'s process maps, once it maps one."""
    deadline = time.monotonic() + timeout
    while mapped_segment(node.pid) is None:
        assert node.proc.poll() is None, node.output()
        assert time.monotonic() < deadline, node.output()
        time.sleep(0.05)
    return mapped_segment(node.pid)


@pytest.mark.parametrize('choice', [None, 'FASTDDS_BUILTIN_TRANSPORTS'])
def test_the_client_node_takes_the_shipped_profile_unless_fastdds_is_configured(
        monkeypatch, choice):
    for name in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                 'FASTDDS_BUILTIN_TRANSPORTS', 'SKIP_DEFAULT_XML_FILE', 'ROS_DISTRO'):
        monkeypatch.delenv(name, raising=False)
    if choice:
        monkeypatch.setenv(choice, 'DEFAULT')  # Fast DDS's own defaults, chosen
    endpoint = 'tcp://{0}:{1}'.format(ros_helpers.LOOPBACK, ros_helpers.free_port())
    with start_client('/' + ros_helpers.unique('t'), server_endpoint=endpoint) as node:
        size = wait_for_segment(node)
        if choice:
            assert size < ENOUGH, size  # 512 KiB, Fast DDS's default
            node.wait_for_output("Fast DDS profile: none (Fast DDS's defaults", 30.0)
        else:
            assert size >= shm_segment_size(profile_tree()), size
            node.wait_for_output('Fast DDS profile: {0}'.format(USED), 30.0)


class GappyServer(StreamServer):
    """The stand-in server, silent until :py:meth:`go`, skipping every 4th sequence.

    ``sequences`` lists the captures sent after :py:meth:`go`, ``skipped`` the
    sequences left out in between.
    """

    def __init__(self, *args, **kwargs):
        """Start the stand-in, silent."""
        self.gate = False
        self.sequences = []
        self.skipped = []
        super().__init__(*args, **kwargs)

    def go(self):
        """Send captures from now on."""
        self.gate = True

    def _send_capture(self, sequence):
        if not self.gate:
            return
        if sequence % 4 == 0:
            self.skipped.append(sequence)
            return
        super()._send_capture(sequence)
        self.sequences.append(sequence)


def test_diagnostics_tell_where_frames_go_missing():
    device = ros_helpers.unique('rgbd_')
    namespace = '/' + ros_helpers.unique('t')
    with GappyServer(device, 'qhd', period=0.05, damaged=True) as fake, \
            ros_helpers.TestSubscriber() as sub, \
            start_client(namespace, server_endpoint=fake.endpoint) as client:
        diagnostics = {}

        def on_diagnostics(msg):
            for status in msg.status:
                if client_node.NODE_NAME in status.name and status.hardware_id == device:
                    diagnostics.clear()
                    diagnostics.update((v.key, v.value) for v in status.values)
                    diagnostics['at'] = time.monotonic()
        sub.node.create_subscription(diagnostic_msgs.DiagnosticArray, '/diagnostics',
                                     on_diagnostics, 10)
        # A subscriber to color/image_raw: the node decodes, and damaged JPEGs fail.
        colour = []
        sub.node.create_subscription(Image, '{0}/{1}/color/image_raw'.format(
            namespace, device), colour.append, qos_profile_sensor_data)
        sub.spin_until(lambda: fake.subscribed == set(STREAMS), 60.0,
                       'the client subscribed to every stream')
        fake.go()
        sub.spin_until(lambda: colour and int(diagnostics.get('published', 0)) >= 20
                       and int(diagnostics.get('color_dropped_in_node', 0)) > 2,
                       60.0, 'captures published, colour frames dropped in the node')
        fake.streaming.clear()
        moment = time.monotonic() + 0.3  # a capture being sent as it was cleared
        sub.spin_until(lambda: time.monotonic() > moment, 5.0, 'the last capture')
        sent = list(fake.sequences)
        settled = time.monotonic() + 1.0
        sub.spin_until(lambda: diagnostics.get('at', 0) > settled, 20.0,
                       'diagnostics after the last capture')
        gaps = [s for s in fake.skipped if sent[0] < s < sent[-1]]
        for stream in STREAMS:
            prefix = '' if stream == 'depth' else stream + '_'

            def value(key):
                return int(diagnostics[prefix + key])
            # Every capture sent reached the node; the gaps are lost on the way.
            assert value('received') == len(sent), (stream, diagnostics)
            assert value('dropped') == len(gaps), (stream, diagnostics)
            assert value('invalid') == 0, (stream, diagnostics)
            # What the node got is published, or dropped in the node: nothing else.
            assert value('published') + value('dropped_in_node') == len(sent), (
                stream, diagnostics)
            if stream == 'color':  # the JPEGs that would not decode for image_raw
                assert 0 < value('dropped_in_node') <= sum(s % 2 for s in sent)
            else:
                assert value('dropped_in_node') == 0, (stream, diagnostics)
        client.wait_for_output('received (', 10.0)
        assert 'dropped in the node' in client.output()
