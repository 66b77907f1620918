"""Install streamkinect2 (plain Python library) and streamkinect2_ros (ROS 2 nodes).

The package is an ament_python package (``colcon build``), and also a plain pip
package: ``pip install .[ros]`` pulls the ROS 2 wheels from PyPI for use without a
ROS distribution.
"""
from glob import glob
import os

from setuptools import setup

package_name = 'streamkinect2_ros'

# ROS 2 from PyPI wheels (ROS 2 Kilted builds) for machines without a ROS distribution.
ROS_WHEELS = [
    'ros-rclpy',
    'ros-rmw-fastrtps-cpp',
    'ros-sensor-msgs',
    'ros-std-msgs',
    'ros-builtin-interfaces',
    'ros-diagnostic-msgs',
    'ros-geometry-msgs',
]

setup(
    name=package_name,
    version='0.2.0',
    packages=['streamkinect2', package_name],
    package_data={'streamkinect2': ['py.typed']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        (os.path.join('share', package_name, 'launch'), glob('launch/*.launch.py')),
        (os.path.join('share', package_name, 'config'),
         glob('config/*.yaml') + glob('config/*.xml')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'setuptools',
        'numpy>=1.22',
        'pyzmq>=23',
        'tornado>=6.1',
        'zeroconf>=0.131',
        'blinker>=1.6',
        'zstandard>=0.22',
        # Colour: JPEG through libjpeg-turbo (chosen by measurement: bench/bench_streams.py).
        'simplejpeg>=1.9',
        # The qhd colour mode's 2 x 2 box mean; registration, undistortion and point
        # clouds on the receiving machine.
        'opencv-python-headless>=4.5',
    ],
    extras_require={
        'ros': ROS_WHEELS,
        # pytest < 9: launch_testing's pytest plugin (a ROS 2 distribution's, or the
        # wheels ./dev.sh installs) fails every pytest run under pytest 9.
        'test': ['pytest>=7,<9', 'PyYAML', 'Pillow>=7', 'hypothesis>=6', 'psutil>=5', 'flake8',
                 'pydocstyle', 'mypy>=1.5'],
        'bench': ['lz4>=4', 'Pillow', 'psutil>=5'],
        # colcon and the ament linters (with the flake8 plugins ament_flake8 uses on a ROS
        # 2 install), for building and testing as a workspace without a ROS distribution.
        'dev': ['colcon-common-extensions', 'catkin-pkg', 'ros-ament-flake8',
                'ros-ament-pep257', 'flake8-builtins', 'flake8-comprehensions',
                'flake8-docstrings', 'flake8-import-order', 'flake8-quotes'],
    },
    zip_safe=True,
    maintainer='streamkinect2_ros developers',
    maintainer_email='streamkinect2-ros-dev@example.org',
    description='Lossless Kinect v2 depth streaming over the network, with ROS 2 nodes',
    license='BSD-2-Clause',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'server_node = streamkinect2_ros.server_node:main',
            'client_node = streamkinect2_ros.client_node:main',
            'streamkinect2-mock-server = streamkinect2.tools:mock_server_main',
            'streamkinect2-list = streamkinect2.tools:list_main',
            'streamkinect2-receive = streamkinect2.tools:receive_main',
            'streamkinect2-demo = streamkinect2.tools:demo_main',
            'streamkinect2-keygen = streamkinect2.tools:keygen_main',
            'streamkinect2-ros-demo = streamkinect2_ros.demo:main',
        ],
    },
)
