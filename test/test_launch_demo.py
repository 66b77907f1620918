"""launch_testing: ``demo.launch.py`` alone (a mock server node and a client node).

Started by the real launch machinery (launch_testing) with arguments as a user gives them,
under a server name of this test's own, on 127.0.0.1 (the demo's default address): the
client publishes the mock device's depth and compressed colour (``streams:=[depth,
color]``, so no IR), reliably as ``qos_reliability:=reliable`` asks (a reliable
subscriber such as RViz gets nothing from a best-effort publisher); when the launch shuts
down (SIGINT to each node) both nodes exit 0 and nothing logs a traceback. Skips, saying
why, without launch_testing (``./dev.sh`` installs it).
"""
import unittest

import launch_helpers
import pytest
import ros_helpers

MISSING = launch_helpers.missing_launch_packages()

if MISSING is not None:
    def test_demo_launch_file_with_launch_testing():
        launch_helpers.require_launch_packages()
else:
    import launch
    import launch_testing.actions
    import launch_testing.asserts
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    SETUP = launch_helpers.LaunchTestSetup()
    TOPICS = {'/mock0/depth/image_raw': Image, '/mock0/depth/camera_info': CameraInfo,
              '/mock0/color/image_raw/compressed': CompressedImage,
              '/mock0/color/camera_info': CameraInfo}

    @pytest.mark.launch_test
    def generate_test_description():
        """Include demo.launch.py with arguments."""
        SETUP.start()
        return launch.LaunchDescription([
            launch_helpers.include('demo.launch.py', {
                'server_name': ros_helpers.unique('launch demo '), 'mock_fps': '15.0',
                'streams': '[depth, color]', 'qos_reliability': 'reliable',
                'qos_depth': '3'}),
            launch_testing.actions.ReadyToTest(),
        ])

    class TestDemo(unittest.TestCase):
        """While the launch runs."""

        def test_depth_and_colour_reach_a_reliable_subscriber(self):
            with ros_helpers.TestSubscriber() as sub:
                first = launch_helpers.receive(sub, TOPICS, QoSProfile(
                    depth=3, reliability=ReliabilityPolicy.RELIABLE))
                depth = first['/mock0/depth/image_raw']
                self.assertEqual((depth.encoding, depth.width, depth.height),
                                 ('16UC1', 512, 424))
                jpeg = first['/mock0/color/image_raw/compressed']
                self.assertTrue(jpeg.format.endswith('jpeg compressed bgr8'), jpeg.format)
                self.assertEqual(bytes(jpeg.data[:2]), b'\xff\xd8')
                graph = launch_helpers.topic_types(sub)
                for topic, message_class in TOPICS.items():
                    self.assertEqual(graph.get(topic), '{0}/msg/{1}'.format(
                        message_class.__module__.split('.')[0], message_class.__name__))
                    infos = sub.node.get_publishers_info_by_topic(topic)
                    self.assertTrue(infos, topic)
                    for info in infos:
                        self.assertEqual(info.qos_profile.reliability,
                                         ReliabilityPolicy.RELIABLE, topic)
                self.assertFalse([name for name in graph if '/ir/' in name], graph)

    @launch_testing.post_shutdown_test()
    class TestShutdown(unittest.TestCase):
        """After the launch shut the nodes down with SIGINT."""

        @classmethod
        def tearDownClass(cls):
            SETUP.finish()

        def test_both_nodes_exited_0(self, proc_info):
            self.assertEqual(len(proc_info.process_names()), 2)
            launch_testing.asserts.assertExitCodes(proc_info)

        def test_no_traceback_or_error(self, proc_output):
            self.assertEqual(launch_helpers.output_problems(proc_output), [])
