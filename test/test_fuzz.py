"""Fuzzing: thousands of bad messages at the server and at the client, on loopback."""
import os
import sys

from conftest import run_async

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'bench'))
import fuzz  # noqa: E402  (bench/fuzz.py: the same fuzzers the script runs)


def test_server_answers_or_drops_every_fuzzed_control_message_and_serves_on():
    counts = run_async(fuzz.run_control_fuzz(2000, seed=20261125), timeout=240)
    answered = sum(v for k, v in counts.items() if k.startswith('answered '))
    assert answered + counts['dropped by the server'] + counts['empty (not sendable)'] \
        == counts['sent'] == 2000
    assert counts['answered error'] > 1000
    # Only messages above ZeroMQ's 1 MiB limit are dropped: a few percent of them.
    assert counts['dropped by the server'] < 200
    assert counts['client frames during fuzzing'] > 0
    assert counts['client still streaming'] == 1
    assert counts['client ping answered after'] == 1


def test_client_drops_and_counts_every_malformed_depth_message():
    counts = run_async(fuzz.run_depth_fuzz(1500, seed=20261125), timeout=240)
    assert counts['malformed sent'] == 1500
    assert counts['dropped as invalid'] == 1500
    assert counts['valid delivered'] == counts['valid sent'] == 150
    assert counts['valid and byte-exact'] == 150
    # Bombs claim 10 and 200 MiB; nothing may allocate more than a few frames.
    assert counts['peak RSS growth MiB'] < 32
