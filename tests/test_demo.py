"""The demo as a person runs it: status names, readable answers, and -v showing both directions."""
import re
import subprocess
import sys
from pathlib import Path

from iblnet_sync.demo import _describe

ROOT = Path(__file__).resolve().parent.parent


def demo(*arguments):
    result = subprocess.run([sys.executable, '-m', 'iblnet_sync.demo', *arguments], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return result


def timeline(stdout):
    """{(step, rig): answer} from the printed timeline."""
    rows, step = {}, None
    for line in stdout.split('Timeline')[1].split('\n\n')[0].splitlines()[1:]:
        first = re.match(r'  (EXP\w+) +[\d.]+ ms   (.*)', line)
        step, rest = (first.group(1), first.group(2)) if first else (step, line.strip())
        rig, answer = rest.split(maxsplit=1)
        rows[step, rig] = answer
    return rows


def test_the_timeline_names_statuses_and_shows_every_answer():
    rows = timeline(demo().stdout)
    for rig in ('cameras', 'neuropixel', 'widefield'):
        main_sync = ', main sync, reference ' if rig == 'cameras' else ''
        assert re.fullmatch(rf'CONNECTED({main_sync}\S+_1_demo_mouse)?', rows['EXPINFO', rig]), rows
        assert bool(main_sync) == ('reference' in rows['EXPINFO', rig])
        assert rows['EXPINIT', rig] == 'INITIALIZED'
        assert re.fullmatch(r'started \S+_1_demo_mouse', rows['EXPSTART', rig])
        assert rows['EXPSTATUS', rig] == 'RUNNING'
        assert rows['EXPEND', rig] == 'done'
    assert len(rows) == 15


def test_verbose_logs_what_is_sent_and_what_is_received():
    log = demo('-v').stderr
    for rig in ('cameras', 'neuropixel', 'widefield'):
        for code in (64, 1, 2, 32, 4):  # EXPINFO, EXPINIT, EXPSTART, EXPSTATUS, EXPEND
            assert re.search(rf"iblnet_sync.communicator: {rig}: sent .*\[{code}, ", log), (rig, code)
            assert re.search(rf'iblnet_sync.demo: {rig}: received \[{code}, .* from 127.0.0.1:\d+', log), (rig, code)


def test_quiet_by_default():
    assert demo().stderr == ''


def test_answers_of_other_shapes_stay_readable():
    assert _describe('EXPINFO', [0, {'main_sync': False, 'exp_ref': None}]) == 'CONNECTED'
    assert _describe('EXPINIT', [10, {'frames': 3}]) == "INITIALIZED, {'frames': 3}"
    assert _describe('EXPSTATUS', [99]) == '99'
    assert _describe('EXPSTART', ['2026-11-24_3_mouse', {'frame_rate': 60}]) == (
        "started 2026-11-24_3_mouse, {'frame_rate': 60}")
    assert _describe('EXPEND', [{'frames': 1200}]) == "done, {'frames': 1200}"
    assert _describe('ALYX', None) == 'None'
