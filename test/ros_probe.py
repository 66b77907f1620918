"""A subscriber to run inside a test host: counts Images and checks them against the mock.

``python test/ros_probe.py TOPIC SECONDS`` prints, every half second, ``images N exact M
frame_id F`` (N received so far, M of them equal byte for byte to the mock frame whose
sequence number they carry), and exits after SECONDS.
"""
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from streamkinect2.mock import MockKinect


def main(topic, seconds):
    """Subscribe to *topic* for *seconds* s, printing counts."""
    rclpy.init()
    node = rclpy.create_node('streamkinect2_probe')
    counts = {'images': 0, 'exact': 0, 'frame_id': ''}

    def on_image(msg):
        pixels = np.frombuffer(msg.data, dtype=np.uint16).reshape(msg.height, msg.width)
        counts['images'] += 1
        counts['frame_id'] = msg.frame_id if hasattr(msg, 'frame_id') else msg.header.frame_id
        if msg.encoding == '16UC1' and msg.step == 2 * msg.width and np.array_equal(
                pixels, MockKinect.render_frame(MockKinect.sequence_of(pixels))):
            counts['exact'] += 1
    node.create_subscription(Image, topic, on_image, qos_profile_sensor_data)
    deadline = time.monotonic() + seconds
    next_report = time.monotonic()
    try:
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
            if time.monotonic() >= next_report:
                print('images {images} exact {exact} frame_id {frame_id}'.format(**counts),
                      flush=True)
                next_report += 0.5
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main(sys.argv[1], float(sys.argv[2]))
