"""Clock-offset accuracy across hosts: the corrected stamps' error, link by link.

What it measures: a client's estimate of how far the server's clock is from its own
(timed pings, :py:mod:`streamkinect2.clock`; ``docs/protocol.md``, "Clocks (timed
ping)"). The server and the client run in network namespaces joined by a bridge
(test/netns.py's ``Lan``): they share this machine's clock, so the truth is known. The
server's clock is made ``--offset-ms`` ahead (``Server(clock_offset_ns=...)``, so every
frame stamp is that far ahead), and each frame's corrected stamp
(``client.to_local_ns(frame.timestamp_ns)``) is compared with the stamp less that offset.

How to run it: as root (it creates network namespaces; nothing leaves them, and they are
deleted on every exit, Ctrl-C included)::

    .venv/bin/python bench/bench_clock.py [--duration S] [--runs N] [--only NAME,...]

Link conditions, each measured ``--runs`` times with a fresh client of ``--duration`` s:

- ``loopback``: client and server in one namespace;
- ``veth``: across the bridge, a clean link;
- ``delay``: the control connection through a relay holding each chunk of bytes
  ``--delay-ms`` each way (tc netem where the kernel has it does the same; the relay is
  test_clock_netns.py's);
- ``asymmetric``: the relay holding ``--asymmetric-ms`` out,back: no round-trip method
  can see that, the stamps come out off by half the difference (``expected``);
- ``loss``: ``--loss`` % of the packets dropped each way (nftables or netem:
  netns.loss_method(); skipped, and said so, if neither works here);
- ``busy``: real Kinect v2 depth frames (the recording, 28 Mbit/s) filling 70 % of a
  40 Mbit/s link back from the server, so that pongs queue behind them (skipped if the
  recording is missing). Its clients run ``--busy-duration`` s (default 20): the burst
  of pings at connection goes before the frames flow, and only once the window
  (16 samples, about one a second) holds none of those does the figure show the busy
  link's own.

What the numbers mean, per condition (all runs' frames pooled, ms): ``expected``, the
error the link's asymmetry must give (0 on a symmetric link); ``median`` the signed
error of the corrected stamps (a stamp moved onto the client's clock less the truth:
negative, early); ``p95`` and ``max`` of its absolute value; ``rtt``, the round trip of
the sample the estimate came from, and ``uncert``, the uncertainty the client reported
(half that round trip plus drift), both at the end of a run, medians over the runs;
``bound``, the once-a-second looks at which the estimate's error was within its reported
uncertainty, of all looks; ``first``, connect() to the first estimate (median and
slowest run; looked for every 5 ms, so within 5 ms); ``runs`` that gave figures (a
failed run is listed below the row); ``frames``, frames with a corrected stamp and, in
brackets, those before the first estimate (uncorrected). With packet loss, fewer frames
in the same time: a lost connection handshake costs TCP a retransmission (1 s, and the
first estimate that much later), and a reply held up by retransmissions past the
client's response timeout makes it give up on the server (listed below the row). The test
test/test_clock_netns.py asserts bounds on the same measurements.
"""
import argparse
import os
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, 'test'))

from netns import (delay_relay, Lan, loss_method, measure_clock,  # noqa: E402, I100
                   namespaces_available, start_clock_server)

MS = 1000000
RECORDING = os.path.join(REPO, '..', 'shared', 'data', 'depth',
                         'kinect2_room_calibration.npz')
if not os.path.exists(RECORDING):
    RECORDING = '/work/shared/data/depth/kinect2_room_calibration.npz'
CONDITIONS = ('loopback', 'veth', 'delay', 'asymmetric', 'loss', 'busy')


def _percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summarize(runs, expected_ns):
    """Return one row of figures (a dict) from the figures of *runs* (measure_clock's)."""
    errors = [e for run in runs for e in run['errors_ns']]
    looks = [s for run in runs for s in run['snapshots']]
    firsts = [run['first_estimate_s'] for run in runs if run['first_estimate_s'] is not None]
    ends = [run['clock'] for run in runs if run['clock']['offset_ns'] is not None]
    absolute = [abs(e) for e in errors]
    return {
        'expected': expected_ns / MS,
        'median': statistics.median(errors) / MS if errors else None,
        'p95': _percentile(absolute, 0.95) / MS if errors else None,
        'max': max(absolute) / MS if errors else None,
        'rtt': statistics.median(c['round_trip_ns'] for c in ends) / MS if ends else None,
        'uncert': statistics.median(c['uncertainty_ns'] for c in ends) / MS if ends else None,
        'bound': '{0}/{1}'.format(
            sum(abs(s['error_ns']) <= s['uncertainty_ns'] for s in looks), len(looks)),
        'first': (statistics.median(firsts) * 1000, max(firsts) * 1000) if firsts else None,
        'frames': '{0} ({1})'.format(sum(run['frames'] for run in runs),
                                     sum(run['uncorrected'] for run in runs)),
        'runs': len(runs),
    }


def _ms(value, width=8):
    return ('{0:' + str(width) + '.3f}').format(value) if value is not None else (
        '-'.rjust(width))


HEADER = '{0:<34} {1:>8} {2:>8} {3:>8} {4:>8} {5:>8} {6:>8} {7:>7} {8:>15} {9:>4} {10}'.format(
    'condition', 'expected', 'median', 'p95', 'max', 'rtt', 'uncert', 'bound',
    'first med/max', 'runs', 'frames')


def print_row(label, row):
    """Print one condition's figures under HEADER."""
    first = '{0:7.1f}/{1:<7.1f}'.format(*row['first']) if row['first'] else '-'.rjust(15)
    print('{0:<34} {1} {2} {3} {4} {5} {6} {7:>7} {8:>15} {9:>4} {10}'.format(
        label, _ms(row['expected']), _ms(row['median']), _ms(row['p95']), _ms(row['max']),
        _ms(row['rtt']), _ms(row['uncert']), row['bound'], first, row['runs'],
        row['frames']), flush=True)


def measure(lan, label, host, endpoint, args, expected_ns=0, duration=None):
    """Run *args.runs* clients in *host* at *endpoint*; print and return the row."""
    runs, failures = [], []
    for _ in range(args.runs):
        try:
            runs.append(measure_clock(lan, host, endpoint, args.offset_ms * MS,
                                      duration or args.duration))
        except AssertionError as err:  # the client failed: say so, go on
            failures.append(str(err).strip().splitlines()[-1:] or ['?'])
    if runs:
        print_row(label, summarize(runs, expected_ns))
    for index, figures in enumerate(runs):
        if figures['first_estimate_s'] is None or not figures['frames']:
            print('  {0}: run {1} had {2} frames, {3} in {4:g} s'.format(
                label, index + 1, figures['frames'] + figures['uncorrected'],
                'no estimate' if figures['first_estimate_s'] is None else 'an estimate',
                duration or args.duration), flush=True)
        if not figures['connected']:
            print('  {0}: run {1}: the client gave up on the server before the end '
                  '({2} frames)'.format(label, index + 1, figures['frames']), flush=True)
    for failure in failures:
        print('  {0}: a run failed: {1}'.format(label, failure[0]), flush=True)
    return runs


def run(args):
    """Measure every condition asked for, printing a row for each."""
    wanted = args.only.split(',') if args.only else list(CONDITIONS)
    unknown = set(wanted) - set(CONDITIONS)
    if unknown:
        raise SystemExit('unknown condition(s): {0}'.format(', '.join(sorted(unknown))))
    out_ms, back_ms = (float(v) for v in args.asymmetric_ms.split(','))
    loss = loss_method() if 'loss' in wanted else None
    print('server clock {0} ms ahead; {1} runs of {2} s per condition; errors in ms '
          '(corrected stamp less the truth)'.format(args.offset_ms, args.runs, args.duration))
    if 'busy' in wanted:
        print('(busy link: {0} s per run)'.format(args.busy_duration))
    print(HEADER, flush=True)
    started = time.monotonic()
    # h1: the server (MockKinect frames); h2: the client; h3: the server of real frames
    # behind a rate-limited link (started only for 'busy').
    with Lan(hosts=3) as lan:
        server_host, client_host, busy_host = lan.hosts
        server, endpoint = start_clock_server(lan, server_host, args.offset_ms * MS)
        if 'loopback' in wanted:
            measure(lan, 'loopback (one namespace)', server_host, endpoint, args)
        if 'veth' in wanted:
            measure(lan, 'veth, clean', client_host, endpoint, args)
        if 'delay' in wanted:
            relay, relayed = delay_relay(lan, client_host, endpoint, args.delay_ms,
                                         args.delay_ms)
            measure(lan, 'relay {0:g} ms each way'.format(args.delay_ms), client_host,
                    relayed, args)
            lan.stop(relay)
        if 'asymmetric' in wanted:
            relay, relayed = delay_relay(lan, client_host, endpoint, out_ms, back_ms)
            measure(lan, 'relay {0:g} ms out, {1:g} ms back'.format(out_ms, back_ms),
                    client_host, relayed, args, expected_ns=(back_ms - out_ms) / 2 * MS)
            lan.stop(relay)
        if 'busy' in wanted:
            if not os.path.exists(RECORDING):
                print('busy: skipped, no recording of real frames at {0}'.format(RECORDING))
            else:
                busy, busy_endpoint = start_clock_server(lan, busy_host, args.offset_ms * MS,
                                                         RECORDING)
                lan.shape(busy_host, 'tbf', 'rate', '40mbit', 'burst', '32kbit', 'latency',
                          '100ms')
                measure(lan, 'frames fill 70 % of 40 Mbit/s', client_host, busy_endpoint,
                        args, duration=args.busy_duration)
                lan.stop(busy)
        if 'loss' in wanted:
            if loss is None:
                print('loss: skipped, neither tc netem nor nftables works here')
            else:
                for host in (server_host, client_host):
                    lan.drop_packets(host, args.loss, loss)
                measure(lan, '{0} % loss each way ({1})'.format(args.loss, loss),
                        client_host, endpoint, args)
        lan.stop(server)
    print('took {0:.0f} s'.format(time.monotonic() - started))


def main(argv=None):
    """Parse the arguments, check for root and namespaces, and run."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=5.0,
                        help='seconds each client runs (default 5)')
    parser.add_argument('--busy-duration', type=float, default=20.0,
                        help='seconds each client runs on the busy link (default 20)')
    parser.add_argument('--runs', type=int, default=3,
                        help='clients per condition, one after the other (default 3)')
    parser.add_argument('--offset-ms', type=int, default=3700,
                        help="how far the server's clock is ahead, ms (default 3700)")
    parser.add_argument('--delay-ms', type=float, default=20.0,
                        help='the relay delay each way, ms (default 20)')
    parser.add_argument('--asymmetric-ms', default='25,5',
                        help='the relay delays out,back, ms (default 25,5)')
    parser.add_argument('--loss', type=int, default=5,
                        help='percent of packets dropped each way, integer (default 5)')
    parser.add_argument('--only', default='',
                        help='conditions to run, comma-separated, of: ' + ','.join(CONDITIONS))
    args = parser.parse_args(argv)
    reason = namespaces_available()
    if reason is not None:
        print('cannot run: {0}'.format(reason), file=sys.stderr)
        return 2

    def terminate(signum, frame):
        raise SystemExit(128 + signum)  # leave through the Lan's clean-up
    signal.signal(signal.SIGTERM, terminate)
    try:
        run(args)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
