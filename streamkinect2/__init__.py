"""Stream Kinect v2 depth over the network, losslessly, with ZeroMQ and Zeroconf.

The modules follow the 2014 streamkinect2 API: :py:mod:`.server` (``Server``,
``ServerBrowser``, ``ServerInfo``), :py:mod:`.client` (``Client``), :py:mod:`.compress`
(``DepthFrameCompressor``), :py:mod:`.mock` (``MockKinect``, ``DepthFrame``) and
:py:mod:`.common` (``EndpointType``, ``ProtocolError``).
"""
from .client import Client
from .codec import CodecError
from .common import EndpointType, ProtocolError
from .compress import DepthFrameCompressor
from .mock import DepthFrame, MockKinect
from .server import Server, ServerBrowser, ServerInfo

__version__ = '0.2.0'

__all__ = [
    'Client', 'CodecError', 'DepthFrame', 'DepthFrameCompressor', 'EndpointType',
    'MockKinect', 'ProtocolError', 'Server', 'ServerBrowser', 'ServerInfo',
]
