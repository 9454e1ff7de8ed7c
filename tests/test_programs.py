"""The demo and iblnet-ping as a person meets them: --version, and every failure told in a line, with its exit code."""
from __future__ import annotations

import datetime
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from iblnet_sync import RigServer, __version__

ROOT = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, '-m', 'iblnet_sync.demo']
PING = [sys.executable, '-m', 'iblnet_sync.ping']


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize('program', [DEMO, PING], ids=['demo', 'ping'])
def test_every_program_tells_its_version(program):
    result = run(program + ['--version'])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f'(iblnet_sync {__version__})')


@pytest.mark.parametrize('content, message', [
    (None, 'No remote rigs file: looked for {path}'),
    ('- cameras\n', 'Remote rigs file {path} must map rig names to URIs'),
    ('cameras: 1\n', "Remote rigs file {path}: entry 'cameras' is 1, not a URI"),
], ids=['missing', 'a list', 'not a URI'])
def test_demo_bad_rigs_file_is_one_line_and_exit_2(content, message, tmp_path):
    path = tmp_path / 'remote_rigs.yaml'
    if content is not None:
        path.write_text(content)
    result = run(DEMO + ['--rigs', str(path)])
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith('python -m iblnet_sync.demo: error: ' + message.format(path=path)), line
    assert result.stdout == ''


def test_demo_yaml_syntax_error_keeps_its_place_without_a_traceback(tmp_path):
    path = tmp_path / 'remote_rigs.yaml'
    path.write_text('cameras: [udp://127.0.0.1:11001\n')
    result = run(DEMO + ['--rigs', str(path)])
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f'python -m iblnet_sync.demo: error: Cannot read remote rigs file {path}: ')
    assert 'line 1, column' in result.stderr and 'Traceback' not in result.stderr


def test_demo_failed_experiment_is_told_without_a_traceback(tmp_path):
    with RigServer('udp://127.0.0.1:0', name='cameras') as rig:  # no rig is the main sync
        path = tmp_path / 'remote_rigs.yaml'
        path.write_text(f'cameras: {rig.uri}\n')
        result = run(DEMO + ['--rigs', str(path)])
        assert rig.status.name == 'CONNECTED'  # never initialised
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith('python -m iblnet_sync.demo: error: Exactly one remote rig must be the main sync; '
                           '0 claim it (of cameras). To fix: set main_sync: true')


@pytest.mark.skipif(sys.platform == 'win32', reason='Ctrl-C is a console event on Windows, not SIGINT')
def test_demo_ctrl_c_is_one_line_and_exit_130(tmp_path):
    asked, release = threading.Event(), threading.Event()

    def hold_info(data):
        asked.set()
        release.wait(30)

    with RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True) as rig:
        rig.assign_handler('EXPINFO', hold_info)  # the demo waits for the answer: Ctrl-C it there
        path = tmp_path / 'remote_rigs.yaml'
        path.write_text(f'cameras: {rig.uri}\n')
        process = subprocess.Popen(DEMO + ['--rigs', str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=ROOT)
        try:
            assert asked.wait(30), 'the demo never asked for EXPINFO'
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            release.set()
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 130
    assert err.splitlines() == ['python -m iblnet_sync.demo: interrupted']
    assert out.startswith('Rigs from ')


@pytest.mark.parametrize('option, value, message', [
    ('--count', '0', '--count must be >= 1, not 0'),
    ('--timeout', '0', '--timeout must be > 0, not 0'),
    ('--resends', '-1', '--resends must be >= 0, not -1'),
    ('--max-offset', '-2', '--max-offset must be >= 0, not -2'),
    ('--interval', '0', '--interval must be > 0, not 0'),
])
def test_ping_names_the_option_that_is_wrong(option, value, message):
    result = run(PING + ['--rig', 'cameras=127.0.0.1', option, value])
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(f': {message}')
    for other in {'--count', '--timeout', '--resends', '--max-offset', '--interval'} - {option}:
        assert f'{other} must' not in result.stderr


def test_ping_names_every_option_that_is_wrong():
    result = run(PING + ['--rig', 'cameras=127.0.0.1', '--timeout', '-1', '--interval', '0'])
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(': --timeout must be > 0, not -1; --interval must be > 0, not 0')


def test_the_readme_task_example_runs_with_what_the_readme_says_it_needs(tmp_path):
    """The README's task against a main-sync rig (the example rig is one) at the address it names, here on
    a free port instead of 11001."""
    readme = (ROOT / 'README.md').read_text()
    example = re.findall(r'```python\n(.*?)```', readme, re.S)[0]
    assert "Task(remote_rigs={'cameras': 'udp://127.0.0.1:11001'}" in example
    with RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True,
                   session_numbers=tmp_path / 'numbers.json') as cameras:
        (tmp_path / 'task.py').write_text(example.replace('udp://127.0.0.1:11001', cameras.uri))
        # in a folder of its own, on the installed iblnet_sync (the README's pip install), as a person runs it
        result = subprocess.run([sys.executable, 'task.py'], check=False, capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        status = cameras.status.name
    assert result.returncode == 0, result.stderr
    reference, folder = result.stdout.splitlines()
    today = datetime.date.today()
    assert reference == repr({'subject': 'mouse', 'date': today, 'sequence': 1})
    assert Path(folder).parts[-3:] == ('mouse', today.isoformat(), '001')
    assert status == 'STOPPED'
    assert not Path(folder).exists()  # it only computes the folder
