"""What a test run leaves behind (nothing in the temporary folder) and what an import or a lifecycle loads
(neither ONE nor pandas: only an Alyx token needs them)."""
from __future__ import annotations

import configparser
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iblnet_sync import protocol

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=ROOT, **kwargs)


def test_a_test_run_leaves_nothing_in_the_temporary_folder(tmp_path):
    temporary = tmp_path / 'tmp'
    temporary.mkdir()
    environment = {**os.environ, 'TMPDIR': str(temporary), 'TEMP': str(temporary), 'TMP': str(temporary)}
    # A test that has ONE write its parameters into the isolated HOME, which conftest makes in TMPDIR.
    test = 'tests/test_session.py::test_alyx_token_from_a_rig_is_installed_without_prompt'
    result = run([sys.executable, '-m', 'pytest', '-q', test], env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '1 passed' in result.stdout
    assert sorted(path.name for path in temporary.iterdir()) == []


def test_the_test_run_gives_home_back():
    # conftest's isolated HOME is in force during the run; pytest_unconfigure restores the caller's.
    assert Path.home().name.startswith('iblnet_sync_home_')
    code = ('import os, sys, pytest\n'
            'sys.argv = ["pytest"]\n'
            'before = os.environ.get("HOME")\n'
            'code = pytest.main(["-q", "--co", "tests/test_footprint.py"])\n'
            'print(int(code), before == os.environ.get("HOME"))\n')
    result = run([sys.executable, '-c', code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '0 True'


def test_import_loads_neither_one_nor_pandas():
    code = ('import sys, json, iblnet_sync, iblnet_sync.demo, iblnet_sync.ping\n'
            'print(json.dumps(sorted(m for m in ("one", "pandas", "pyarrow", "scipy") if m in sys.modules)))\n')
    result = run([sys.executable, '-c', code])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


LIFECYCLE = '''
import datetime, json, sys
from iblnet_sync import NetworkSession, RigServer

class Host:
    def __init__(self):
        self.hardware_settings = {'MAIN_SYNC': False}
        self.session_info = {'SUBJECT_NAME': 'mouse', 'SESSION_NUMBER': 0,
                             'SESSION_START_TIME': datetime.datetime.now().isoformat()}
        self.experiment_description = {}
        self.init_mixin_network()

    def run(self):
        return 'trials'

class Task(NetworkSession, Host):
    pass

with RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True,
               exp_ref=f'{datetime.date.today()}_002_mouse') as rig:
    task = Task(remote_rigs={'cameras': rig.uri})
    outcome = task.run()
print(json.dumps({'sequence': task.exp_ref['sequence'], 'outcome': outcome, 'status': rig.status.name,
                  'loaded': sorted(m for m in ('one', 'pandas') if m in sys.modules)}))
'''


def test_a_whole_lifecycle_loads_neither_one_nor_pandas():
    result = run([sys.executable, '-c', LIFECYCLE])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {'sequence': 2, 'outcome': 'trials', 'status': 'STOPPED', 'loaded': []}


VALID_REFERENCES = [
    '2026-11-24_2_mouse', '2026-11-24_002_mouse', '2026-11-24_1_sub_ject_01', '2026-11-24_ 3_mouse',
    {'subject': 'mouse', 'date': '2026-11-24', 'sequence': '002'},
    {'subject': 'mouse', 'date': datetime.date(2026, 11, 24), 'sequence': 2},
    {'subject': 7, 'date': '2026-11-24', 'sequence': 2.0, 'extra': 'ignored'},
]
INVALID_REFERENCES = [None, '', 'mouse', '2026-11-24_x_mouse', '2026-13-40_1_mouse', '2026-11-24_2', 5, {},
                      ['2026-11-24_2_mouse'], {'subject': 'mouse', 'date': '2026-11-24'},
                      {'subject': 'mouse', 'date': '2026-11-24', 'sequence': None}]


def _one_reading(reference):
    """What session.py did before: ONE's ref2dict, then the types it relied on."""
    from one.converters import ConversionMixin
    try:
        ref = ConversionMixin.ref2dict(reference)
        return {'subject': str(ref['subject']), 'date': ref['date'], 'sequence': int(ref['sequence'])}
    except (AttributeError, KeyError, TypeError, ValueError):
        return 'invalid'


def _our_reading(reference):
    try:
        return protocol.exp_ref_to_dict(reference)
    except (AttributeError, KeyError, TypeError, ValueError):
        return 'invalid'


@pytest.mark.parametrize('reference', VALID_REFERENCES, ids=repr)
def test_a_main_sync_reference_reads_as_with_one(reference):
    ours = _our_reading(reference)
    assert ours != 'invalid' and ours == _one_reading(reference)
    assert type(ours['date']) is datetime.date and type(ours['sequence']) is int


@pytest.mark.parametrize('reference', INVALID_REFERENCES, ids=repr)
def test_a_reference_one_cannot_read_is_refused(reference):
    assert _our_reading(reference) == 'invalid'
    assert _one_reading(reference) == 'invalid' or _one_reading(reference)['date'] is None


def test_package_metadata_names_author_and_the_pythons_ci_tests():
    config = configparser.ConfigParser()
    config.read(ROOT / 'setup.cfg')
    metadata = config['metadata']
    assert metadata['author'] and metadata['license'] and metadata['keywords']
    classified = re.findall(r'Programming Language :: Python :: (3\.\d+)$', metadata['classifiers'], re.M)
    assert classified == ['3.10', '3.11', '3.12', '3.13']
    assert config['options']['python_requires'] == f'>={classified[0]}'
    supported = re.search(r'^SUPPORTED=\((.*?)\)', (ROOT / '.ci' / 'run').read_text(), re.M)
    assert supported is not None and supported.group(1).split() == classified
