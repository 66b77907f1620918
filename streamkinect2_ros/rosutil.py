"""Node plumbing: the IOLoop-backed node base, a logging bridge, QoS overrides, ``main()``.

Every line a node prints is under the node's ROS logger (its name, in its namespace):
its own, the streamkinect2 library's and this package's Python log records
(:py:func:`bridge_library_logging`), and a fatal error at start (:py:func:`run_node`).
"""
import copy
import logging
import signal
import sys
import threading
import time

from rclpy.node import Node
import zmq

from .ioloop import IOLoopThread

__all__ = ['BRIDGED_LOGGERS', 'LoopNode', 'QOS_OVERRIDABLE', 'RosLogHandler',
           'bridge_library_logging', 'check_qos_overrides', 'console_logger',
           'create_overridable_publisher', 'run_node', 'LogThrottle',
           'unbridge_library_logging']

#: The Python loggers bridged to a node's ROS logger: the library's and this package's.
BRIDGED_LOGGERS = ('streamkinect2', 'streamkinect2_ros')


class LogThrottle(object):
    """When a recurring error may be logged again: at most once per *period* seconds.

    One per thing that fails (a device's stream, a device's layout), so that a flood of
    failures is a log line every *period* s, with its count, and one thing's failures do
    not hide another's.
    """

    def __init__(self, period=5.0):
        """Allow a line now, then one per *period* s."""
        self.period = period
        self._at = None

    def due(self):
        """Return True if a line may be logged now (and start the next period)."""
        now = time.monotonic()
        if self._at is not None and now - self._at < self.period:
            return False
        self._at = now
        return True


#: ``{thread ident: RosLogHandler}``: the threads a node owns (its IOLoop thread). A
#: record logged on one of them goes to that node alone; any other, to every bridged node.
_owners = {}
_owners_lock = threading.Lock()


class RosLogHandler(logging.Handler):
    """Forward Python log records (the streamkinect2 library's) to an rclpy logger.

    With several nodes in one process, each node's handler takes the records logged on
    the threads it owns (:py:meth:`own_thread`), and those of threads nobody owns.
    """

    def __init__(self, ros_logger, level=logging.NOTSET):
        """Forward records at *level* and above to *ros_logger*."""
        super().__init__(level)
        self.ros_logger = ros_logger
        self.addFilter(self._mine)

    def _mine(self, record):
        return _owners.get(record.thread, self) is self

    def own_thread(self, ident):
        """Take the records logged on thread *ident* (a ``threading.get_ident()``)."""
        with _owners_lock:
            _owners[ident] = self

    def release_threads(self):
        """Stop owning threads (their idents may be reused once they end)."""
        with _owners_lock:
            for ident in [i for i, owner in _owners.items() if owner is self]:
                del _owners[ident]

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


def _bridged_handlers():
    return [handler for handler in logging.getLogger(BRIDGED_LOGGERS[0]).handlers
            if isinstance(handler, RosLogHandler)]


def _set_bridged_level():
    """Let through the records the most verbose bridged node's logger shows."""
    # rcutils severities (DEBUG 10 ... FATAL 50) are Python's levels; UNSET (0) is INFO.
    levels = [int(handler.ros_logger.get_effective_level()) or logging.INFO
              for handler in _bridged_handlers()]
    for name in BRIDGED_LOGGERS:
        logging.getLogger(name).setLevel(min(levels) if levels else logging.INFO)


def bridge_library_logging(ros_logger):
    """Send the Python log records of :py:data:`BRIDGED_LOGGERS` to *ros_logger*.

    Records are passed down to the level *ros_logger* shows (``--log-level <node>:=debug``
    shows the library's debug records too); each line keeps the Python logger's name
    as a prefix (``streamkinect2.discovery: Found server ...``). Return the handler, for
    :py:func:`unbridge_library_logging`.
    """
    handler = RosLogHandler(ros_logger)
    handler.setFormatter(logging.Formatter('%(name)s: %(message)s'))
    for name in BRIDGED_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    _set_bridged_level()
    return handler


def unbridge_library_logging(handler):
    """Stop sending records to the node of *handler*; safe to call twice."""
    handler.release_threads()
    for name in BRIDGED_LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    _set_bridged_level()


def console_logger(node):
    """Return *node*'s logger, or one that skips /rosout once its context is shut down.

    After Ctrl-C or SIGTERM rclpy shuts the context down before the node cleans up; the
    node's own logger would then fail to publish to /rosout on every message. The
    stand-in is the node logger's child ``<node logger>.shutdown``.
    """
    logger = node.get_logger()
    if node.context.ok():
        return logger
    import rclpy.logging
    return rclpy.logging.get_logger(logger.name + '.shutdown')


# --- QoS overrides -----------------------------------------------------------------------

#: The QoS policies of a publisher that ``qos_overrides./<topic>.publisher.<policy>``
#: parameters override (rclpy's QoSOverridingOptions; read-only parameters).
QOS_OVERRIDABLE = ('history', 'depth', 'reliability', 'durability')


def _policy_values():
    """Return ``{policy: allowed values}`` of the enumerated overridable policies."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

    return {policy: tuple(name.lower() for name in kind.__members__ if name != 'UNKNOWN')
            for policy, kind in (('history', HistoryPolicy),
                                 ('reliability', ReliabilityPolicy),
                                 ('durability', DurabilityPolicy))}


def check_qos_overrides(overrides):
    """Raise ValueError naming every bad ``qos_overrides.*.publisher.<policy>`` value.

    *overrides* maps parameter names to the values given (``-p``, ``--params-file``).
    rclpy reads them only when a publisher of that topic is created (for the client
    node: when a device appears), and fails there; so they are checked at start. Other
    policies and names are left alone (a YAML for several nodes holds theirs).
    """
    allowed = _policy_values()
    problems = []
    for name, value in sorted(overrides.items()):
        parts = name.split('.')
        if len(parts) < 4 or parts[0] != 'qos_overrides' or parts[-2] != 'publisher':
            continue
        policy = parts[-1]
        if policy == 'depth':
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append('parameter {0}: {1!r} is not an integer of 1 or more'.format(
                    name, value))
        elif policy in allowed:
            if not isinstance(value, str) or value.lower() not in allowed[policy]:
                problems.append('parameter {0}: {1!r} is not one of: {2}'.format(
                    name, value, ', '.join(allowed[policy])))
    if problems:
        raise ValueError('; '.join(problems))


def create_overridable_publisher(node, msg_type, topic, qos):
    """Return a publisher of *topic* whose QoS users can override, starting from *qos*.

    The overrides are rclpy's ``qos_overrides./<topic>.publisher.<policy>`` parameters
    (:py:data:`QOS_OVERRIDABLE`, ``<topic>`` fully qualified), declared read-only with
    the publisher; a publisher created again for the same topic takes the same values.
    *qos* itself is left as it is (rclpy writes the overrides into the profile given).
    """
    from rclpy.qos import QoSPolicyKind
    from rclpy.qos_overriding_options import QoSOverridingOptions

    options = QoSOverridingOptions([getattr(QoSPolicyKind, policy.upper())
                                    for policy in QOS_OVERRIDABLE])
    return node.create_publisher(msg_type, topic, copy.copy(qos),
                                 qos_overriding_options=options)


# --- the node base and main() ------------------------------------------------------------

class LoopNode(Node):
    """A node whose streamkinect2 objects live on an :py:class:`IOLoopThread`.

    Subclasses call :py:meth:`start_loop` in ``__init__``, override
    :py:meth:`stop_on_loop` to release their objects, and are closed with
    :py:meth:`close` (which :py:func:`run_node` calls) before ``destroy_node()``. The
    library's log records go to the node's logger: those logged on the node's IOLoop
    thread to this node alone, when a process holds several nodes.
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
        if self._log_handler is not None:
            self._log_handler.own_thread(self.loop.call(threading.get_ident))

    def given_parameters(self):
        """Return ``{name: value}`` of the parameter values given to the node at start."""
        # rclpy keeps them in Node._parameter_overrides and offers no public accessor.
        overrides = getattr(self, '_parameter_overrides', None) or {}
        return {name: parameter.value for name, parameter in overrides.items()}

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
        self._unbridge()

    def destroy_node(self):
        """Destroy the node; the library's records stop coming to its logger."""
        self._unbridge()
        return super().destroy_node()

    def _unbridge(self):
        handler, self._log_handler = getattr(self, '_log_handler', None), None
        if handler is not None:
            unbridge_library_logging(handler)


def _start_logger(node, node_class):
    """Return the logger for a node that did not start: its own if it got one."""
    try:
        return node.get_logger()  # its name, namespace and remapping applied
    except AttributeError:  # rclpy.init or Node.__init__ failed: the name it would have
        import rclpy.logging
        name = getattr(sys.modules.get(node_class.__module__), 'NODE_NAME', None)
        return rclpy.logging.get_logger(name or node_class.__name__)


def run_node(node_class, args=None, poll_period=0.1):
    """Init rclpy, spin a *node_class* instance until shutdown, clean up; return 0 or 1.

    Ctrl-C (SIGINT), SIGTERM and a launch shutdown (SIGINT, then SIGTERM) end the spin;
    the node's ``close()`` then releases its sockets and threads before rclpy shuts
    down. The signals are handled here, in Python, rather than by rclpy's own handler:
    the executor spins in slices of *poll_period* s and checks a flag in between, so a
    signal is never lost whatever the executor is waiting on (rclpy's handler was seen
    to leave a node waiting forever when SIGTERM came under load).

    An error at start (arguments rclpy refuses, bad parameters, a device that will not
    open) is logged, FATAL, under the node's logger (the ``NODE_NAME`` of
    *node_class*'s module if the node never got one); the exit status is then 1.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()

    previous = {}
    node = None
    running = False
    status = 0
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT,
                                                                      signal.SIGTERM)}
        # Made in two steps so that a node whose __init__ fails still has its logger.
        node = node_class.__new__(node_class)
        node.__init__()
        running = True
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=poll_period)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as err:  # bad parameters, a device that will not open, ...
        _start_logger(node, node_class).fatal('{0}: {1}'.format(type(err).__name__, err))
        status = 1
    finally:
        if running:
            node.close()
            node.destroy_node()
        elif hasattr(node, '_log_handler'):  # LoopNode.__init__ ran, the subclass's failed
            node.destroy_node()  # (which released what it had made)
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
