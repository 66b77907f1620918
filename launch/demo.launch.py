"""Launch the demo: a mock server node and a client node publishing its streams.

    ros2 launch streamkinect2_ros demo.launch.py
    ros2 launch streamkinect2_ros demo.launch.py mock_count:=2 mock_fps:=15.0
    ros2 launch streamkinect2_ros demo.launch.py qos_reliability:=reliable  # RViz, rqt
    ros2 launch streamkinect2_ros demo.launch.py streams:='[depth, color]' color_resolution:=qhd
    ros2 launch streamkinect2_ros demo.launch.py kinect2_layout:=true   # + /kinect2/{sd,qhd,hd}

The server announces itself on the loopback interface only (``address:=127.0.0.1``) as
``server_name``, and the client discovers it there by that name. Images appear on
``<namespace>/<device>/depth/image_raw``, ``.../ir/image_raw``, ``.../color/image_raw``
and ``.../color/image_raw/compressed`` (``/mock0/depth/image_raw`` by default).
``streams`` goes to both nodes: the streams the mock devices offer and the client
publishes. The launch stops (exit code 1) when either node exits by itself. Without a
ROS installation, ``python -m streamkinect2_ros.demo`` does the same.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from streamkinect2_ros import client_node, launching, server_node

#: Arguments given to both nodes (declared once).
SHARED_ARGUMENTS = ('streams',)
SERVER_ARGUMENTS = ('color_quality', 'color_resolution', 'mock_count', 'mock_fps',
                    'mock_ids')
CLIENT_ARGUMENTS = ('frame_id', 'color_frame_id', 'stamp_source', 'qos_reliability',
                    'qos_depth', 'kinect2_layout', 'base_name', 'publish_tf')


def launch_setup(context):
    """Create the server and client nodes, paired by server name and address."""
    name = LaunchConfiguration('server_name').perform(context)
    address = LaunchConfiguration('address').perform(context)
    server = launching.node(
        context, 'server_node', server_node.NODE_NAME, server_node.PARAMETERS,
        SHARED_ARGUMENTS + SERVER_ARGUMENTS, 'server_params_file',
        fixed={'server_name': name, 'address': address, 'announce': True, 'device': 'mock'})
    client = launching.node(
        context, 'client_node', client_node.NODE_NAME, client_node.PARAMETERS,
        SHARED_ARGUMENTS + CLIENT_ARGUMENTS, 'client_params_file',
        fixed={'server_name': name, 'discovery_address': address, 'server_endpoint': ''})
    return [server, client]


def generate_launch_description():
    """Declare the arguments and start both nodes."""
    return LaunchDescription(
        launching.declare_arguments(server_node.PARAMETERS, SERVER_ARGUMENTS,
                                    'server_params_file', 'server.yaml')
        + launching.declare_arguments(client_node.PARAMETERS, CLIENT_ARGUMENTS)
        + [DeclareLaunchArgument('streams', default_value='',
                                 description='Streams the mock devices offer and the client '
                                 "publishes, of depth, ir and color (e.g. '[depth, color]'; "
                                 'empty: as in the parameter files, all)'),
           DeclareLaunchArgument('client_params_file',
                                 default_value=launching.share_path('client.yaml'),
                                 description='YAML parameter file of the client node'),
           DeclareLaunchArgument('server_name', default_value='streamkinect2 demo',
                                 description='Name the server announces and the client '
                                 'discovers'),
           DeclareLaunchArgument('address', default_value='127.0.0.1',
                                 description='Interface the server binds and announces '
                                 'on, and the client discovers on'),
           OpaqueFunction(function=launch_setup)])
