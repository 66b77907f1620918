"""Device backends for the server node: a registry of factories keyed by name.

A backend factory takes the node's device options (a dict) and returns a list of
device objects with the interface of :py:class:`streamkinect2.MockKinect`:
``unique_kinect_id``, a ``on_depth_frame`` blinker signal, ``start()`` and ``stop()``.
The server node picks the factory named by its ``device`` parameter.

``mock`` is built in. ``freenect2`` drives real Kinect v2 sensors through the optional
pylibfreenect2 package (:py:mod:`streamkinect2.freenect2_device`); without it, asking for
it fails at start-up with one message that says how to install it or use the mock.
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

    Ids missing from ``mock_ids`` are ``mock<i>``, *i* the device's index (the next free
    number where that id is given to another device): the same on every run, so topic
    names stay put. More ids than ``mock_count`` is an error.
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
    taken = set(ids)
    number = len(ids)
    while len(ids) < count:
        while 'mock{0}'.format(number) in taken:
            number += 1
        ids.append('mock{0}'.format(number))
        taken.add(ids[-1])
    streams = _streams_option(options)
    return [MockKinect(fps=fps, unique_kinect_id=kinect_id, **streams) for kinect_id in ids]


def _streams_option(options):
    """Return ``{'streams': [...]}`` from the node's ``streams`` (served), or ``{}``.

    A device then makes only the streams served (a sensor opens no colour listener when
    colour is not served); depth is always made.
    """
    streams = [str(s) for s in options.get('streams') or [] if s]
    if not streams:
        return {}
    return {'streams': ['depth'] + [s for s in streams if s != 'depth']}


def freenect2_devices(options):
    """Open the sensors ``freenect2_serials`` (empty: all) with ``freenect2_pipeline``.

    Depth outside ``freenect2_min_depth`` .. ``freenect2_max_depth`` (mm) becomes 0; no
    frame within ``freenect2_start_timeout`` seconds of the start moves a sensor to the
    next pipeline; a sensor silent for ``freenect2_frame_timeout`` seconds is reported
    lost. ``freenect2_streams`` lists the streams offered, of depth, ir and color (empty:
    all three; depth always). A sensor that cannot be opened is logged and left out; the
    error says why when none can be.
    """
    from streamkinect2.freenect2_device import Freenect2Unavailable, open_devices
    try:
        return open_devices(
            serials=[str(s) for s in options.get('freenect2_serials') or []],
            pipeline=str(options.get('freenect2_pipeline', 'auto')),
            min_depth=int(options.get('freenect2_min_depth', 500)),
            max_depth=int(options.get('freenect2_max_depth', 4500)),
            frame_timeout=float(options.get('freenect2_frame_timeout', 2.0)),
            start_timeout=float(options.get('freenect2_start_timeout', 5.0)),
            streams=_streams_option(options).get('streams') or [
                str(s) for s in options.get('freenect2_streams') or []])
    except (Freenect2Unavailable, ValueError) as err:
        raise BackendError('device "freenect2": {0}'.format(err)) from None
    except TypeError as err:  # an API this backend does not know
        raise BackendError('device "freenect2": pylibfreenect2 rejected a call ({0}); this '
                           'backend follows r9y9/pylibfreenect2 master'.format(err)) from err


register_backend('mock', mock_devices)
register_backend('freenect2', freenect2_devices)
