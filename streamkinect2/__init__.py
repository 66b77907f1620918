"""Stream Kinect v2 depth over the network, losslessly, with ZeroMQ and Zeroconf.

The modules follow the 2014 streamkinect2 API: :py:mod:`.server` (``Server``, and
``ServerBrowser``, ``ServerInfo`` from :py:mod:`.discovery`), :py:mod:`.client`
(``Client``), :py:mod:`.compress` (``DepthFrameCompressor``), :py:mod:`.mock`
(``MockKinect``, ``DepthFrame``) and :py:mod:`.common` (``EndpointType``,
``ProtocolError``); beyond it, :py:mod:`.connection` (``ServerConnection``: a client that
reconnects and rediscovers by itself).
"""
from .client import Client
from .codec import CodecError
from .common import EndpointType, ProtocolError
from .compress import DepthFrameCompressor
from .connection import ServerConnection
from .discovery import ServerBrowser, ServerInfo
from .mock import DepthFrame, MockKinect
from .server import Server

__version__ = '0.2.0'

__all__ = [
    'Client', 'CodecError', 'DepthFrame', 'DepthFrameCompressor', 'EndpointType',
    'MockKinect', 'ProtocolError', 'Server', 'ServerBrowser', 'ServerConnection', 'ServerInfo',
]
