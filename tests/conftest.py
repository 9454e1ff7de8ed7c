"""Test configuration: an isolated HOME (ONE writes its parameters there) and real iblutil rigs."""
import os
import sys
import tempfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix='iblnet_sync_home_')
    for variable in ('HOME', 'USERPROFILE'):
        os.environ[variable] = home
    os.environ.pop('IBLNET_SYNC_REMOTE_RIGS', None)


@pytest.fixture(autouse=True)
def fresh_home(tmp_path, monkeypatch):
    """Each test its own HOME: ONE's parameters and a main-sync rig's session numbers start empty."""
    home = tmp_path / 'home'
    home.mkdir()
    for variable in ('HOME', 'USERPROFILE'):
        monkeypatch.setenv(variable, str(home))
    return home


@pytest.fixture
def iblutil_rigs():
    """Make real iblutil rigs: ``make(name, **options)``; all are closed after the test."""
    from peers import IblutilRig, LoopThread
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
    """Fail the test if it leaves a thread of ours running."""
    yield
    ours = [t.name for t in threading.enumerate() if t.name.startswith('iblnet_sync')]
    assert not ours, f'threads left running: {ours}'
