"""Launch the streamkinect2 client node: publish a server's depth, IR and colour streams.

    ros2 launch streamkinect2_ros client.launch.py
    ros2 launch streamkinect2_ros client.launch.py server_name:=lab
    ros2 launch streamkinect2_ros client.launch.py server_endpoint:=tcp://192.168.1.20:5555
    ros2 launch streamkinect2_ros client.launch.py streams:='[depth, color]'
    ros2 launch streamkinect2_ros client.launch.py kinect2_layout:=true calib_path:=~/calib

Parameters come from ``config/client.yaml`` (``client_params_file:=`` for another file);
the arguments below override it when given.
"""
from launch import LaunchDescription
from launch.actions import OpaqueFunction
from streamkinect2_ros import launching
from streamkinect2_ros.client_node import NODE_NAME, PARAMETERS

CLIENT_ARGUMENTS = ('server_endpoint', 'server_name', 'discovery_address', 'devices',
                    'streams', 'frame_id', 'color_frame_id', 'stamp_source',
                    'qos_reliability', 'qos_depth', 'kinect2_layout', 'base_name',
                    'base_name_tf', 'publish_tf', 'calib_path', 'camera_info_url')


def launch_setup(context):
    """Create the client node with the overrides given."""
    return [launching.node(context, 'client_node', NODE_NAME, PARAMETERS, CLIENT_ARGUMENTS,
                           'client_params_file')]


def generate_launch_description():
    """Declare the arguments and start the client node."""
    return LaunchDescription(
        launching.declare_arguments(PARAMETERS, CLIENT_ARGUMENTS, 'client_params_file',
                                    'client.yaml')
        + [OpaqueFunction(function=launch_setup)])
