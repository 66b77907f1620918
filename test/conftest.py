"""Shared test helpers: every socket on loopback, every wait with a deadline."""
import asyncio
import importlib
import logging
import os
import sys
import threading
import time

import pytest
import zmq.utils.garbage

# Keep any ROS 2 traffic of the tests on this machine, in a domain of our own.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))

LOOPBACK = '127.0.0.1'

# launch (its pytest plugin, launch_testing, loads it before any test module) makes every
# logger created afterwards a LaunchLogger that does not propagate: the library's loggers,
# created as the test modules import it, would then never reach pytest's caplog. Loggers
# of plain Python, as in any program that does not import launch.
logging.setLoggerClass(logging.Logger)

#: The stand-in pylibfreenect2 (test/standin): what needs a sensor (frames, unplugging).
STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'standin')


# pyzmq sends large buffers without copying through one garbage-collector thread per
# process, started on first use and kept until exit: start it now, so that it is never
# counted as a thread a test left running.
zmq.utils.garbage.gc.start()


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makemodule(module_path, parent):
    """Keep launch_testing's plugin from turning one module's skip into the directory's.

    Its collection hook imports every test module; a module-level ``importorskip`` that
    skips would otherwise skip every test module after it (colcon would report a pass).
    """
    try:
        return (yield)
    except pytest.skip.Exception:
        return pytest.Module.from_parent(parent, path=module_path)


def run_async(coro, timeout=60.0):
    """Run *coro* on a fresh asyncio (tornado) loop in this thread, with a deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(predicate, timeout, what='condition', interval=0.01):
    """Poll *predicate* on the running loop until it is true; fail after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out after {0} s waiting for {1}'.format(
                timeout, what))
        await asyncio.sleep(interval)


@pytest.fixture(autouse=True)
def no_leaked_threads(request):
    """Fail a test that leaves threads of its own running (checked with a deadline)."""
    before = set(threading.enumerate())
    yield
    if request.node.get_closest_marker('allow_thread_leak'):
        return
    deadline = time.monotonic() + 5.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not extra, 'threads left running: {0}'.format([t.name for t in extra])


@pytest.fixture
def lib(monkeypatch):
    """Install the stand-in pylibfreenect2 for one test, with no sensor and no display."""
    monkeypatch.syspath_prepend(STANDIN)
    monkeypatch.delenv('STANDIN_FREENECT2', raising=False)
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    monkeypatch.delenv('LIBFREENECT2_PIPELINE', raising=False)
    sys.modules.pop('pylibfreenect2', None)
    module = importlib.import_module('pylibfreenect2')
    assert module.__file__.startswith(STANDIN)
    module.SCENARIO.reset()
    yield module
    for device in module.SCENARIO.opened:
        device.close()
    sys.modules.pop('pylibfreenect2', None)


def pytest_configure(config):
    """Register the markers used here."""
    config.addinivalue_line('markers', 'allow_thread_leak: skip the thread-leak check')
