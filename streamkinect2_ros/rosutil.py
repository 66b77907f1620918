"""Node plumbing: the IOLoop-backed node base, a logging bridge, and ``main()``."""
import logging
import signal
import threading

from rclpy.node import Node
import zmq

from .ioloop import IOLoopThread

__all__ = ['LoopNode', 'RosLogHandler', 'bridge_library_logging', 'console_logger',
           'run_node']


class RosLogHandler(logging.Handler):
    """Forward Python log records (the streamkinect2 library's) to an rclpy logger."""

    def __init__(self, ros_logger, level=logging.INFO):
        """Forward records at *level* and above to *ros_logger*."""
        super().__init__(level)
        self.ros_logger = ros_logger

    def emit(self, record):
        """Log *record* through the ROS logger at the matching severity."""
        # One call site per severity: rclpy refuses a severity change at a call site.
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(message)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(message)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(message)
            else:
                self.ros_logger.debug(message)
        except Exception:
            self.handleError(record)


def bridge_library_logging(ros_logger):
    """Send the streamkinect2 library's log records to *ros_logger*; return the handler."""
    handler = RosLogHandler(ros_logger)
    handler.setFormatter(logging.Formatter('%(name)s: %(message)s'))
    library = logging.getLogger('streamkinect2')
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    return handler


def console_logger(node):
    """Return *node*'s logger, or one that skips /rosout once its context is shut down.

    After Ctrl-C or SIGTERM rclpy shuts the context down before the node cleans up; the
    node's own logger would then fail to publish to /rosout on every message.
    """
    if node.context.ok():
        return node.get_logger()
    import rclpy.logging
    return rclpy.logging.get_logger(node.get_name() + '.shutdown')


class LoopNode(Node):
    """A node whose streamkinect2 objects live on an :py:class:`IOLoopThread`.

    Subclasses call :py:meth:`start_loop` in ``__init__``, override
    :py:meth:`stop_on_loop` to release their objects, and are closed with
    :py:meth:`close` (which :py:func:`run_node` calls) before ``destroy_node()``. The
    library's log records go to the node's logger.
    """

    def __init__(self, node_name, **kwargs):
        """Create the node; the loop starts with :py:meth:`start_loop`."""
        super().__init__(node_name, **kwargs)
        self.loop = None
        self.zmq_ctx = None
        self._log_handler = bridge_library_logging(self.get_logger())

    def start_loop(self, thread_name):
        """Create the ZeroMQ context and start the IOLoop thread."""
        self.zmq_ctx = zmq.Context()
        self.loop = IOLoopThread(thread_name)
        self.loop.start()

    def stop_on_loop(self):
        """Release the streamkinect2 objects (runs on the IOLoop thread)."""

    def close(self):
        """Run :py:meth:`stop_on_loop`, stop the loop, close every remaining socket."""
        logger = console_logger(self)
        if self._log_handler is not None:
            self._log_handler.ros_logger = logger
        if self.loop is not None:
            if self.loop.is_alive:
                try:
                    self.loop.call(self.stop_on_loop, timeout=15.0)
                except Exception as err:
                    logger.error('Error while stopping: {0}'.format(err))
            self.loop.stop()
            self.loop = None
        if self.zmq_ctx is not None:
            self.zmq_ctx.destroy(linger=0)
            self.zmq_ctx = None
        if self._log_handler is not None:
            logging.getLogger('streamkinect2').removeHandler(self._log_handler)
            self._log_handler = None


def run_node(node_class, args=None, poll_period=0.1):
    """Init rclpy, spin a *node_class* instance until shutdown, clean up; return 0 or 1.

    Ctrl-C (SIGINT), SIGTERM and a launch shutdown (SIGINT, then SIGTERM) end the spin;
    the node's ``close()`` then releases its sockets and threads before rclpy shuts
    down. The signals are handled here, in Python, rather than by rclpy's own handler:
    the executor spins in slices of *poll_period* s and checks a flag in between, so a
    signal is never lost whatever the executor is waiting on (rclpy's handler was seen
    to leave a node waiting forever when SIGTERM came under load).
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT,
                                                                  signal.SIGTERM)}
    node = None
    status = 0
    try:
        node = node_class()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=poll_period)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as err:  # bad parameters, a device that will not open, ...
        logger = node.get_logger() if node is not None else rclpy.logging.get_logger(
            node_class.__name__)
        logger.fatal('{0}: {1}'.format(type(err).__name__, err))
        status = 1
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
