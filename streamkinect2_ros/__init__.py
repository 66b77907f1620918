"""ROS 2 nodes for streamkinect2: a depth stream server and a client that publishes Images.

The nodes are thin: the streaming itself is the plain-Python :py:mod:`streamkinect2`
library, run on a tornado IOLoop thread beside the rclpy executor
(:py:class:`streamkinect2_ros.ioloop.IOLoopThread`).
"""
