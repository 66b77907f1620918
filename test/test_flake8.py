"""Lint the repository's Python with ament_flake8 (ROS 2 style: 99 columns, google imports)."""
import os

import pytest

ament_flake8 = pytest.importorskip('ament_flake8.main')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not ours to lint: virtual environments and colcon's output, if they sit in the tree.
EXCLUDES = ['.venv', 'venv', 'build', 'install', 'log', 'ws', '.git']


def test_flake8(monkeypatch):
    monkeypatch.chdir(REPO)
    rc, errors = ament_flake8.main_with_errors(argv=['--exclude'] + EXCLUDES + ['--', REPO])
    assert rc == 0, 'Found {0} code style errors / warnings:\n{1}'.format(
        len(errors), '\n'.join(errors))
