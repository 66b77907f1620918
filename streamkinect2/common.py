"""Common elements for both client and server."""
import enum
import logging

__all__ = ['EndpointType', 'ProtocolError', 'ZC_SERVICE_TYPE', 'PROTOCOL_VERSION']

logging.getLogger('streamkinect2').addHandler(logging.NullHandler())

#: The Zeroconf (DNS-SD) service type servers register under.
ZC_SERVICE_TYPE = '_kinect2._tcp.local.'

#: Version of the control protocol carried in ``me`` payloads.
PROTOCOL_VERSION = 1


class ProtocolError(RuntimeError):
    """Raised when some low-level error in the network protocol has been detected."""


class EndpointType(enum.Enum):
    """Enumeration of endpoints exposed by a :py:class:`~streamkinect2.server.Server`.

    ``control``: a REP endpoint which accepts JSON-formatted control messages.

    ``depth``: a PUB endpoint which broadcasts compressed depth frames to connected
    subscribers.
    """

    control = 1
    depth = 2
