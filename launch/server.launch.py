"""Launch the streamkinect2 server node (mock devices by default).

    ros2 launch streamkinect2_ros server.launch.py
    ros2 launch streamkinect2_ros server.launch.py address:=192.168.1.20 server_name:=lab
    ros2 launch streamkinect2_ros server.launch.py color_resolution:=qhd color_quality:=75

Parameters come from ``config/server.yaml`` (``server_params_file:=`` for another file);
the arguments below override it when given.
"""
from launch import LaunchDescription
from launch.actions import OpaqueFunction
from streamkinect2_ros import launching
from streamkinect2_ros.server_node import NODE_NAME, PARAMETERS

SERVER_ARGUMENTS = ('server_name', 'address', 'announce', 'control_port', 'device',
                    'streams', 'color_quality', 'color_resolution', 'mock_count',
                    'mock_fps', 'mock_ids')


def launch_setup(context):
    """Create the server node with the overrides given."""
    return [launching.node(context, 'server_node', NODE_NAME, PARAMETERS, SERVER_ARGUMENTS,
                           'server_params_file')]


def generate_launch_description():
    """Declare the arguments and start the server node."""
    return LaunchDescription(
        launching.declare_arguments(PARAMETERS, SERVER_ARGUMENTS, 'server_params_file',
                                    'server.yaml')
        + [OpaqueFunction(function=launch_setup)])
