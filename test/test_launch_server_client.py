"""launch_testing: ``server.launch.py`` and ``client.launch.py`` against each other.

Both launch files, included with arguments as a user gives them, started by the real
launch machinery (launch_testing) on 127.0.0.1 under a server name of this test's own:
the nodes come up, the client publishes both mock devices' depth and IR (and no colour:
``streams:=[depth, ir]``) in its namespace, with the QoS asked for; when the launch
shuts down (SIGINT to each node) every node exits 0 and nothing logs a traceback.
Skips, saying why, without launch_testing (``./dev.sh`` installs it).
"""
import unittest

import launch_helpers
import pytest
import ros_helpers

MISSING = launch_helpers.missing_launch_packages()

if MISSING is not None:
    def test_launch_files_with_launch_testing():
        launch_helpers.require_launch_packages()
else:
    import launch
    import launch_testing.actions
    import launch_testing.asserts
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    SETUP = launch_helpers.LaunchTestSetup()
    SERVER_NAME = ros_helpers.unique('launch test ')
    DEVICES = ('m0', 'm1')
    NAMESPACE = '/cam'

    @pytest.mark.launch_test
    def generate_test_description():
        """Include both launch files with arguments, on loopback."""
        SETUP.start()
        return launch.LaunchDescription([
            launch_helpers.include('server.launch.py', {
                'address': ros_helpers.LOOPBACK, 'server_name': SERVER_NAME,
                'mock_count': '2', 'mock_ids': '[{0}]'.format(', '.join(DEVICES)),
                'mock_fps': '15.0'}),
            launch_helpers.include('client.launch.py', {
                'namespace': NAMESPACE, 'server_name': SERVER_NAME,
                'discovery_address': ros_helpers.LOOPBACK, 'streams': '[depth, ir]',
                'qos_reliability': 'reliable', 'qos_depth': '2'}),
            launch_testing.actions.ReadyToTest(),
        ])

    class TestServerAndClient(unittest.TestCase):
        """While the launch runs."""

        def test_both_devices_publish_depth_and_ir_reliably(self):
            with ros_helpers.TestSubscriber() as sub:
                topics = {}
                for device in DEVICES:
                    for stream in ('depth', 'ir'):
                        base = '{0}/{1}/{2}/'.format(NAMESPACE, device, stream)
                        topics[base + 'image_raw'] = Image
                        topics[base + 'camera_info'] = CameraInfo
                # A reliable subscription gets nothing from a best-effort publisher.
                first = launch_helpers.receive(sub, topics, QoSProfile(
                    depth=2, reliability=ReliabilityPolicy.RELIABLE))
                for topic, message in first.items():
                    if isinstance(message, Image):
                        self.assertEqual((message.encoding, message.width, message.height),
                                         ('16UC1', 512, 424), topic)
                graph = launch_helpers.topic_types(sub)
                for topic, message_class in topics.items():
                    self.assertEqual(graph.get(topic), 'sensor_msgs/msg/' +
                                     message_class.__name__)
                    for info in sub.node.get_publishers_info_by_topic(topic):
                        self.assertEqual(info.qos_profile.reliability,
                                         ReliabilityPolicy.RELIABLE, topic)
                self.assertFalse([name for name in graph if '/color/' in name], graph)

    @launch_testing.post_shutdown_test()
    class TestShutdown(unittest.TestCase):
        """After the launch shut the nodes down with SIGINT."""

        @classmethod
        def tearDownClass(cls):
            SETUP.finish()

        def test_every_node_exited_0(self, proc_info):
            self.assertEqual(len(proc_info.process_names()), 2)
            launch_testing.asserts.assertExitCodes(proc_info)

        def test_no_traceback_or_error(self, proc_output):
            self.assertEqual(launch_helpers.output_problems(proc_output), [])
