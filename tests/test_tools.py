"""tools/ping_rigs.py and the README's demo, run as a person runs them: in a subprocess."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from iblnet_sync import RigServer

ROOT = Path(__file__).resolve().parent.parent
PING = [sys.executable, str(ROOT / 'tools' / 'ping_rigs.py')]


def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, **kwargs)


@pytest.fixture
def live_rig():
    with RigServer('udp://127.0.0.1:0', name='cameras') as rig:
        yield rig


@pytest.fixture
def dead_uri():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return f'udp://127.0.0.1:{sock.getsockname()[1]}'


def test_ping_live_and_dead_rig_table(live_rig, dead_uri, tmp_path):
    rigs = tmp_path / 'remote_rigs.yaml'
    rigs.write_text(f'cameras: {live_rig.uri}\n')
    result = run(PING + [str(rigs), '--rig', f'ghost={dead_uri}', '--count', '3', '--timeout', '2'])
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ['RIG', 'URI', 'STATUS']
    cameras = next(line for line in lines if line.startswith('cameras'))
    ghost = next(line for line in lines if line.startswith('ghost'))
    assert live_rig.uri in cameras and 'CONNECTED' in cameras and cameras.rstrip().endswith('OK')
    assert dead_uri in ghost and 'REFUSED' in ghost and 'nothing is listening' in ghost and '100%' in ghost


def test_ping_json_and_exit_zero_when_all_answer(live_rig):
    result = run(PING + ['--rig', f'cameras={live_rig.uri}', '--json', '--count', '2'])
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert report['name'] == 'cameras' and report['answered'] == report['sent'] == 2
    assert report['status'] == 'CONNECTED' and report['problem'] is None
    assert 0 < report['echo_ms']['min'] <= report['response_ms']['max']


def test_ping_json_names_the_problem(dead_uri):
    result = run(PING + ['--rig', f'ghost={dead_uri}', '--json'])
    assert result.returncode == 1
    assert json.loads(result.stdout)[0]['problem']['stage'] == 'refused'


@pytest.mark.parametrize('arguments, message', [
    (['missing.yaml'], 'No remote rigs file'),
    (['--rig', 'nonsense'], 'NAME=URI'),
    (['--rig', 'x=udp://127.0.0.1:70000'], 'invalid or unreachable URI'),
])
def test_ping_configuration_errors_exit_2_without_traceback(arguments, message, tmp_path):
    result = run(PING + arguments, env={'HOME': str(tmp_path), 'PATH': ''})
    assert result.returncode == 2
    assert message in result.stderr and 'Traceback' not in result.stderr


def test_ping_malformed_file_exits_2(tmp_path):
    bad = tmp_path / 'remote_rigs.yaml'
    bad.write_text('cameras: [unclosed\n')
    result = run(PING + [str(bad)])
    assert result.returncode == 2 and 'Cannot read' in result.stderr and 'Traceback' not in result.stderr


def test_ping_does_not_import_one(live_rig):
    code = ('import runpy, sys\n'
            f'sys.argv = ["ping_rigs.py", "--rig", "cameras={live_rig.uri}"]\n'
            'try:\n    runpy.run_path(%r, run_name="__main__")\n'
            'except SystemExit as ex:\n    assert ex.code == 0, ex.code\n'
            'print(sorted(m for m in sys.modules if m == "one" or m.startswith("one.")))\n') % str(PING[1])
    result = run([sys.executable, '-c', code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '[]'


def test_demo_runs_a_whole_experiment():
    result = run([sys.executable, '-m', 'iblnet_sync.demo'])
    assert result.returncode == 0, result.stderr
    for step in ('EXPINFO', 'EXPINIT', 'EXPSTART', 'EXPEND'):
        assert step in result.stdout
    assert 'main sync' in result.stdout and 'cameras=STOPPED, neuropixel=STOPPED, widefield=STOPPED' in result.stdout


def test_demo_runs_against_rigs_named_in_a_file(tmp_path):
    with RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True) as cameras:
        rigs = tmp_path / 'remote_rigs.yaml'
        rigs.write_text(f'cameras: {cameras.uri}\n')
        result = run([sys.executable, '-m', 'iblnet_sync.demo', '--rigs', str(rigs), '--subject', 'mouse'])
        assert result.returncode == 0, result.stderr
        assert 'EXPEND' in result.stdout and cameras.status.name == 'STOPPED'
