"""Common elements for both client and server."""
import enum
import logging
from typing import Any

from blinker import Signal

__all__ = ['EndpointType', 'ProtocolError', 'ZC_SERVICE_TYPE', 'PROTOCOL_VERSION',
           'send_isolated']

logging.getLogger('streamkinect2').addHandler(logging.NullHandler())
log = logging.getLogger(__name__)

#: The Zeroconf (DNS-SD) service type servers register under.
ZC_SERVICE_TYPE: str = '_kinect2._tcp.local.'

#: Version of the control protocol carried in ``me`` payloads.
PROTOCOL_VERSION: int = 1


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


def send_isolated(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Call each receiver of the blinker *signal* for *sender*, isolating failures.

    ``Signal.send`` stops at the first receiver that raises; a device thread uses this
    instead so that one faulty handler cannot starve the others (the compressor, say).
    Exceptions are logged.
    """
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            log.exception('Error in %r receiving from %r', receiver, sender)
