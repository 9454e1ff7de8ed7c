"""tools/ping_rigs.py (iblnet-ping) and the README's demo, run as a person runs them: in a subprocess,
or through ``iblnet_sync.ping.main`` where the test needs the rig in its own process."""
import asyncio
import configparser
import datetime
import json
import logging
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from iblnet_sync import RigServer
from iblnet_sync.clock import clock_offset
from iblnet_sync.ping import HIDE_CURSOR, SHOW_CURSOR, main

ROOT = Path(__file__).resolve().parent.parent
PING = [sys.executable, str(ROOT / 'tools' / 'ping_rigs.py')]


def run(command, env=None, cwd=ROOT, **kwargs):
    """Run `command` from the repository root; an environment of the test's own keeps the caller's PYTHONPATH, so
    that tools/ scripts import the same iblnet_sync whatever the environment."""
    if env is not None and 'PYTHONPATH' in os.environ:
        env = {'PYTHONPATH': os.environ['PYTHONPATH'], **env}
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, cwd=cwd, env=env, **kwargs)


def test_the_tools_run_this_checkouts_iblnet_sync():
    """tools/ scripts import the installed iblnet_sync (no path insertion): unless it is this checkout's code (the
    README's install, editable or not), the tests of tools/ping_rigs.py would test other code."""
    code = 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("iblnet_sync").origin).parent)'
    result = run([sys.executable, '-c', code], cwd=ROOT / 'tools')  # a tool's sys.path: its folder, then the installed
    assert result.returncode == 0, result.stderr
    installed = Path(result.stdout.strip())
    differ = sorted(path.name for path in (ROOT / 'iblnet_sync').glob('*.py')
                    if not (installed / path.name).is_file()
                    or (installed / path.name).read_bytes() != path.read_bytes())
    assert not differ, (f'tools/ import iblnet_sync from {installed}, which is not this checkout ({", ".join(differ)} '
                        f'differ): pip install -e . here, or set PYTHONPATH={ROOT}')


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
    (['--rig', 'x=udp://127.0.0.1:70000'], 'the port must be a number'),
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


# --- iblnet-ping: clocks, errors for machines, echoes without answers, --watch ---
def ping_json(capsys, *arguments: str) -> tuple[int, list | dict]:
    """Run the program in this process with --json; its exit code and its parsed output."""
    code = main([*arguments, '--json'])
    return code, json.loads(capsys.readouterr().out)


def _warned_shift(warning: str) -> bool:
    """The warning names an offset of about 5 s (printed to the millisecond: 4.998 or 5.001)."""
    found = re.search(r'clock (\d+\.\d+) s', warning)
    return found is not None and abs(float(found.group(1)) - 5.0) < 0.1


@pytest.mark.parametrize('shift, direction', [(5.0, 'ahead of'), (-5.0, 'behind')])
def test_ping_reports_a_shifted_rig_clock_within_its_bound_and_warns(shift, direction, capsys):
    with RigServer('udp://127.0.0.1:0', name='cameras', clock=lambda: time.time() + shift) as rig:
        code, (report,) = ping_json(capsys, '--rig', f'cameras={rig.uri}')
        assert code == 0 and report['status'] == 'CONNECTED'
        assert abs(report['clock_offset_s'] - shift) <= report['clock_offset_bound_s'] < 0.5
        assert report['clock_note'] is None
        assert any(_warned_shift(w) and direction in w for w in report['warnings']), report['warnings']

        assert main(['--rig', f'cameras={rig.uri}']) == 0
        lines = capsys.readouterr().out.splitlines()
        assert 'CLOCK OFFSET' in lines[0] and f'{shift:+.1f}' in lines[1][:-4] + lines[1]
        assert any(line.startswith('WARNING cameras: clock') and _warned_shift(line) and direction in line
                   for line in lines)


def test_ping_no_warning_within_max_offset_and_a_warning_for_another_date(capsys):
    with RigServer('udp://127.0.0.1:0', name='near', clock=lambda: time.time() + 0.3) as near, \
            RigServer('udp://127.0.0.1:0', name='tomorrow', clock=lambda: time.time() + 2 * 86400) as far:
        code, reports = ping_json(capsys, '--rig', f'near={near.uri}', '--rig', f'tomorrow={far.uri}')
        assert code == 0
        near_report, far_report = reports
        assert near_report['warnings'] == [] and abs(near_report['clock_offset_s'] - 0.3) <= 0.5
        rig_date = datetime.date.fromisoformat(far_report['rig_time'][:10])
        assert any(f"date is {rig_date}" in w for w in far_report['warnings']), far_report['warnings']
        code, (report,) = ping_json(capsys, '--rig', f'near={near.uri}', '--max-offset', '0.1')
        assert 'more than 0.1 s' in report['warnings'][0]


def test_ping_says_the_offset_of_an_iblutil_rig_is_unknown(iblutil_rigs, capsys):
    rig = iblutil_rigs('cameras')
    code, (report,) = ping_json(capsys, '--rig', f'cameras={rig.uri}')
    assert code == 0 and report['status'] == 'CONNECTED'
    assert report['clock_offset_s'] is None and report['clock_offset_bound_s'] is None
    assert report['clock_note'].startswith('unknown') and report['warnings'] == []
    assert main(['--rig', f'cameras={rig.uri}']) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert 'unknown: the rig sends no clock' in line and line.rstrip().endswith('OK')
    assert rig.is_connected and not rig.errors  # every answer was echoed
    close_iblutil_rig(rig)


def close_iblutil_rig(rig) -> None:
    """Close an iblutil rig and let its event loop finish closing the transport (the fixture stops the loop at once)."""
    rig.close()
    rig.loops.run(asyncio.sleep(0))


@pytest.fixture
def stuck_rig():
    """A rig whose software is stuck: it echoes every message, but its handlers never return during the test."""
    release = threading.Event()
    with RigServer('udp://127.0.0.1:0', name='stuck') as rig:
        rig.assign_handler('EXPINFO', lambda data: release.wait(30))
        rig.assign_handler('EXPSTATUS', lambda data: release.wait(30))
        try:
            yield rig
        finally:
            release.set()


def test_ping_shows_the_echo_time_of_a_rig_that_echoes_but_never_answers(stuck_rig, capsys):
    rig = stuck_rig
    code, (report,) = ping_json(capsys, '--rig', f'stuck={rig.uri}', '--timeout', '0.6', '--count', '2')
    assert code == 1
    assert report['problem']['stage'] == 'no response' and report['answered'] == 0
    assert report['response_ms'] is None and 0 < report['echo_ms']['min'] <= report['echo_ms']['max'] < 600
    assert report['clock_note'] == 'unknown: no answer to EXPINFO (no response)'
    assert main(['--rig', f'stuck={rig.uri}', '--timeout', '0.6']) == 1
    stuck = capsys.readouterr().out.splitlines()[1].split()
    assert stuck[2] == '-' and float(stuck[3]) > 0 and stuck[4] == '-'  # STATUS, ECHO ms, RESPONSE ms


@pytest.mark.parametrize('arguments, message', [
    (['missing.yaml'], 'No remote rigs file'),
    (['--rig', 'x=udp://127.0.0.1:70000'], 'the port must be a number'),
    (['--rig', 'a=127.0.0.1', '--rig', 'a=127.0.0.2'], "'a' is given twice"),
    (['--count', '0'], '--count must be >= 1'),
    (['--no-such-option'], 'unrecognized arguments'),
])
def test_ping_json_configuration_error_prints_a_json_object_and_exits_2(arguments, message, tmp_path):
    result = run(PING + arguments + ['--json'], env={'HOME': str(tmp_path), 'PATH': ''})
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)
    assert message in error['error'] and error['exit_code'] == 2
    assert 'Traceback' not in result.stderr


def test_ping_a_repeated_rig_name_is_an_error(live_rig):
    result = run(PING + ['--rig', f'cameras={live_rig.uri}', '--rig', f'cameras={live_rig.uri}'])
    assert result.returncode == 2 and "--rig 'cameras' is given twice" in result.stderr
    assert result.stdout == ''


def test_ping_help_names_both_file_names_and_where_it_looks(tmp_path):
    result = run(PING + ['--help'], env={'HOME': str(tmp_path), 'PATH': '', 'COLUMNS': '80'})
    assert result.returncode == 0
    for text in ('remote_rigs.yaml', 'remote_devices.yaml', '$IBLNET_SYNC_REMOTE_RIGS',
                 str(tmp_path / '.iblnet_sync'), '--watch', '--max-offset'):
        assert text in result.stdout, text


def test_ping_is_installed_as_the_console_command_iblnet_ping():
    config = configparser.ConfigParser()
    config.read(ROOT / 'setup.cfg')
    scripts = dict(line.replace(' ', '').split('=') for line in config['options.entry_points']['console_scripts']
                   .strip().splitlines())
    assert scripts['iblnet-ping'] == 'iblnet_sync.ping:main' and scripts['iblnet-rig'] == 'iblnet_sync.rig:main'


def documented_scripts() -> set[str]:
    """The tools and test modules that the README and docs/protocol.md tell a person to run, as written there."""
    text = (ROOT / 'README.md').read_text() + (ROOT / 'docs' / 'protocol.md').read_text()
    return set(re.findall(r'python (-m tests\.[a-z_]+|tools/[a-z_]+\.py)', text))  # (not tests.NAME)


def test_every_documented_tool_and_test_module_runs_as_written_from_the_repository_root():
    """No path insertions: tools/ scripts run on the installed iblnet_sync, test modules as ``python -m tests.X``."""
    scripts = documented_scripts() - {'-m tests.test_docs'}  # (that one rewrites docs/protocol.md: test_docs.py)
    assert {'-m tests.simulation', '-m tests.relay', '-m tests.measure_video_loss', 'tools/ping_rigs.py',
            'tools/bench_network.py', 'tools/flood_rig.py'} <= scripts
    for script in sorted(scripts):
        result = run([sys.executable, *script.split(), '--help'])
        assert result.returncode == 0 and 'usage:' in result.stdout, (script, result.stderr)


def test_clock_offset_needs_a_clock_that_is_a_finite_number():
    assert clock_offset({'clock': 105.0}, 99.0, 101.0) == (5.0, 1.0)
    for info in (None, [], {}, {'clock': None}, {'clock': True}, {'clock': '105'}, {'clock': math.nan}):
        assert clock_offset(info, 99.0, 101.0) is None


def test_session_logs_each_rig_clock_offset_at_init(iblutil_rigs, caplog):
    from tests.legacy_task import Task
    iblutil_rig = iblutil_rigs('ephys')
    with RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True, clock=lambda: time.time() - 5.0) as rig, \
            caplog.at_level(logging.INFO, logger='iblnet_sync.session'):
        task = Task(remote_rigs={'cameras': rig.uri, 'ephys': iblutil_rig.uri}, subject='mouse')
        try:
            assert task.exp_ref['subject'] == 'mouse'
        finally:
            task.cleanup_mixin_network()
            close_iblutil_rig(iblutil_rig)
    messages = [r.getMessage() for r in caplog.records if r.name == 'iblnet_sync.session']
    (cameras,) = [m for m in messages if m.startswith('Clock of cameras: ')]
    offset, bound = cameras.split(': ')[1].split(' s from this PC (± ')
    assert abs(float(offset) + 5.0) <= float(bound.rstrip(' s)')) + 5e-4  # the log rounds to the millisecond
    assert 'Clock of ephys: offset unknown' in ' '.join(messages)


def test_watch_json_gives_one_line_per_refresh(live_rig, stuck_rig):
    stuck = stuck_rig
    result = run(PING + ['--rig', f'cameras={live_rig.uri}', '--rig', f'stuck={stuck.uri}', '--watch',
                         '--count', '3', '--interval', '0.05', '--timeout', '1', '--json'])
    assert result.returncode == 1, result.stderr
    refreshes = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r['refresh'] for r in refreshes] == [1, 2, 3]
    cameras, stuck_report = refreshes[-1]['rigs']
    assert cameras['status'] == 'CONNECTED' and cameras['round_trip_ms'] > 0 and cameras['problem'] is None
    assert cameras['rounds_last_minute'] == 3 and cameras['loss_percent_last_minute'] == 0
    assert abs(cameras['clock_offset_s']) <= 1 and cameras['clock_offset_bound_s'] is not None
    assert stuck_report['loss_percent_last_minute'] == 100 and stuck_report['echo_ms'] > 0
    assert stuck_report['round_trip_ms'] is None and stuck_report['clock_offset_s'] is None


def read_terminal(fd: int, until, timeout: float = 20.0) -> str:
    """Read a pseudo-terminal until ``until(text)`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    data = b''
    while not until(data.decode(errors='replace')):
        left = deadline - time.monotonic()
        assert left > 0, f'not seen within {timeout} s; the terminal shows {data[-800:]!r}'
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, 'the terminal closed'
            data += chunk
    return data.decode(errors='replace')


@pytest.mark.skipif(sys.platform == 'win32', reason='pseudo-terminals are POSIX')
def test_watch_redraws_in_a_terminal_until_ctrl_c_ends_it_cleanly(live_rig):
    import pty
    import termios
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        process = subprocess.Popen(PING + ['--rig', f'cameras={live_rig.uri}', '--watch', '--interval', '0.1'],
                                   stdin=slave, stdout=slave, stderr=slave, cwd=ROOT)
        try:
            shown = read_terminal(master, lambda text: 'refresh 3,' in text)
            process.send_signal(signal.SIGINT)
            shown += read_terminal(master, lambda text: SHOW_CURSOR in text)
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    assert 'Traceback' not in shown and 'KeyboardInterrupt' not in shown
    assert shown.startswith(HIDE_CURSOR) and shown.rstrip().endswith(SHOW_CURSOR)
    assert shown.count('\x1b[H') >= 4  # redrawn in place: cursor home at each refresh
    last = shown.split('refresh 3,')[1]
    assert 'cameras' in last and 'CONNECTED' in last and ' ms' in last and '0% of 3' in last and 'OK' in last
