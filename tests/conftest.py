"""Test configuration: an isolated HOME (ONE writes its parameters there) and real iblutil rigs."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

_saved_environment: dict[str, str | None] = {}
_home: list[str] = []


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix='iblnet_sync_home_')
    _home.append(home)
    for variable in ('HOME', 'USERPROFILE', 'IBLNET_SYNC_REMOTE_RIGS'):
        _saved_environment.setdefault(variable, os.environ.get(variable))
    for variable in ('HOME', 'USERPROFILE'):
        os.environ[variable] = home
    os.environ.pop('IBLNET_SYNC_REMOTE_RIGS', None)


def pytest_unconfigure(config):
    """Remove the isolated HOME and give the environment back: a test run leaves nothing behind."""
    for variable, value in _saved_environment.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    _saved_environment.clear()
    while _home:
        shutil.rmtree(_home.pop(), ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_home(monkeypatch):
    """Each test its own HOME, inside the run's (removed at its end): ONE's parameters and a main-sync
    rig's session numbers start empty."""
    home = Path(tempfile.mkdtemp(prefix='iblnet_sync_home_', dir=_home[0]))
    for variable in ('HOME', 'USERPROFILE'):
        monkeypatch.setenv(variable, str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def iblutil_rigs():
    """Make real iblutil rigs: ``make(name, **options)``; all are closed after the test."""
    from tests.peers import IblutilRig, LoopThread
    loops = LoopThread()
    rigs = []

    def make(name='rig', **options):
        rig = IblutilRig(name, loop=loops, **options)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
    loops.close()


@pytest.fixture
def no_leaked_threads():
    """Fail the test if it leaves a thread of ours running (one that never ran is no thread: see test_interrupts)."""
    yield
    ours = [t.name for t in threading.enumerate() if t.name.startswith('iblnet_sync') and t.is_alive()]
    assert not ours, f'threads left running: {ours}'
