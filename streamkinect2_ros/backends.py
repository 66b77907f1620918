"""Device backends for the server node: a registry of factories keyed by name.

A backend factory takes the node's device options (a dict) and returns a list of
device objects with the interface of :py:class:`streamkinect2.MockKinect`:
``unique_kinect_id``, a ``on_depth_frame`` blinker signal, ``start()`` and ``stop()``.
The server node picks the factory named by its ``device`` parameter.

``mock`` is built in. ``freenect2`` (real Kinect v2 sensors through the optional
pylibfreenect2 package) is reserved for the backend a later change adds: it registers
itself here with :py:func:`register_backend`.
"""
from streamkinect2 import MockKinect

__all__ = ['BackendError', 'available_backends', 'create_devices', 'register_backend']


class BackendError(RuntimeError):
    """Raised when a backend is unknown or cannot open its devices."""


_BACKENDS = {}


def register_backend(name, factory):
    """Register *factory* (``options -> [device, ...]``) under *name*."""
    _BACKENDS[name] = factory


def available_backends():
    """Return the names of the registered backends, sorted."""
    return sorted(_BACKENDS)


def create_devices(name, options):
    """Return the devices of backend *name*, built from *options* (a dict)."""
    try:
        factory = _BACKENDS[name]
    except KeyError:
        raise BackendError('unknown device backend {0!r} (available: {1})'.format(
            name, ', '.join(available_backends()))) from None
    devices = list(factory(dict(options)))
    if not devices:
        raise BackendError('device backend {0!r} found no devices'.format(name))
    ids = [device.unique_kinect_id for device in devices]
    if len(set(ids)) != len(ids):
        raise BackendError('duplicate device ids: {0}'.format(ids))
    return devices


def mock_devices(options):
    """Build ``mock_count`` mock devices at ``mock_fps``, named by ``mock_ids``.

    Ids missing from ``mock_ids`` are generated (``mock-<random>``); more ids than
    ``mock_count`` is an error.
    """
    count = int(options.get('mock_count', 1))
    fps = float(options.get('mock_fps', 30.0))
    ids = [str(i) for i in options.get('mock_ids') or []]
    if count < 1:
        raise BackendError('mock_count must be at least 1, got {0}'.format(count))
    if len(ids) > count:
        raise BackendError('mock_ids has {0} ids for mock_count {1}'.format(len(ids), count))
    if not fps > 0:
        raise BackendError('mock_fps must be positive, got {0}'.format(fps))
    ids += [None] * (count - len(ids))
    return [MockKinect(fps=fps, unique_kinect_id=kinect_id or None) for kinect_id in ids]


def _freenect2_devices(options):
    try:
        import pylibfreenect2  # noqa: F401 (optional dependency)
    except ImportError:
        raise BackendError('device "freenect2" needs the optional pylibfreenect2 package '
                           '(and libfreenect2)') from None
    raise BackendError('the freenect2 backend is not implemented yet; use device "mock"')


register_backend('mock', mock_devices)
register_backend('freenect2', _freenect2_devices)
