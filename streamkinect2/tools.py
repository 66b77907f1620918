"""Command-line tools: run a mock server, list servers, receive and measure a stream.

Each ``*_main`` function is a console script (see setup.py); all take ``--help``.
"""
import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tornado.ioloop import IOLoop

from .client import FrameStats
from .common import EndpointType
from .compress import check_color_options
from .connection import ServerConnection
from .device import DepthFrame, STREAMS
from .mock import MockKinect, Recording
from .security import CurveClientConfig, CurveServerConfig, make_keypair
from .server import Server, ServerBrowser

__all__ = ['mock_server_main', 'list_main', 'receive_main', 'demo_main', 'keygen_main']

log = logging.getLogger(__name__)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')


def _run(coro_fn: Callable[[argparse.Namespace, asyncio.Event], Awaitable[int]],
         args: argparse.Namespace) -> int:
    """Run *coro_fn(args, stop_event)* until it returns, Ctrl-C or SIGTERM."""
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if getattr(args, 'duration', 0):
            loop.call_later(args.duration, stop.set)
        return await coro_fn(args, stop)
    return asyncio.run(main())


# --- mock server --------------------------------------------------------------------

def _mock_server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Serve mock Kinect v2 devices: depth, IR and colour.')
    parser.add_argument('--address', default=None,
                        help='IPv4 address to bind and announce on (default: the '
                             'interface with the default route)')
    parser.add_argument('--name', default=None, help='human-readable server name')
    parser.add_argument('--control-port', type=int, default=None,
                        help='fixed control port (default: random)')
    parser.add_argument('--devices', type=int, default=1, help='number of mock devices')
    parser.add_argument('--fps', type=float, default=30.0, help='frames per second')
    parser.add_argument('--replay', default=None, metavar='NPZ',
                        help='replay recorded frames instead of the synthetic scene: an .npz '
                             'with a "frames" array of N x H x W uint16 (depth only), or '
                             'RGB-D with "depth", "ir" and "color" arrays (as '
                             'kinect2_sync_rgbd.npz; greyscale colour is sent as BGRX)')
    parser.add_argument('--streams', default=None, metavar='LIST',
                        help='comma-separated streams to offer, among {0} (default: all '
                             'there are; depth is always offered)'.format(','.join(STREAMS)))
    parser.add_argument('--color-quality', type=int, default=None, metavar='Q',
                        help='JPEG quality of the colour stream, 1-100 (default: 90 at hd, '
                             '75 at qhd)')
    parser.add_argument('--color-resolution', default='hd', choices=('hd', 'qhd'),
                        help='colour sent: hd (1920 x 1080) or qhd (960 x 540)')
    parser.add_argument('--no-announce', action='store_true',
                        help='do not announce over Zeroconf')
    parser.add_argument('--curve-secret', default=None, metavar='FILE',
                        help='turn on CURVE security with this server .key_secret file')
    parser.add_argument('--curve-allow', action='append', default=[], metavar='KEY',
                        help='client public key (or .key file) to admit; repeatable')
    parser.add_argument('--duration', type=float, default=0,
                        help='stop after this many seconds (default: run until Ctrl-C)')
    parser.add_argument('-v', '--verbose', action='store_true')
    return parser


def _mock_devices(args: argparse.Namespace) -> List[MockKinect]:
    """Return the mock devices *args* asks for (SystemExit saying why for bad options)."""
    streams: Optional[Tuple[str, ...]] = None
    if args.streams is not None:
        names = [name.strip() for name in args.streams.split(',')]
        streams = ('depth',) + tuple(name for name in names if name not in ('', 'depth'))
    try:
        if not args.replay:
            return [MockKinect(fps=args.fps, streams=streams) for _ in range(args.devices)]
        try:
            recording = Recording.load(args.replay)  # once, shared by the devices
        except Exception as err:  # noqa: B902 - missing, not a zip, not the layout: say so
            raise SystemExit('--replay {0}: {1}'.format(args.replay, err)) from None
        return [MockKinect.from_recording(recording, fps=args.fps, streams=streams)
                for _ in range(args.devices)]
    except ValueError as err:
        raise SystemExit('error: {0}'.format(err)) from None


async def _mock_server(args: argparse.Namespace, stop: asyncio.Event) -> int:
    kinects: List[MockKinect] = args.kinects
    curve = CurveServerConfig(args.curve_secret, args.curve_allow) if args.curve_secret \
        else None
    server = Server(address=args.address, name=args.name, announce=not args.no_announce,
                    control_port=args.control_port, io_loop=IOLoop.current(), curve=curve,
                    color_quality=args.color_quality,
                    color_resolution=args.color_resolution)
    for kinect in kinects:
        server.add_kinect(kinect)
        kinect.start()
    server.start()
    print('serving {0} mock device(s) as {1!r} on {2}'.format(
        len(kinects), server.name, server.endpoints[EndpointType.control]), flush=True)
    try:
        await stop.wait()
    finally:
        server.stop()
        for kinect in kinects:
            kinect.stop()
    return 0


def mock_server_main(argv: Optional[Sequence[str]] = None) -> int:
    """Run a server with mock devices until Ctrl-C."""
    args = _mock_server_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        check_color_options(args.color_quality, args.color_resolution)
    except ValueError as err:
        raise SystemExit('error: {0}'.format(err)) from None
    args.kinects = _mock_devices(args)  # bad options end here, before anything runs
    return _run(_mock_server, args)


# --- list ---------------------------------------------------------------------------

async def _list(args: argparse.Namespace, stop: asyncio.Event) -> int:
    browser = ServerBrowser(address=args.address, io_loop=IOLoop.current())
    try:
        try:
            await asyncio.wait_for(stop.wait(), args.timeout)
        except asyncio.TimeoutError:
            pass
        servers = sorted(browser.servers)
    finally:
        browser.close()
    if not servers:
        print('no servers found in {0} s'.format(args.timeout))
        return 1
    for info in servers:
        print('{0}\t{1}'.format(info.name, info.endpoint))
    return 0


def list_main(argv: Optional[Sequence[str]] = None) -> int:
    """List the servers announced on the network."""
    parser = argparse.ArgumentParser(description='List Kinect v2 depth servers (Zeroconf).')
    parser.add_argument('--address', default=None,
                        help='IPv4 address of the interface to browse on (default: all)')
    parser.add_argument('--timeout', type=float, default=3.0, help='seconds to listen')
    parser.add_argument('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    return _run(_list, args)


# --- receive ------------------------------------------------------------------------

class StreamMeter(object):
    """Per-device, per-stream frame rate, bandwidth, compression ratio and latency.

    The figures come from the client's :py:class:`~streamkinect2.client.FrameStats` of
    each stream of each device (``stream_stats``): the counters' growth over the
    interval, and the latency percentiles of its window. A device's depth line is always
    there; IR and colour lines once those streams are enabled. For colour, the ratio is
    that of the BGR pixels the JPEG decodes to and the latency is to the JPEG's arrival
    (the receiver decodes nothing).
    """

    def __init__(self) -> None:
        """Start with no devices."""
        # (kinect id, stream): (FrameStats, received, payload bytes, raw bytes)
        self._marks: Dict[Tuple[str, str], Tuple[FrameStats, int, int, int]] = {}
        #: Frames delivered, of every stream.
        self.total_frames = 0
        #: Frames delivered, by stream.
        self.stream_frames: Dict[str, int] = dict.fromkeys(STREAMS, 0)

    def add(self, client: Any, kinect_id: str, depth_frame: Any,
            stream: str = 'depth') -> None:
        """Account one frame of *stream* delivered (for the totals)."""
        self.total_frames += 1
        self.stream_frames[stream] = self.stream_frames.get(stream, 0) + 1

    def report(self, client: Any, elapsed: float) -> List[str]:
        """Return report lines for the interval of *elapsed* s and start a new one.

        *client* is a Client or a ServerConnection (anything with ``stats``; with
        ``stream_stats`` too, IR and colour are reported).
        """
        lines: List[str] = []
        current: Dict[Tuple[str, str], FrameStats] = {}
        for kinect_id, depth_stats in sorted(dict(client.stats).items()):
            current[(kinect_id, 'depth')] = depth_stats
            for stream in STREAMS[1:] if hasattr(client, 'stream_stats') else ():
                stats = client.stream_stats(kinect_id, stream)
                if stats is not None:
                    current[(kinect_id, stream)] = stats
        for key, stats in current.items():
            mark = self._marks.get(key)
            if mark is None or mark[0] is not stats:  # new device, or reconnected
                mark = (stats, 0, 0, 0)
            frames = stats.received - mark[1]
            wire = stats.payload_bytes - mark[2]
            raw = stats.raw_bytes - mark[3]
            lines.append(
                '{0} {1}: {2:5.1f} frames/s  {3:6.1f} Mbit/s  ratio {4:4.2f}  latency p50 '
                '{5:5.1f} ms p99 {6:5.1f} ms  dropped {7}  invalid {8}{9}'.format(
                    key[0], key[1], frames / elapsed, wire * 8 / elapsed / 1e6,
                    raw / wire if wire else float('nan'),
                    stats.latency_percentile(0.5, elapsed) * 1000,
                    stats.latency_percentile(0.99, elapsed) * 1000, stats.dropped,
                    stats.invalid, '  STALLED' if stats.stalled else ''))
            self._marks[key] = (stats, stats.received, stats.payload_bytes,
                                stats.raw_bytes)
        for key in [k for k in self._marks if k not in current]:
            del self._marks[key]
        return lines


async def _receive(args: argparse.Namespace, stop: asyncio.Event) -> int:
    curve = CurveClientConfig(args.curve_secret, args.curve_server_key) \
        if args.curve_secret else None
    meter = StreamMeter()
    checked = {'frames': 0, 'mismatched': 0}
    connection = ServerConnection(args.endpoint, server_name=args.server_name,
                                  discovery_address=args.address, io_loop=IOLoop.current(),
                                  curve=curve)

    interval = {'start': time.monotonic()}  # a report covers an interval from here

    def on_connect(connection: ServerConnection) -> None:
        interval['start'] = time.monotonic()  # a first report of a full interval
        print('found server {0!r} at {1}'.format(connection.server_name,
                                                 connection.endpoint), flush=True)

    def on_disconnect(connection: ServerConnection) -> None:
        print('server went away: looking for it again', flush=True)

    def on_add(connection: ServerConnection, kinect_id: str) -> None:
        print('device {0} added'.format(kinect_id), flush=True)
        offered = connection.devices.get(kinect_id, {}).get('endpoints', {})
        for stream in args.streams:
            if args.all_streams and stream not in offered:
                continue  # --streams all: what the device offers
            try:
                getattr(connection, 'enable_{0}_frames'.format(stream))(kinect_id)
            except ValueError as err:
                print('not receiving {0} from device {1}: {2}'.format(stream, kinect_id,
                                                                      err), flush=True)

    def on_remove(connection: ServerConnection, kinect_id: str) -> None:
        print('device {0} removed'.format(kinect_id), flush=True)

    def on_frame(connection: ServerConnection, depth_frame: DepthFrame,
                 kinect_id: str) -> None:
        meter.add(connection, kinect_id, depth_frame)
        if args.check_mock:
            checked['frames'] += 1
            if not np.array_equal(depth_frame.array,
                                  MockKinect.render_frame(depth_frame.sequence)):
                checked['mismatched'] += 1

    def on_ir(connection: ServerConnection, ir_frame: Any, kinect_id: str) -> None:
        meter.add(connection, kinect_id, ir_frame, 'ir')

    def on_color(connection: ServerConnection, color_frame: Any, kinect_id: str) -> None:
        meter.add(connection, kinect_id, color_frame, 'color')  # JPEG: never decoded

    for event, receiver in ((ServerConnection.on_connect, on_connect),
                            (ServerConnection.on_disconnect, on_disconnect),
                            (ServerConnection.on_add_kinect, on_add),
                            (ServerConnection.on_remove_kinect, on_remove),
                            (ServerConnection.on_depth_frame, on_frame),
                            (ServerConnection.on_ir_frame, on_ir),
                            (ServerConnection.on_color_frame, on_color)):
        event.connect(receiver, connection, weak=False)
    found_any = False
    connection.start()
    try:
        started = time.monotonic()
        while not stop.is_set():
            found_any = found_any or bool(connection.candidates())
            deadline = interval['start'] + args.interval
            if not found_any:
                deadline = min(deadline, started + args.discovery_timeout)
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            found_any = found_any or bool(connection.candidates())
            if not found_any and now - started >= args.discovery_timeout:
                break
            start = interval['start']
            if now - start >= args.interval or (stop.is_set() and now > start):
                for line in meter.report(connection, now - start):
                    print(line, flush=True)
                interval['start'] = now
    finally:
        connection.stop()
    if not found_any:
        print('no server found within {0} s'.format(args.discovery_timeout), file=sys.stderr)
        return 1
    print('received {0} frames{1}'.format(meter.total_frames, ''.join(
        ' ({0}: {1})'.format(stream, meter.stream_frames[stream]) for stream in STREAMS
        if stream in args.streams and len(args.streams) > 1)), flush=True)
    if args.check_mock:
        print('checked {0} frames against the mock: {1} mismatched'.format(
            checked['frames'], checked['mismatched']), flush=True)
        if checked['mismatched']:
            return 2
    return 0 if meter.total_frames else 1


def _receive_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Receive depth (and IR, colour) from a server and print per-device, '
                    'per-stream frame rate, bandwidth, compression ratio and latency.')
    parser.add_argument('endpoint', nargs='?', default=None,
                        help='control endpoint, e.g. tcp://10.0.0.2:5555 (default: '
                             'discover over Zeroconf)')
    parser.add_argument('--server-name', default=None,
                        help='discover the server with this name (default: the first)')
    parser.add_argument('--address', default=None,
                        help='IPv4 address of the interface to discover on (default: all)')
    parser.add_argument('--discovery-timeout', type=float, default=10.0)
    parser.add_argument('--interval', type=float, default=1.0, help='seconds per report')
    parser.add_argument('--streams', default='depth', metavar='LIST',
                        help='comma-separated streams to receive, among {0}, or "all" '
                             '(every stream a device offers); default: depth'.format(
                                 ','.join(STREAMS)))
    parser.add_argument('--check-mock', action='store_true',
                        help="check every frame byte for byte against the mock's frames")
    parser.add_argument('--curve-secret', default=None, metavar='FILE',
                        help='use CURVE security with this client .key_secret file')
    parser.add_argument('--curve-server-key', default=None, metavar='KEY',
                        help="the server's public key (or .key file), with --curve-secret")
    parser.add_argument('--duration', type=float, default=0,
                        help='stop after this many seconds (default: run until Ctrl-C)')
    parser.add_argument('-v', '--verbose', action='store_true')
    return parser


def receive_main(argv: Optional[Sequence[str]] = None) -> int:
    """Receive from a server and print stream figures once a second."""
    parser = _receive_parser()
    args = parser.parse_args(argv)
    if bool(args.curve_secret) != bool(args.curve_server_key):
        parser.error('--curve-secret and --curve-server-key go together')
    args.all_streams = args.streams.strip() == 'all'
    names = STREAMS if args.all_streams else tuple(
        name.strip() for name in args.streams.split(',') if name.strip())
    unknown = [name for name in names if name not in STREAMS]
    if unknown or not names:
        parser.error('--streams: {0!r} is not a list of {1} (or "all")'.format(
            args.streams, ','.join(STREAMS)))
    args.streams = tuple(name for name in STREAMS if name in names)
    _setup_logging(args.verbose)
    return _run(_receive, args)


# --- keys ---------------------------------------------------------------------------

def keygen_main(argv: Optional[Sequence[str]] = None) -> int:
    """Make a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret."""
    parser = argparse.ArgumentParser(
        description='Make a CURVE key pair for streamkinect2 security: DIR/NAME.key '
                    '(public: give it to the other side) and DIR/NAME.key_secret (keep it).')
    parser.add_argument('directory')
    parser.add_argument('name')
    args = parser.parse_args(argv)
    public_file, secret_file = make_keypair(args.directory, args.name)
    print('public key file: {0}\nsecret key file: {1}'.format(public_file, secret_file))
    return 0


# --- demo ---------------------------------------------------------------------------

def demo_main(argv: Optional[Sequence[str]] = None) -> int:
    """Start a mock server process on loopback and receive from it, found by Zeroconf."""
    parser = argparse.ArgumentParser(description='Mock server + receiver on loopback.')
    parser.add_argument('--duration', type=float, default=15.0,
                        help='seconds to run (0: until Ctrl-C)')
    parser.add_argument('--devices', type=int, default=1)
    args = parser.parse_args(argv)
    _setup_logging(False)
    name = 'streamkinect2 demo {0}'.format(int(time.time()) % 100000)
    server = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from streamkinect2.tools import '
         'mock_server_main; sys.exit(mock_server_main())', '--address', '127.0.0.1',
         '--name', name, '--devices', str(args.devices)])
    try:
        return receive_main(['--address', '127.0.0.1', '--server-name', name,
                             '--duration', str(args.duration)])
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
