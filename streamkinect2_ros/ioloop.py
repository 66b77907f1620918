"""A tornado IOLoop on a thread of its own, beside the rclpy executor.

The rclpy executor keeps the main thread (where rclpy installs its SIGINT/SIGTERM
handlers); the streamkinect2 objects live on this loop's thread. Other threads cross
into the loop only with ``IOLoop.add_callback`` (:py:meth:`IOLoopThread.call`). Neither
loop polls the other, so neither starves the other: each blocks in its own wait.
"""
import asyncio
import logging
import threading

from tornado.ioloop import IOLoop

__all__ = ['IOLoopThread']


class IOLoopThread(object):
    """Run a new tornado IOLoop on a daemon thread named *name*.

    ``io_loop`` is the loop, set once :py:meth:`start` returns; hand it to
    ``Server``/``Client``/``ServerBrowser`` explicitly.
    """

    def __init__(self, name='streamkinect2-ioloop'):
        """Create the thread; :py:meth:`start` starts it."""
        self.io_loop = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout=5.0):
        """Start the thread and wait (at most *timeout* s) until its loop runs."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError('IOLoop thread did not start within {0} s'.format(timeout))

    def _run(self):
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.io_loop = IOLoop.current()
        self.io_loop.add_callback(self._ready.set)
        try:
            self.io_loop.start()
        finally:
            self.io_loop.close(all_fds=False)
            asyncio.set_event_loop(None)

    @property
    def is_alive(self):
        """Return True while the loop thread runs."""
        return self._thread.is_alive()

    def call(self, func, *args, timeout=10.0):
        """Run ``func(*args)`` on the loop thread, wait for it and return its result.

        Exceptions raised by *func* are re-raised here; ``TimeoutError`` if it has not
        finished within *timeout* s. From the loop thread itself, *func* runs directly.
        """
        if threading.current_thread() is self._thread:
            return func(*args)
        done = threading.Event()
        outcome = {}

        def run():
            try:
                outcome['value'] = func(*args)
            except BaseException as err:  # handed back to the caller
                outcome['error'] = err
            finally:
                done.set()
        self.io_loop.add_callback(run)
        if not done.wait(timeout):
            raise TimeoutError('{0!r} did not finish on the IOLoop within {1} s'.format(
                func, timeout))
        if 'error' in outcome:
            raise outcome['error']
        return outcome.get('value')

    def stop(self, timeout=5.0):
        """Stop the loop and join the thread (at most *timeout* s); safe to call twice."""
        if self.io_loop is None or not self._thread.is_alive():
            return
        try:
            self.io_loop.add_callback(self.io_loop.stop)
        except RuntimeError:  # already closed
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            logging.getLogger(__name__).warning(
                'IOLoop thread %s did not stop within %s s', self._thread.name, timeout)
