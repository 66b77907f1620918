"""Discovery: find Kinect2 stream servers over Zeroconf, on the IOLoop.

:py:class:`ServerBrowser` runs python-zeroconf's asyncio API on the IOLoop it is given
(a tornado 6 IOLoop is an asyncio loop): no thread of its own, every signal emitted on
that loop. Whatever arrives over mDNS is untrusted: a record can neither raise into
zeroconf's machinery nor stall discovery of other servers, and what the browser keeps
(servers, resolutions in flight, names waiting for one) is bounded.
"""
import asyncio
import collections
import ipaddress
import logging
import threading
import time
from types import TracebackType
from typing import Dict, List, NamedTuple, Optional, OrderedDict, Type
import unicodedata

from blinker import Signal
from tornado.ioloop import IOLoop
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .common import send_isolated, ZC_SERVICE_TYPE

__all__ = ['ServerBrowser', 'ServerInfo']

log = logging.getLogger(__name__)


class ServerInfo(NamedTuple):
    """Kinect2 stream server information.

    A subclass of :py:class:`tuple` with named accessors, holding *name*, *endpoint*:
    *name* is the server's human-readable name; *endpoint* is the control endpoint to
    pass to :py:class:`streamkinect2.client.Client`.
    """

    name: str
    endpoint: str


#: Longest instance name accepted, in UTF-8 bytes (one DNS label, RFC 6763 section 4.1.1).
MAX_INSTANCE_BYTES = 63
#: Seconds between two warnings summarising what the browser ignored.
WARNING_INTERVAL = 30.0
_SUFFIX = '.' + ZC_SERVICE_TYPE
# 0.0.0.0/8 is "this network": never a server's address.
_THIS_NETWORK = ipaddress.IPv4Network('0.0.0.0/8')


def _browse_interfaces(address):
    """Return the zeroconf interfaces for *address* (None or 0.0.0.0: every interface)."""
    if address in (None, '0.0.0.0'):
        return InterfaceChoice.All
    try:
        return [str(ipaddress.IPv4Address(address))]
    except ValueError:
        raise ValueError('address must be a decimal-dotted IPv4 address, got {0!r}'.format(
            address)) from None


def instance_name(name):
    """Return the instance part of a ``_kinect2._tcp.local.`` service *name*, or None.

    None when *name* is not an instance of that type or its instance part is empty,
    longer than :py:data:`MAX_INSTANCE_BYTES`, or holds control or format characters
    (newlines, escape sequences, bidirectional overrides: nothing a log line or a
    terminal should be handed).
    """
    if not isinstance(name, str) or not name.lower().endswith(_SUFFIX):
        return None
    instance = name[:-len(_SUFFIX)]
    if not instance or len(instance.encode('utf-8', 'surrogatepass')) > MAX_INSTANCE_BYTES:
        return None
    if any(unicodedata.category(char) in ('Cc', 'Cf', 'Cs') for char in instance):
        return None
    return instance


def usable_address(address):
    """Return True if *address* (an IPv4 string) can be a server's unicast address."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                or ip in _THIS_NETWORK)


def _close_zeroconf_now(zeroconf):
    """Close *zeroconf* from its loop's thread (or while that loop is not running).

    ``Zeroconf.close()`` cannot do it there: it logs a warning on its own loop and does
    nothing to a loop that is not running; ``AsyncZeroconf.async_close()`` is a
    coroutine, which a synchronous ``close()`` cannot wait for. This does what they do,
    at once: stop serving, close the transports (their sockets go with the next loop
    iteration) and cancel the periodic cache cleanup, which would otherwise keep the
    instance alive on the loop.
    """
    try:
        zeroconf._close()  # done; no listener is served any more
        engine = zeroconf.engine
        engine._async_shutdown()
    except AttributeError:  # a zeroconf whose internals differ (tested: 0.131-0.154)
        log.debug('zeroconf internals differ: closing through AsyncZeroconf.async_close')
        asyncio.ensure_future(AsyncZeroconf(zc=zeroconf).async_close())
        return
    timer = getattr(engine, '_cleanup_timer', None)
    if timer is not None:
        timer.cancel()


class _Throttled(object):
    """Count ignored announcements; warn about them at most every WARNING_INTERVAL s."""

    def __init__(self):
        self.count = 0
        self._last_warning = None
        self._since = 0

    def __call__(self, reason, name):
        self.count += 1
        self._since += 1
        log.debug('Ignoring %r: %s', name, reason)
        now = time.monotonic()
        if self._last_warning is None or now - self._last_warning >= WARNING_INTERVAL:
            log.warning('Ignored %d Zeroconf announcement(s) of %s; the last, %r: %s',
                        self._since, ZC_SERVICE_TYPE, name, reason)
            self._last_warning = now
            self._since = 0


class ServerBrowser(object):
    """An object which listens for kinect2 streaming servers on the network.

    It keeps listening until :py:meth:`close` is called (or the ``with`` block ends).

    *io_loop* is the :py:class:`tornado.ioloop.IOLoop` discovery runs on and the
    signals are emitted on (default ``IOLoop.current()``). Make the browser on that
    loop's thread (while it runs, or before it starts: it then starts browsing once the
    loop runs) or from another thread while the loop runs elsewhere. *address* is the
    IPv4 address of the interface to listen on, or None for every interface.
    *resolve_timeout* is how long (s) to ask for the details of an announced name that
    did not come with them; names are resolved concurrently, so one that never answers
    delays no other.

    ``on_add_server`` and ``on_remove_server`` are emitted with a keyword argument
    ``server_info``, a :py:class:`ServerInfo`; a receiver that raises is logged and
    stops neither the others nor the browser.

    Nothing received can take the browser down or grow it without bound: names that
    are not ``_kinect2._tcp`` instances, hold control characters, or resolve to no
    usable unicast address and port are ignored (and counted in a throttled warning);
    at most :py:attr:`max_servers` servers are kept, :py:attr:`max_resolving` names
    resolved at once and :py:attr:`max_waiting` more kept waiting for their turn (the
    oldest is dropped first). A server whose announcement carries its details, as every
    Zeroconf responder's does, is added at once, whatever else is pending. The last
    :py:attr:`max_waiting` servers turned away for want of room are taken in as others
    go away.
    """

    #: Emitted (keyword argument ``server_info``) when a server appears.
    on_add_server = Signal()
    #: Emitted (keyword argument ``server_info``) when a server goes away.
    on_remove_server = Signal()

    #: Most servers kept; further ones are ignored until some go away.
    max_servers: int = 64
    #: Most names resolved over the network at once.
    max_resolving: int = 8
    #: Most names waiting for a resolution slot.
    max_waiting: int = 128

    def __init__(self, io_loop: Optional[IOLoop] = None, address: Optional[str] = None,
                 resolve_timeout: float = 3.0) -> None:
        """Start browsing for ``_kinect2._tcp.local.`` services."""
        self._interfaces = _browse_interfaces(address)
        self._io_loop = io_loop if io_loop is not None else IOLoop.current()
        # A tornado 6 IOLoop wraps an asyncio loop, where zeroconf runs.
        self._loop: asyncio.AbstractEventLoop = self._io_loop.asyncio_loop  # type: ignore
        self._resolve_timeout = float(resolve_timeout)
        # Keyed by lower-case service name.
        self._servers: OrderedDict[str, ServerInfo] = collections.OrderedDict()
        self._resolving: Dict[str, 'asyncio.Future[None]'] = {}
        self._waiting: OrderedDict[str, str] = collections.OrderedDict()  # -> name, as announced
        self._turned_away: OrderedDict[str, str] = collections.OrderedDict()  # no room for them
        self._ignored = _Throttled()
        self._zeroconf: Optional[Zeroconf] = None
        self._browser: Optional[AsyncServiceBrowser] = None
        self._closed = False
        if self._on_loop_thread():
            self._start()
        else:  # starts once the loop runs (thread-safe)
            self._io_loop.add_callback(self._start_later)

    # --- lifetime --------------------------------------------------------------------

    def _on_loop_thread(self):
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _start(self):
        # On the loop's thread, with it running: zeroconf adopts the running loop.
        try:
            zeroconf = Zeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        except Exception as err:
            raise RuntimeError('could not start Zeroconf on {0}: {1}'.format(
                'all interfaces' if self._interfaces is InterfaceChoice.All
                else self._interfaces[0], err)) from err
        self._zeroconf = zeroconf
        try:
            self._browser = AsyncServiceBrowser(zeroconf, ZC_SERVICE_TYPE,
                                                handlers=[self._on_state_change])
        except Exception:
            _close_zeroconf_now(zeroconf)
            self._zeroconf = None
            raise

    def _start_later(self):
        if self._closed:
            return
        try:
            self._start()
        except Exception:
            log.exception('Could not start browsing for Kinect2 servers')

    def close(self) -> None:
        """Stop listening and release the zeroconf sockets; return at once.

        Call it on the loop's thread; from another thread it waits (a few seconds at
        most) for the loop to do it. After the loop stopped, it runs the loop for one
        iteration, in which the sockets close. Safe to call twice. No signal is emitted
        after it.
        """
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop.is_closed():  # nothing can run there any more: only let go
            log.debug('The IOLoop was closed before the ServerBrowser')
            self._drop_state()
            self._browser = self._zeroconf = None
        elif self._on_loop_thread():
            self._shut_down()
        elif loop.is_running():  # on another thread
            done = threading.Event()

            def shut_down():
                try:
                    self._shut_down()
                finally:
                    done.set()
            self._io_loop.add_callback(shut_down)
            if not done.wait(5.0):
                log.warning('ServerBrowser.close(): the IOLoop did not respond within 5 s')
        else:  # the loop is not running: nothing else touches it
            started = self._zeroconf is not None
            self._shut_down()
            if started:  # one loop iteration: the transports finish closing
                try:
                    loop.run_until_complete(asyncio.sleep(0))
                except RuntimeError:  # this thread runs another loop
                    pass

    def _drop_state(self):
        self._resolving.clear()
        self._waiting.clear()
        self._turned_away.clear()
        self._servers.clear()

    def _shut_down(self):
        for task in self._resolving.values():
            task.cancel()
        self._drop_state()
        browser, self._browser = self._browser, None
        zeroconf, self._zeroconf = self._zeroconf, None
        if zeroconf is None:
            return
        try:
            if browser is not None:
                browser._async_cancel()  # the body of async_cancel(): stop the queries
        finally:
            _close_zeroconf_now(zeroconf)

    def __enter__(self) -> 'ServerBrowser':
        """Return the browser."""
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        """Close the browser."""
        self.close()

    # --- servers ---------------------------------------------------------------------

    @property
    def servers(self) -> List[ServerInfo]:
        """List of :py:class:`ServerInfo` for the servers currently known."""
        return list(self._servers.values())

    @property
    def ignored(self) -> int:
        """Return the number of announcements ignored so far: bad, unresolved or no room."""
        return self._ignored.count

    def _on_state_change(self, zeroconf, service_type, name, state_change):
        # Called by zeroconf, on the loop, inside its handling of a received packet:
        # nothing may escape from here.
        try:
            if self._closed or service_type != ZC_SERVICE_TYPE:
                return
            if state_change is ServiceStateChange.Removed:
                self._forget(name)
            else:
                self._lookup(name)
        except Exception:
            log.exception('Error handling the Zeroconf announcement of %r', name)

    def _forget(self, name):
        key = name.lower()
        self._waiting.pop(key, None)
        self._turned_away.pop(key, None)
        task = self._resolving.pop(key, None)
        if task is not None:
            task.cancel()
        info = self._servers.pop(key, None)
        if info is not None:
            log.info('Server %r at %s went away', info.name, info.endpoint)
            self._emit(self.on_remove_server, info)
            self._refill()

    def _refill(self):
        """Take in servers turned away for want of room, oldest first, while room lasts."""
        while self._turned_away and len(self._servers) < self.max_servers:
            _, name = self._turned_away.popitem(last=False)
            zc_info = self._service_info(name)
            if zc_info is not None and zc_info.load_from_cache(self._zeroconf):
                self._take(name, zc_info)

    def _lookup(self, name):
        """Take in a name that was added or updated: from the cache, or resolve it."""
        key = name.lower()
        if key in self._resolving:  # the request in flight receives the new records
            return
        zc_info = self._service_info(name)
        if zc_info is None:
            return
        if zc_info.load_from_cache(self._zeroconf):
            self._waiting.pop(key, None)
            self._take(name, zc_info)
        elif len(self._resolving) < self.max_resolving:
            self._resolve(key, name, zc_info)
        else:
            self._waiting.pop(key, None)
            self._waiting[key] = name
            while len(self._waiting) > self.max_waiting:
                _, dropped = self._waiting.popitem(last=False)
                self._ignored('too many names waiting to be resolved', dropped)

    def _service_info(self, name):
        """Return an empty AsyncServiceInfo for *name*, or None if the name is no good."""
        if instance_name(name) is None:
            self._ignored('not a valid {0} instance name'.format(ZC_SERVICE_TYPE), name)
            return None
        try:
            return AsyncServiceInfo(name[-len(ZC_SERVICE_TYPE):], name)
        except Exception as err:  # zeroconf's own name checks
            self._ignored('bad name ({0})'.format(type(err).__name__), name)
            return None

    def _resolve(self, key, name, zc_info):
        task = asyncio.ensure_future(self._request(key, name, zc_info))
        self._resolving[key] = task

    async def _request(self, key, name, zc_info):
        try:  # async_request keeps its own deadline
            resolved = await zc_info.async_request(self._zeroconf, self._resolve_timeout * 1000)
            if resolved and not self._closed:
                self._take(name, zc_info)
            elif not resolved:
                self._ignored('no answer within {0:g} s'.format(self._resolve_timeout), name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception('Error resolving %r', name)
        finally:
            if self._resolving.get(key) is asyncio.current_task():
                del self._resolving[key]
            self._next_waiting()

    def _next_waiting(self):
        while (not self._closed and self._waiting
               and len(self._resolving) < self.max_resolving):
            _, name = self._waiting.popitem(last=False)
            self._lookup(name)

    def _take(self, name, zc_info):
        """Add, update (remove then add) or drop the server *name* resolved as *zc_info*."""
        key = name.lower()
        info = self._server_info(name, zc_info)
        old = self._servers.get(key)
        if info is None:  # its current records point nowhere usable
            if old is not None:
                self._forget(name)
            return
        if info == old:
            return
        if old is None and len(self._servers) >= self.max_servers:
            self._turned_away.pop(key, None)
            self._turned_away[key] = name
            while len(self._turned_away) > self.max_waiting:
                self._turned_away.popitem(last=False)
            self._ignored('already {0} servers known'.format(self.max_servers), name)
            return
        self._servers[key] = info
        if old is not None:
            self._emit(self.on_remove_server, old)
        log.info('Found server %r at %s', info.name, info.endpoint)
        self._emit(self.on_add_server, info)

    def _server_info(self, name, zc_info):
        port = zc_info.port
        if not isinstance(port, int) or not 0 < port < 65536:
            self._ignored('no usable port ({0!r})'.format(port), name)
            return None
        # Newest first: after an address change the new one comes first.
        for address in zc_info.parsed_addresses(IPVersion.V4Only):
            if usable_address(address):
                return ServerInfo(name=instance_name(name),
                                  endpoint='tcp://{0}:{1}'.format(address, port))
        self._ignored('no usable IPv4 address ({0})'.format(
            ', '.join(zc_info.parsed_addresses(IPVersion.V4Only)) or 'none'), name)
        return None

    def _emit(self, signal, info):
        # Later, from the loop itself: receivers never run inside zeroconf's packet
        # handling, and may close the browser.
        self._io_loop.add_callback(self._send, signal, info)

    def _send(self, signal, info):
        if not self._closed:
            send_isolated(signal, self, server_info=info)
