"""Check the repository's docstrings with ament_pep257.

The ament convention, except D213: this repository writes a multi-line docstring's
summary on the first line (D212 style, as PEP 257's own examples); D212 and D213 are
mutually exclusive and the ament convention already ignores D212.
"""
import os

import pytest

ament_pep257 = pytest.importorskip('ament_pep257.main')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXCLUDES = [os.path.join(REPO, d) for d in ('.venv', 'venv', 'build', 'install', 'log',
                                            'ws', '.git')]


def test_pep257(monkeypatch):
    monkeypatch.chdir(REPO)
    rc = ament_pep257.main(argv=['--add-ignore', 'D213', '--exclude'] + EXCLUDES
                           + ['--', REPO])
    assert rc == 0, 'Found code style errors / warnings'
