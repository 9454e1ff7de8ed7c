"""The rig agent (iblnet-rig): whole lifecycles driven by our Services and iblutil's, real commands, clean stops."""
from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import iblnet_sync
from iblnet_sync import BroadcastError, ExpStatus, Services, __version__
from iblnet_sync.rig import (
    CommandFailed,
    RigAgent,
    ValueRefused,
    check_actions,
    main,
    mask_alyx,
    placeholder_values,
    render,
)
from iblnet_sync.rig_config import EVENTS, EXAMPLE_CONFIG, RigConfigError, load_config, parse_config

REF = '2026-11-24_3_mouse'
DEADLINE = 10.0
POSIX_ONLY = pytest.mark.skipif(sys.platform == 'win32', reason='POSIX signals and process groups')
NEEDS_PIDFD = pytest.mark.skipif(not hasattr(os, 'pidfd_open'), reason='waits for a grandchild by its pidfd (Linux)')
AGENT = [sys.executable, '-m', 'iblnet_sync.rig']


# --- helpers ---
def agent_env() -> dict[str, str]:
    """The environment for the agent as a program: this iblnet_sync first on its path."""
    return {**os.environ, 'PYTHONPATH': str(Path(iblnet_sync.__file__).parents[1])}


def python(code: str) -> list[str]:
    """A command running `code` in this Python (no braces in `code`: they are placeholders)."""
    return [sys.executable, '-c', code]


def touch(path: str) -> list[str]:
    """A command creating the file `path` (placeholders allowed)."""
    return python('import pathlib, sys; pathlib.Path(sys.argv[1]).touch()') + [path]


def recorder(stopped_file: str, ignore_sigint: bool = False, grandchild: bool = False) -> list[str]:
    """A long-running command: says 'recording PID [GRANDCHILD_PID]' on stderr, writes `stopped_file` on Ctrl-C."""
    code = ['import os, pathlib, signal, subprocess, sys, time']
    if ignore_sigint:
        code.append('signal.signal(signal.SIGINT, signal.SIG_IGN)')
    if grandchild:
        code.append("g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])")
        code.append("extra = ' %d' % g.pid")
    else:
        code.append("extra = ''")
    code += ['try:',
             "    sys.stderr.write('recording %d%s' % (os.getpid(), extra) + chr(10)); sys.stderr.flush()",
             '    time.sleep(60)',
             'except KeyboardInterrupt:',
             '    pathlib.Path(sys.argv[1]).touch()']
    return python('\n'.join(code)) + [stopped_file]


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float = DEADLINE) -> bool:
    """Wait until process `pid` (not necessarily our child) has ended, by its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


class Lines:
    """Lines to wait for with a deadline: ``wait_for(pattern)`` returns the first match at or after the cursor."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._cursor = 0

    def add(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = DEADLINE) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(self._cursor, len(self.lines)):
                    if match := re.search(pattern, self.lines[index]):
                        self._cursor = index + 1
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f'no line matching {pattern!r} in:\n' + '\n'.join(self.lines))
                self._changed.wait(remaining)


class LogLines(Lines, logging.Handler):
    """The in-process agent's log records, as lines."""

    def __init__(self) -> None:
        Lines.__init__(self)
        logging.Handler.__init__(self, logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        self.add(record.getMessage())


class AgentProcess(Lines):
    """``python -m iblnet_sync.rig CONFIG ARGS`` with its output (stdout and stderr) read line by line."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None):
        super().__init__()
        self.process = subprocess.Popen([*AGENT, str(config), *args], env=env or agent_env(),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.add(line.rstrip())

    @functools.cached_property
    def uri(self) -> str:
        return self.wait_for(r"listening on (udp://[^\s;]+)").group(1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(DEADLINE)
        self._reader.join(DEADLINE)
        assert self.process.stdout is not None
        self.process.stdout.close()


def close_iblutil_main(main_rig) -> None:
    """Close iblutil's Services and let its transports finish closing before the loop stops."""
    async def close() -> None:
        main_rig.services.close()
        await asyncio.sleep(0)  # one loop turn: the transports' connection_lost runs

    main_rig.loops.run(close())
    main_rig.loops.close()


@pytest.fixture
def log_lines():
    lines = LogLines()
    logger = logging.getLogger('iblnet_sync.rig')
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(level)


@pytest.fixture
def agents(no_leaked_threads, log_lines):
    """Make in-process agents from a config mapping (listening on loopback, port 0); all closed after the test."""
    made = []

    def make(on: dict, **keys) -> RigAgent:
        content = {'name': 'cameras', 'listen': 'udp://127.0.0.1:0', 'on': on, **keys}
        agent = RigAgent(parse_config(content))
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


@pytest.fixture
def agent_processes():
    """Start agents as programs from a config mapping; all killed if still running, and reaped, after the test."""
    made = []

    def make(config: dict, tmp_path: Path, *args: str) -> AgentProcess:
        file = tmp_path / 'rig.yaml'
        file.write_text(yaml.safe_dump(config))
        made.append(AgentProcess(file, *args))
        return made[-1]

    yield make
    for process in made:
        process.close()


@pytest.fixture
def hooks_module(tmp_path):
    """A module next to the config file, for ``call:`` actions; forgotten after the test."""
    name = f'rig_hooks_{os.getpid()}_{threading.get_ident()}'
    (tmp_path / f'{name}.py').write_text(
        'calls = []\n'
        'def cleanup(data):\n'
        '    calls.append(data)\n'
        '    return {"cleaned": len(calls)}\n')
    path = list(sys.path)
    yield name
    sys.path[:] = path
    sys.modules.pop(name, None)


def lifecycle_actions(tmp_path: Path) -> dict:
    """Quick commands at EXPINIT and EXPEND that leave files named after the reference; a recorder from
    EXPSTART to EXPEND."""
    return {
        'EXPINIT': {'run': touch(f'{tmp_path}/{{exp_ref}}.init')},
        'EXPSTART': {'run': recorder(f'{tmp_path}/{{exp_ref}}.stopped'), 'until': 'EXPEND'},
        'EXPEND': {'run': subprocess.list2cmdline(touch(f'{tmp_path}/{{subject}}-{{date}}-{{sequence}}.end'))},
    }


# --- whole lifecycles ---
def test_lifecycle_driven_by_our_services(tmp_path, no_leaked_threads, log_lines, hooks_module):
    on = {**lifecycle_actions(tmp_path), 'EXPCLEANUP': {'call': f'{hooks_module}:cleanup'}}
    file = tmp_path / 'rig.yaml'
    file.write_text(yaml.safe_dump({'name': 'cameras', 'listen': 'udp://127.0.0.1:0', 'on': on}))
    agent = RigAgent(load_config(file))  # the hooks module sits next to the file
    try:
        with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
            assert services.info('CONNECTED', {'subject': 'mouse'})['cameras'][1]['name'] == 'cameras'
            assert services.init({'exp_ref': REF}) == {'cameras': [10, None]}
            assert (tmp_path / f'{REF}.init').exists()
            assert services.start(REF) == {'cameras': [REF, None]}
            pid = int(log_lines.wait_for(r'recording (\d+)').group(1))
            assert is_running(pid)
            assert services.stop() == {'cameras': [None]}
            assert (tmp_path / f'{REF}.stopped').exists(), 'the recorder was stopped with Ctrl-C'
            assert not is_running(pid)
            log_lines.wait_for(r'on\.EXPSTART: stopped .* after')
            assert (tmp_path / 'mouse-2026-11-24-3.end').exists()
            assert services.cleanup() == {'cameras': [{'cleaned': 1}]}
            assert sys.modules[hooks_module].calls == [[[]]]  # EXPCLEANUP's data: [8, []]
    finally:
        agent.close()


def test_lifecycle_driven_by_iblutil_services(tmp_path, agents, log_lines):
    from tests.peers import IblutilMain
    agent = agents(lifecycle_actions(tmp_path), main_sync=True, exp_ref=REF)
    main_rig = IblutilMain({'cameras': agent.server.uri}, timeout=DEADLINE)
    try:
        assert main_rig.call('info', ExpStatus.CONNECTED, {'subject': 'mouse'})['cameras'][1]['exp_ref'] == REF
        assert main_rig.call('init', {'exp_ref': REF}) == {'cameras': [10, None]}
        assert (tmp_path / f'{REF}.init').exists()
        assert main_rig.call('start', REF) == {'cameras': [REF, None]}
        pid = int(log_lines.wait_for(r'recording (\d+)').group(1))
        assert main_rig.call('stop', immediately=True) == {'cameras': [None]}  # EXPINTERRUPT stops it too
        assert (tmp_path / f'{REF}.stopped').exists()
        assert not is_running(pid)
        assert not (tmp_path / 'mouse-2026-11-24-3.end').exists(), 'EXPEND actions do not run at EXPINTERRUPT'
        assert main_rig.call('status', ExpStatus.STOPPED) == {'cameras': [int(ExpStatus.STOPPED)]}
        assert main_rig.services['cameras'].is_connected
    finally:
        close_iblutil_main(main_rig)


def test_placeholders_take_the_keys_the_main_rig_sent(tmp_path, agents):
    agent = agents({'EXPSTART': {'run': touch(f'{tmp_path}/{{event}}-{{rate}}-{{subject}}')}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        services.start(REF, {'rate': 60})
    assert (tmp_path / 'EXPSTART-60-mouse').exists()


def test_actions_listed_for_one_event_run_in_order(tmp_path, agents):
    agent = agents({'EXPINIT': [{'run': touch(f'{tmp_path}/first')},
                                {'run': python('import pathlib, sys; assert pathlib.Path(sys.argv[1]).exists()')
                                 + [f'{tmp_path}/first']}]})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        assert services.init({'exp_ref': REF}) == {'cameras': [10, None]}


# --- failures reach the main rig ---
def test_failing_command_reaches_the_main_rig_with_its_stderr(agents):
    failing = python("import sys; sys.stderr.write('camera 2 not found' + chr(10)); sys.exit(3)")
    agent = agents({'EXPINIT': {'run': failing}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        with pytest.raises(BroadcastError, match='camera 2 not found') as caught:
            services.init({'exp_ref': REF})
        failure = caught.value.failures['cameras']
        assert failure.stage == 'error report'
        assert 'CommandFailed' in str(failure) and 'exit status 3' in str(failure)
        assert services.status('CONNECTED') == {'cameras': [0]}, 'the agent keeps serving'


def test_command_that_cannot_start_is_an_error_report(agents):
    agent = agents({'EXPSTART': {'run': ['no-such-program-iblnet', '{exp_ref}'], 'until': 'EXPEND'}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        with pytest.raises(BroadcastError, match='no-such-program-iblnet.* cannot start') as caught:
            services.start(REF)
        assert caught.value.failures['cameras'].stage == 'error report'
        assert services.stop() == {'cameras': [None]}


def test_recorder_that_died_is_reported_at_its_until_event(tmp_path, agents, log_lines):
    crashing = python("import sys; sys.stderr.write('disk full' + chr(10)); sys.exit(1)")
    agent = agents({'EXPSTART': {'run': crashing, 'until': 'EXPEND'}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        services.start(REF)
        log_lines.wait_for('disk full')
        log_lines.wait_for('on.EXPSTART: .* ended by itself before EXPEND, exit status 1')
        with pytest.raises(BroadcastError, match='(?s)had already ended.*disk full'):
            services.stop()


def test_quick_command_over_its_timeout_is_stopped_and_reported(tmp_path, agents, log_lines):
    # (2 s: the recorder, a new Python, has started and says so long before; it would record for 60 s)
    agent = agents({'EXPINIT': {'run': recorder(f'{tmp_path}/stopped'), 'timeout': 2}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services, \
            pytest.raises(BroadcastError, match='did not end within its timeout of 2 s'):
        services.init({'exp_ref': REF})
    pid = int(log_lines.wait_for(r'recording (\d+)').group(1))
    assert not is_running(pid) and (tmp_path / 'stopped').exists()


def test_missing_placeholder_is_reported():
    with pytest.raises(CommandFailed, match=r"'exp_ref' has no value.*known: event"):
        render(['copy', '{exp_ref}'], placeholder_values('EXPEND', [None], None))


def test_placeholder_values_come_from_the_message_then_the_rig():
    assert placeholder_values('EXPINIT', [{'exp_ref': REF}], None)['subject'] == 'mouse'
    assert placeholder_values('EXPEND', [None], {'subject': 'rat', 'date': datetime.date(2026, 1, 2),
                                                  'sequence': 1})['exp_ref'] == '2026-01-02_1_rat'
    assert render('copy {sequence} {event}', placeholder_values('EXPSTART', [REF, None], None)) == 'copy 3 EXPSTART'


# --- stopping ---
@POSIX_ONLY
def test_recorder_that_ignores_ctrl_c_is_terminated_after_its_grace(tmp_path, agents, log_lines):
    agent = agents({'EXPSTART': {'run': recorder(f'{tmp_path}/stopped', ignore_sigint=True), 'until': 'EXPEND',
                                 'grace': 0.3}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        services.start(REF)
        pid = int(log_lines.wait_for(r'recording (\d+)').group(1))
        assert services.stop() == {'cameras': [None]}
    log_lines.wait_for('still running after 0.3 s: sending SIGTERM')
    assert not is_running(pid) and not (tmp_path / 'stopped').exists()


@NEEDS_PIDFD
@pytest.mark.parametrize('stop_signal, exit_code', [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_stopping_the_agent_stops_its_children_and_theirs(tmp_path, agent_processes, stop_signal, exit_code):
    config = {'name': 'from-file', 'listen': 'udp://127.0.0.1:0',
              'on': {'EXPSTART': {'run': recorder(f'{tmp_path}/stopped', grandchild=True), 'until': 'EXPEND'}}}
    agent = agent_processes(config, tmp_path, '--name', 'cameras', '--main-sync', '--log-file', str(tmp_path / 'log'))
    with Services({'cameras': agent.uri}, timeout=DEADLINE) as services:
        info = services.info('CONNECTED', {'subject': 'mouse'})['cameras'][1]
        assert (info['name'], info['main_sync']) == ('cameras', True), 'the flags replace the file'
        services.start(REF)
        child, grandchild = map(int, agent.wait_for(r'recording (\d+) (\d+)').groups())
        agent.process.send_signal(stop_signal)
        assert agent.process.wait(DEADLINE) == exit_code  # Ctrl-C: 130, as every program; SIGTERM: a service's stop
    agent.wait_for(f'{stop_signal.name} received: stopping cameras')
    assert (tmp_path / 'stopped').exists(), 'the recorder was stopped with Ctrl-C'
    assert wait_gone(child) and wait_gone(grandchild), 'no orphan left'
    log = (tmp_path / 'log').read_text()
    assert 'EXPSTART received' in log and 'cameras stopped' in log


def test_closing_the_agent_stops_a_running_quick_command(tmp_path, agents, log_lines):
    agent = agents({'EXPINIT': {'run': recorder(f'{tmp_path}/stopped')}})
    failures: list[BroadcastError] = []

    def init() -> None:
        try:
            services.init({'exp_ref': REF})
        except BroadcastError as ex:
            failures.append(ex)

    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        answer = threading.Thread(target=init)
        answer.start()
        pid = int(log_lines.wait_for(r'recording (\d+)').group(1))
        agent.close()
        assert not is_running(pid) and (tmp_path / 'stopped').exists()
        answer.join(DEADLINE)
    assert failures and 'was stopped by the agent' in str(failures[0])


def test_start_to_child_latency_is_logged(tmp_path, agents, log_lines):
    agent = agents({'EXPSTART': {'run': recorder(f'{tmp_path}/stopped'), 'until': 'EXPEND'}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        services.start(REF)
        latency = float(log_lines.wait_for(r'on\.EXPSTART: started .* \(pid \d+, ([\d.]+) ms after').group(1))
        log_lines.wait_for('recording')
        services.stop()
    assert 0 < latency < 1000


# --- configuration ---
BAD_CONFIGS = [
    ({'name': 'cameras', 'colour': 'red'}, 'colour'),
    ({'listen': 'http://127.0.0.1:0'}, 'listen'),
    ({'main_sync': 'maybe'}, 'main_sync'),
    ({'exp_ref': 'yesterday'}, 'exp_ref'),
    ({'on': {'EXPSTOP': {'run': 'true'}}}, 'on.EXPSTOP'),
    ({'on': {'EXPSTART': {'run': 'x', 'until': 'EXPSTOP'}}}, 'on.EXPSTART.until'),
    ({'on': {'EXPSTART': {'run': 'x', 'call': 'a:b'}}}, 'on.EXPSTART'),
    ({'on': {'EXPSTART': {'run': 'x', 'until': 'EXPEND', 'timeout': 3}}}, 'on.EXPSTART.timeout'),
    ({'on': {'EXPSTART': {'run': 'x', 'grace': -1}}}, 'on.EXPSTART.grace'),
    ({'on': {'EXPEND': [{'run': 'x'}, {'run': 'copy {}'}]}}, 'on.EXPEND[1].run'),
    ({'on': {'EXPINIT': {'call': 'no_such_module_iblnet:prepare'}}}, 'on.EXPINIT.call'),
]


@pytest.mark.parametrize('content, key', BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_key_and_exit_2(tmp_path, capsys, content, key):
    file = tmp_path / 'rig.yaml'
    file.write_text(yaml.safe_dump({'listen': 'udp://127.0.0.1:0', **content}))
    assert main([str(file)]) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and f': {key}: ' in error, error


def test_bad_config_exits_2_as_a_program(tmp_path):
    file = tmp_path / 'rig.yaml'
    file.write_text('name: cameras\non:\n  EXPSTART: {run: x, until: EXPSTOP}\n')
    done = subprocess.run([*AGENT, str(file)], env=agent_env(), capture_output=True, text=True, timeout=DEADLINE,
                          check=False)
    assert done.returncode == 2
    assert done.stderr == f"iblnet-rig: error: {file}: on.EXPSTART.until: must be an event name " \
        f"({', '.join(EVENTS)}), not 'EXPSTOP'\n"


def test_flags_replace_the_file(tmp_path):
    file = tmp_path / 'rig.yaml'
    file.write_text('name: cameras\nlisten: udp://0.0.0.0:11001\n')
    config = load_config(file, {'listen': 'udp://127.0.0.1:0', 'name': None, 'main_sync': True})
    assert (config.name, config.listen, config.main_sync) == ('cameras', 'udp://127.0.0.1:0', True)
    with pytest.raises(RigConfigError, match='listen'):
        load_config(file, {'listen': 'nowhere:x'})


def test_example_config_is_a_valid_config(capsys):
    assert main(['--example-config']) == 0
    config = parse_config(yaml.safe_load(capsys.readouterr().out))
    assert config.on['EXPSTART'][0].until == 'EXPEND'
    assert config.main_sync and config.on['EXPEND'][0].run[:2] == ('python', '-c')
    assert EXAMPLE_CONFIG.count('\n# ') > 5, 'commented'


def test_the_readmes_task_runs_against_the_example_config_as_it_is(tmp_path, no_leaked_threads, log_lines):
    """A first run: the example rig is the main sync, so a task that is not gets its reference; every
    action runs (python stands for the interpreter running the tests: a fresh machine may have no `python`)."""
    from tests.legacy_task import Task
    example = yaml.safe_load(EXAMPLE_CONFIG)
    example['listen'] = 'udp://127.0.0.1:0'
    for action in example[True].values():  # (YAML 1.1 reads the key `on` as true)
        action['run'] = [sys.executable if word == 'python' else word for word in action['run']]
    file = tmp_path / 'cameras.yaml'
    file.write_text(yaml.safe_dump(example))
    agent = RigAgent(load_config(file))
    try:
        task = Task(remote_rigs={'cameras': agent.server.uri})
        assert task.main_sync_rig == 'cameras' and task.exp_ref['sequence'] == 1
        assert task.run() == 1
        log_lines.wait_for(r'on\.EXPSTART: started .*recording.* \(pid')
        log_lines.wait_for(r'on\.EXPSTART: stopped .*recording')
        log_lines.wait_for(r'on\.EXPEND: .*copying.* mouse \d{4}-\d\d-\d\d 1 ended, exit status 0')
    finally:
        agent.close()


def test_port_taken_is_one_error_line_and_exit_1(tmp_path, agent_processes):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(('127.0.0.1', 0))
        agent = agent_processes({'name': 'cameras', 'listen': f'udp://127.0.0.1:{taken.getsockname()[1]}'}, tmp_path)
        assert agent.process.wait(DEADLINE) == 1
    agent.wait_for('ERROR .*Cannot listen on udp://127.0.0.1')


# --- what a rig trusts (issue 15): values from the network are data, never code, options or paths ---
class RecordLines(Lines, logging.Handler):
    """Every record of the library's loggers, as ``LEVEL message`` lines, at whatever level the loggers pass."""

    def __init__(self) -> None:
        Lines.__init__(self)
        logging.Handler.__init__(self, logging.NOTSET)

    def emit(self, record: logging.LogRecord) -> None:
        self.add(f'{record.levelname} {record.getMessage()}')


@pytest.fixture
def library_logs(agents):
    """The records of every iblnet_sync logger from INFO (the agent's defaults without -v); the agent's from DEBUG
    if the test sets ``iblnet_sync.rig`` to DEBUG. Listed after `agents`, so that its levels are restored first."""
    lines = RecordLines()
    library, agent = logging.getLogger('iblnet_sync'), logging.getLogger('iblnet_sync.rig')
    levels = library.level, agent.level
    library.addHandler(lines)
    library.setLevel(logging.INFO)
    yield lines
    library.removeHandler(lines)
    library.setLevel(levels[0])
    agent.setLevel(levels[1])


SHELL_SCRIPTS = [  # (command with a placeholder in a script's text, what the message teaches)
    (['sh', '-c', 'cp {exp_ref} /data'], r"""\[sh, -c, cp "\$1" /data, sh, '\{exp_ref\}'\]"""),
    (['/bin/bash', '-ec', 'mkdir -p /data/{subject}'], r"""bash, '\{subject\}'\]"""),
    (['env', 'LANG=C', 'zsh', '-c', 'echo {event}'], r"""zsh, '\{event\}'\]"""),
    ('sh -c "cp {exp_ref} /data"', r"""sh, '\{exp_ref\}'\]"""),
    (['cmd', '/c', 'copy {exp_ref} D:/data'], r'\.bat file'),
    (['cmd.exe', '/S', '/C', 'copy', '{exp_ref}', 'D:/data'], r'\.bat file'),
    (['powershell', '-NoProfile', '-Command', 'Copy-Item {exp_ref} D:/data'], r'-File'),
    (['pwsh', '-c', 'Copy-Item {exp_ref} D:/data'], r'-File'),
    (['powershell.exe', 'Copy-Item {exp_ref} D:/data'], r'-File'),
    (['python', '-c', "print('preparing {exp_ref}')"], r'sys\.argv'),
    (['python3', '-Ic', "print('{exp_ref}')"], r'sys\.argv'),
    (['perl', '-e', 'print "{exp_ref}"'], r'perl'),
    (['node', '-e', 'console.log("{exp_ref}")'], r'node'),
]


@pytest.mark.parametrize('command, safe_form', SHELL_SCRIPTS)
def test_placeholder_in_a_script_text_is_refused_at_start_up(tmp_path, capsys, command, safe_form):
    content = {'name': 'cameras', 'listen': 'udp://127.0.0.1:0', 'on': {'EXPEND': {'run': command}}}
    with pytest.raises(RigConfigError, match='on.EXPEND.run: .*script') as caught:
        parse_config(content)
    assert re.search(safe_form, str(caught.value)), str(caught.value)
    file = tmp_path / 'rig.yaml'
    file.write_text(yaml.safe_dump(content))
    assert main([str(file)]) == 2
    error = capsys.readouterr().err
    assert error.count('\n') == 1 and 'on.EXPEND.run' in error


SAFE_COMMANDS = [
    ['sh', '-c', 'cp "$1" /data', 'sh', '{exp_ref}'],
    ['bash', '-o', 'pipefail', '-c', 'cp "$1" "$2"', 'bash', '{exp_ref}', '/data/{subject}'],
    ['bash', 'copy.sh', '-c', '{exp_ref}'],  # -c here is the script's own option
    ['python', '-c', 'import sys; print(sys.argv[1])', '{exp_ref}'],
    ['python', '-W', 'ignore::DeprecationWarning', '-m', 'copy_videos', '{exp_ref}'],
    ['cmd', '/c', 'C:/rigs/copy.bat'],
    ['C:/rigs/copy.bat', '{exp_ref}'],
    ['powershell', '-NoProfile', '-File', 'C:/rigs/copy.ps1', '{exp_ref}'],
    ['pwsh', '-CommandWithArgs', 'Copy-Item $args[0] D:/data', '{exp_ref}'],
    ['bonsai', 'C:/rigs/record.bonsai', '--start', '-p:Session={exp_ref}'],
    'python copy_videos.py {subject} {date} {sequence}',
]


@pytest.mark.parametrize('command', SAFE_COMMANDS)
def test_values_as_arguments_are_accepted(command):
    config = parse_config({'on': {'EXPEND': {'run': command}}})
    assert config.on['EXPEND'][0].run


def test_string_command_on_windows_is_checked_like_a_list(monkeypatch):
    from iblnet_sync import rig_config
    monkeypatch.setattr(rig_config, '_WINDOWS', True)
    line = 'C:/rigs/copy_videos.exe {subject} "D:/data/{exp_ref}"'
    assert parse_config({'on': {'EXPEND': {'run': line}}}).on['EXPEND'][0].run == line, 'the system splits it'
    with pytest.raises(RigConfigError, match=r'\.bat file'):
        parse_config({'on': {'EXPEND': {'run': 'cmd /c copy {exp_ref} D:\\data'}}})
    with pytest.raises(RigConfigError, match='-File'):
        parse_config({'on': {'EXPEND': {'run': '"C:\\Program Files\\PowerShell\\7\\pwsh.exe" -c "ls {exp_ref}"'}}})


def started_files(folder: Path) -> list[str]:
    """The files under `folder` that commands made (not those of the test's HOME, ``folder/home``)."""
    return sorted(path.name for path in folder.rglob('*') if path.is_file() and
                  path.relative_to(folder).parts[0] != 'home')


@POSIX_ONLY
def test_shell_code_in_a_reference_is_refused_and_nothing_runs(tmp_path, agents):
    ran = tmp_path / 'ran'
    agent = agents({'EXPSTART': {'run': ['sh', '-c', 'touch "$1"', 'sh', f'{tmp_path}/{{exp_ref}}']}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        with pytest.raises(BroadcastError, match=r'ValueRefused: exp_ref: the subject') as caught:
            services.start(f'2026-11-24_1_m; touch {ran} #')
        assert 'nothing was run' in str(caught.value)
        assert services.status('CONNECTED') == {'cameras': [int(ExpStatus.CONNECTED)]}, 'the reference is not taken'
    assert started_files(tmp_path) == []


def test_value_starting_with_a_dash_never_becomes_an_option(tmp_path, agents):
    writer = python('import argparse, pathlib\n'
                    'parser = argparse.ArgumentParser()\n'
                    f"parser.add_argument('--output', default='{tmp_path}/default')\n"
                    "parser.add_argument('camera', nargs='?')\n"
                    'pathlib.Path(parser.parse_args().output).touch()') + ['{camera}']
    agent = agents({'EXPSTART': {'run': writer}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        for value in (f'--output={tmp_path}/elsewhere', '-5'):
            with pytest.raises(BroadcastError, match=r'ValueRefused: camera: may not start with -'):
                services.start(REF, {'camera': value})
    assert started_files(tmp_path) == []


@pytest.mark.parametrize('reference, rule', [
    ('2026-11-24_1_../escaped', 'the subject'),
    ('2026-11-24_1_..', 'the subject'),
    ('2026-11-24_1_.hidden', 'the subject'),
    ('2026-11-24_1_-rf', 'the subject'),
    ('2026-11-24_1_' + 'm' * 65, 'the subject'),
    ('2026-11-24_1_', 'the subject'),
    ('2026-11-24_-1_mouse', 'the sequence'),
    ('2026-11-24_0_mouse', 'the sequence'),
    ('2026-11-24_+1_mouse', 'the sequence'),
    ('2026-13-01_1_mouse', 'the date'),
    ('26-11-24_1_mouse', 'the date'),
    ('mouse', 'DATE_SEQUENCE_SUBJECT'),
])
def test_reference_is_parsed_strictly_before_anything_runs(tmp_path, agents, reference, rule):
    (tmp_path / 'data').mkdir()
    agent = agents({'EXPSTART': {'run': touch(f'{tmp_path}/data/{{exp_ref}}.start')},
                    'EXPINIT': {'run': touch(f'{tmp_path}/data/{{subject}}.init')}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        with pytest.raises(BroadcastError, match=f'ValueRefused: exp_ref: .*{re.escape(rule)}'):
            services.start(reference)
        with pytest.raises(BroadcastError, match=f'ValueRefused: exp_ref: .*{re.escape(rule)}'):
            services.init({'exp_ref': reference})
    assert started_files(tmp_path) == []


def test_rig_reference_from_a_subject_is_checked_too(tmp_path, agents):
    agent = agents({'EXPINIT': {'run': touch(f'{tmp_path}/{{exp_ref}}')}}, main_sync=True)
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        with pytest.raises(BroadcastError, match='ValueRefused: subject: '):
            services.info('CONNECTED', {'subject': '../escaped'})
        assert services.info('CONNECTED', {'subject': 'mouse'})['cameras'][1]['exp_ref'].endswith('_1_mouse')
        services.init()
    assert started_files(tmp_path) == [f'{datetime.date.today()}_1_mouse']


def test_values_of_the_main_dictionary_are_scalars_of_safe_characters(tmp_path, agents):
    agent = agents({'EXPSTART': {'run': touch(f'{tmp_path}/{{rate}}')}})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        for value, rule in ([60, 1], 'a text or a number'), ('a b', 'spaces'), ('x;y', 'shells'), \
                ('C:x', 'path'), ('a/b', 'path'), ('NUL', 'device'), ('é' * 65, 'must match'):
            with pytest.raises(BroadcastError, match=f'ValueRefused: rate: .*{rule}'):
                services.start(REF, {'rate': value})
        assert services.start(REF, {'rate': 60, 'unused': [1, 2], 'notes': 'free text: not in a command'})
    assert started_files(tmp_path) == ['60']


def test_subject_and_value_patterns_are_configurable(tmp_path, agents):
    agent = agents({'EXPSTART': {'run': touch(f'{tmp_path}/{{subject}}-{{rate}}')}},
                   subject_pattern=r'[A-Z]{2}\+\d{3}', value_pattern=r'\d+')
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        with pytest.raises(BroadcastError, match=r'ValueRefused: exp_ref: the subject must match .*\[A-Z\]'):
            services.start(REF, {'rate': 60})
        with pytest.raises(BroadcastError, match=r'ValueRefused: rate: must match \\d\+'):
            services.start('2026-11-24_1_KS+001', {'rate': 'fast'})
        services.start('2026-11-24_1_KS+001', {'rate': 60})
    assert started_files(tmp_path) == ['KS+001-60']
    with pytest.raises(RigConfigError, match='subject_pattern: not a regular expression'):
        parse_config({'subject_pattern': '[unclosed'})
    with pytest.raises(RigConfigError, match='exp_ref: '):
        parse_config({'exp_ref': '2026-11-24_1_../x'})


# --- what a rig trusts: secrets and logs ---
TOKEN = 'c2VjcmV0LXRva2VuLTQyNDI0Mg'


def test_alyx_token_is_never_logged_above_debug_and_masked_at_debug(agents, library_logs):
    from types import SimpleNamespace
    agent = agents({'ALYX': {'run': python('pass') + ['{event}']}})
    logging.getLogger('iblnet_sync.rig').setLevel(logging.DEBUG)  # as with -v
    alyx = SimpleNamespace(base_url='https://alyx.example.org', is_logged_in=True, user='technician', _token=TOKEN)
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        services.alyx(alyx)
        library_logs.wait_for('ALYX handled')
    lines = library_logs.lines
    assert not [line for line in lines if TOKEN in line]
    assert not [line for line in lines if not line.startswith('DEBUG') and ('alyx.example' in line or 'technician'
                                                                            in line)]
    assert [line for line in lines if line.startswith('DEBUG') and '"technician": "***"' in line]


def test_65_kb_values_are_cut_in_logs(tmp_path, agents, library_logs):
    agent = agents({'EXPINIT': {'run': touch(f'{tmp_path}/{{camera}}')}})
    failures = []
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        for send, args in ((services.start, ('m' * 60_000,)),
                           (services.start, ('2026-11-24_1_' + 'm' * 60_000,)),
                           (services.init, ({'camera': 'c' * 60_000},))):
            try:
                send(*args)
            except BroadcastError as ex:
                failures.append(str(ex))
    assert library_logs.lines and max(map(len, library_logs.lines)) < 1000
    assert [line for line in library_logs.lines if 'more characters]' in line], 'cut with a marker'
    assert len(failures) == 3 and max(map(len, failures)) < 1000
    assert 'ValueRefused: exp_ref: ' in failures[0] and 'ValueRefused: exp_ref: ' in failures[1]
    assert 'ValueRefused: camera: ' in failures[2]
    assert started_files(tmp_path) == []


FORGERIES = ['\r2026-11-24 00:00:00.000 ERROR   forged', '\x1b[2K\x1b[1Gforged', 'a\u2028forged', 'a\u2029b',
             'a\nb', 'a\x85b', 'a\x00b']


def test_control_characters_never_reach_a_log_line(agents, library_logs):
    noisy = python("import sys; sys.stderr.write(chr(27) + '[2K' + chr(27) + '[1Gforged by a child' + chr(10))")
    agent = agents({'EXPSTART': {'run': python('pass') + ['{camera}', '{exp_ref}'], 'until': 'EXPEND'},
                    'EXPINIT': {'run': noisy}})
    failures = []
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        for value in FORGERIES:
            for args in ((REF, {'camera': value}), (f'2026-11-24_1_m{value}', {'camera': 'one'})):
                try:
                    services.start(*args)
                except BroadcastError as ex:
                    failures.append(str(ex))
        services.init()
    library_logs.wait_for('forged by a child')
    forged = [line for line in library_logs.lines if any(c in line for c in '\r\n\x1b\u2028\u2029\x85\x00')]
    assert not forged and len(library_logs.lines) >= 2 * len(FORGERIES)
    assert len(failures) == 2 * len(FORGERIES)
    assert all(re.search('ValueRefused: (camera|exp_ref): ', failure) for failure in failures)


def test_a_flood_of_events_is_logged_with_a_count_of_what_was_not(agents, library_logs):
    from iblnet_sync import rig
    agent = agents({})
    now = [0.0]
    agent.log_limiter.clock = lambda: now[0]
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        for _ in range(rig.LOG_BURST + 20):
            services.info('CONNECTED')
        assert len([line for line in library_logs.lines if 'EXPINFO received' in line]) == rig.LOG_BURST
        now[0] += rig.LOG_PERIOD
        services.info('CONNECTED')
    library_logs.wait_for(r'EXPINFO received .*\(20 more for EXPINFO were not logged before this one\)')


def test_log_file_rotates_by_size(tmp_path, monkeypatch, capsys):
    from iblnet_sync import rig
    with pytest.raises(SystemExit):
        main(['--help'])
    assert 'rotates at 10 MB, keeping 5' in ' '.join(capsys.readouterr().out.split())
    monkeypatch.setattr(rig, 'LOG_FILE_BYTES', 2000)
    (tmp_path / 'logs').mkdir()
    path = tmp_path / 'logs' / 'rig.log'
    with rig._console_logging(rig._log_handlers(str(path)), verbose=False):
        for index in range(300):
            logging.getLogger('iblnet_sync.rig').info('line %d of a flood', index)
    files = sorted(path.parent.iterdir())
    assert [file.name for file in files] == ['rig.log'] + [f'rig.log.{n}' for n in range(1, 6)]
    assert all(file.stat().st_size <= 2000 for file in files)
    assert 'line 299 of a flood' in path.read_text()


def test_a_refused_event_stops_nothing_and_runs_nothing(tmp_path, agents, log_lines):
    agent = agents({'EXPSTART': {'run': recorder(f'{tmp_path}/stopped'), 'until': 'EXPEND'},
                    'EXPEND': [{'run': touch(f'{tmp_path}/first')}, {'run': touch(f'{tmp_path}/{{camera}}')}]})
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        services.start(REF)
        pid = int(log_lines.wait_for(r'recording (\d+)').group(1))
        with pytest.raises(BroadcastError, match=r'ValueRefused: camera: .*nothing was run'):
            services.stop({'camera': '../x'})
        with pytest.raises(BroadcastError, match=r"placeholder 'camera' has no value"):
            services.stop()
        assert is_running(pid) and not (tmp_path / 'first').exists(), 'the first action did not run either'
        assert services.status('RUNNING') == {'cameras': [int(ExpStatus.RUNNING)]}
        assert services.stop({'camera': 'left'}) == {'cameras': [None]}
    assert started_files(tmp_path) == ['first', 'left', 'stopped']


def test_events_without_commands_take_any_dictionary(agents):
    agent = agents({'EXPSTART': {'run': python('pass') + ['{rate}']}})
    anything = {'subject': 'mouse', 'notes': 'free text; with $pecial characters', 'nested': {'a': [1, None]},
                'offset': -5, 'path': '../x'}
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        assert services.info('CONNECTED', anything)['cameras'][1]['name'] == 'cameras'
        assert services.init(anything) == {'cameras': [int(ExpStatus.INITIALIZED), None]}
        assert services.start(REF, {**anything, 'rate': 60}) == {'cameras': [REF, None]}
        assert services.stop(anything) == {'cameras': [None]}


def test_placeholder_values_check_only_what_the_commands_use():
    data = [REF, {'rate': 60, 'notes': 'free text', 'offset': -5, 'nested': {'a': 1}}]
    assert placeholder_values('EXPSTART', data, None, needed={'rate'}) == {
        'event': 'EXPSTART', 'exp_ref': REF, 'subject': 'mouse', 'date': '2026-11-24', 'sequence': '3', 'rate': '60'}
    with pytest.raises(ValueRefused, match='offset: may not start with -'):
        placeholder_values('EXPSTART', data, None, needed={'offset'})
    with pytest.raises(ValueRefused, match="exp_ref: the subject may not start"):  # a given reference: always
        placeholder_values('EXPSTART', ['2026-11-24_1_.x', {}], None, needed=set())
    current = {'subject': '../x', 'date': datetime.date(2026, 1, 2), 'sequence': 1}
    assert placeholder_values('EXPEND', [None], current, needed={'event'}) == {'event': 'EXPEND'}
    with pytest.raises(ValueRefused, match=r"exp_ref \(the rig's current reference\): the subject"):
        placeholder_values('EXPEND', [None], current, needed={'subject'})


def test_alyx_credentials_are_never_placeholder_values():
    data = ['https://alyx.example.org', {'technician': TOKEN}]
    assert placeholder_values('ALYX', data, None) == {'event': 'ALYX'}
    assert mask_alyx(data) == ['https://alyx.example.org', {'technician': '***'}]
    assert mask_alyx([None, {}]) == [None, {}]


@pytest.mark.parametrize('allow, key, message', [
    ([], 'allow', 'remove the key'),
    (['rig-pc.lab'], 'allow[0]', 'host names are not accepted'),
    (['192.168.1.5/24'], 'allow[0]', 'the network of 192.168.1.5/24 is 192.168.1.0/24'),
    ([8080], 'allow[0]', 'a int'),
    ('10.0.0.300', 'allow', 'must be an IP address'),
])
def test_allow_is_checked_at_start_up(allow, key, message):
    with pytest.raises(RigConfigError, match=f'{re.escape(key)}: .*{re.escape(message)}'):
        parse_config({'allow': allow})


def test_allow_lists_networks_and_only_they_drive_the_rig(agents, log_lines):
    from ipaddress import ip_network
    config = parse_config({'allow': ['192.168.1.10', '10.0.0.0/24', 'localhost', 'fe80::/64', '127.0.0.1']})
    assert config.allow == tuple(map(ip_network, ('192.168.1.10/32', '10.0.0.0/24', '127.0.0.0/8', '::1/128',
                                                  'fe80::/64', '127.0.0.1/32')))
    assert parse_config({}).allow is None
    agents({})
    log_lines.wait_for('no allow: in the configuration: any host that reaches udp://127.0.0.1:.* may drive this rig')
    agent = agents({'EXPINIT': {'run': python('pass')}}, allow=['10.0.0.0/24'])
    log_lines.wait_for(r'driven only from 10\.0\.0\.0/24 \(allow:\)')
    with Services({'cameras': agent.server.uri}, timeout=0.5) as services, \
            pytest.raises(BroadcastError, match='no echo'):
        services.init()  # from 127.0.0.1: ignored
    agent = agents({'EXPINIT': {'run': python('pass')}}, allow=['localhost'])
    with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
        assert services.init() == {'cameras': [int(ExpStatus.INITIALIZED), None]}


# --- start-up, as a person meets it (issue 18) ---
@pytest.fixture
def saved_sys_path(monkeypatch):
    """sys.path as it was after the test (the agent adds the folder of a file with call: actions)."""
    monkeypatch.setattr(sys, 'path', list(sys.path))


def write_config(folder: Path, content: dict | str, name: str = 'cameras.yaml') -> Path:
    file = folder / name
    file.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return file


def error_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == '' and 'Traceback' not in captured.err
    return captured.err.splitlines()


def test_every_missing_program_and_call_is_named_and_the_agent_refuses_to_start(tmp_path, capsys, saved_sys_path):
    (tmp_path / 'videos').mkdir()
    file = write_config(tmp_path, {'name': 'cameras', 'listen': 'udp://127.0.0.1:0', 'on': {
        'EXPINFO': {'run': [sys.executable, '-c', 'pass']},  # found: not named
        'EXPINIT': [{'run': ['no-such-program-iblnet', '{exp_ref}']},
                    {'call': 'no_such_module_iblnet:prepare'}],
        'EXPSTART': {'run': './no-such-script.sh {exp_ref}', 'until': 'EXPEND'},
        'EXPEND': {'run': ['{program}', 'copy'], 'cwd': 'videos'},  # a program chosen at the event: known then
        'EXPCLEANUP': {'run': ['no-such-cleaner-iblnet'], 'cwd': 'no-such-folder'},
    }})
    assert main([str(file)]) == 2
    path = os.environ.get('PATH', '')
    assert error_lines(capsys) == [
        f"iblnet-rig: error: {file}: on.EXPINIT[0].run: program 'no-such-program-iblnet' not found (PATH={path})",
        f"iblnet-rig: error: {file}: on.EXPINIT[1].call: cannot import no_such_module_iblnet:prepare: "
        f"ModuleNotFoundError: No module named 'no_such_module_iblnet' (looked on sys.path, then in {tmp_path})",
        f"iblnet-rig: error: {file}: on.EXPSTART.run: program './no-such-script.sh' not found "
        f"({tmp_path / 'no-such-script.sh'})",
        f"iblnet-rig: error: {file}: on.EXPCLEANUP.cwd: the folder '{tmp_path / 'no-such-folder'}' where the "
        f"command starts does not exist",
    ]


@POSIX_ONLY
def test_a_program_that_is_not_executable_is_named(tmp_path):
    (tmp_path / 'copy.sh').write_text('#!/bin/sh\n')
    file = write_config(tmp_path, {'on': {'EXPEND': {'run': ['./copy.sh', '{exp_ref}']}}})
    _, problems = check_actions(load_config(file))
    assert [str(problem) for problem in problems] == [
        f"{file}: on.EXPEND.run: program './copy.sh' is not executable ({tmp_path}/copy.sh)"]
    (tmp_path / 'copy.sh').chmod(0o755)
    assert check_actions(load_config(file)) == ({}, [])


def test_missing_program_refused_as_a_program(tmp_path):
    file = write_config(tmp_path, {'name': 'cameras', 'on': {'EXPSTART': {'run': 'bonsai-iblnet-missing x.bonsai'},
                                                             'EXPEND': {'run': 'copy-iblnet-missing'}}})
    done = subprocess.run([*AGENT, str(file)], env=agent_env(), capture_output=True, text=True, timeout=DEADLINE,
                          check=False)
    assert done.returncode == 2 and done.stdout == ''
    assert [line.partition(' (PATH=')[0] for line in done.stderr.splitlines()] == [
        f"iblnet-rig: error: {file}: on.EXPSTART.run: program 'bonsai-iblnet-missing' not found",
        f"iblnet-rig: error: {file}: on.EXPEND.run: program 'copy-iblnet-missing' not found"]


@POSIX_ONLY
def test_the_example_config_starts_as_it_is_where_python_is_on_path(tmp_path, monkeypatch):
    """In the README's virtual environment `python` is on PATH; elsewhere each of the example's actions is named."""
    file = write_config(tmp_path, EXAMPLE_CONFIG)
    bin_folder = Path(sys.executable).parent
    if not shutil.which('python', path=str(bin_folder)):  # not a virtual environment: make its bin folder
        bin_folder = tmp_path / 'bin'
        bin_folder.mkdir()
        (bin_folder / 'python').symlink_to(sys.executable)
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    _, problems = check_actions(load_config(file))
    assert [problem.key for problem in problems] == ['on.EXPINIT.run', 'on.EXPSTART.run', 'on.EXPEND.run']
    path = f'{bin_folder}{os.pathsep}{os.environ["PATH"]}'
    agent = AgentProcess(file, '--listen', 'udp://127.0.0.1:0', env={**agent_env(), 'PATH': path})
    try:
        with Services({'cameras': agent.uri}, timeout=DEADLINE) as services:
            assert services.info('CONNECTED', {'subject': 'mouse'})['cameras'][1]['main_sync'] is True
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(DEADLINE) == 0
    finally:
        agent.close()
    agent.wait_for('cameras stopped')


def cwd_writer(name: str) -> list[str]:
    """A command writing its working directory into the file `name`, relative to that directory."""
    return python('import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text(os.getcwd())') + [name]


def test_commands_start_in_the_files_folder_or_in_their_cwd(tmp_path, no_leaked_threads, log_lines):
    rig_folder, elsewhere = tmp_path / 'rig', tmp_path / 'elsewhere'
    (rig_folder / 'videos').mkdir(parents=True)
    elsewhere.mkdir()
    file = write_config(rig_folder, {'name': 'cameras', 'listen': 'udp://127.0.0.1:0', 'on': {
        'EXPINIT': {'run': cwd_writer('init.txt')},
        'EXPEND': [{'run': cwd_writer('end.txt'), 'cwd': 'videos'},
                   {'run': cwd_writer('absolute.txt'), 'cwd': str(elsewhere)}]}})
    agent = RigAgent(load_config(file))  # the agent's own folder (the test's) is not the file's
    try:
        with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
            services.init({'exp_ref': REF})
            services.start(REF)
            services.stop()
    finally:
        agent.close()
    assert (rig_folder / 'init.txt').read_text() == str(rig_folder)
    assert (rig_folder / 'videos' / 'end.txt').read_text() == str(rig_folder / 'videos')
    assert (elsewhere / 'absolute.txt').read_text() == str(elsewhere)


@POSIX_ONLY
def test_a_relative_program_is_found_in_the_commands_folder(tmp_path, no_leaked_threads, log_lines):
    (tmp_path / 'videos').mkdir()
    script = tmp_path / 'videos' / 'copy.py'
    script.write_text(f'#!{sys.executable}\nimport pathlib, sys\npathlib.Path(sys.argv[1] + ".copied").touch()\n')
    script.chmod(0o755)
    file = write_config(tmp_path, {'name': 'cameras', 'listen': 'udp://127.0.0.1:0',
                                   'on': {'EXPEND': {'run': ['./copy.py', '{exp_ref}'], 'cwd': 'videos'}}})
    config = load_config(file)
    assert check_actions(config) == ({}, [])
    agent = RigAgent(config)
    try:
        with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
            services.start(REF)
            assert services.stop() == {'cameras': [None]}
    finally:
        agent.close()
    assert (tmp_path / 'videos' / f'{REF}.copied').exists()


@pytest.mark.parametrize('cwd, message', [
    ('', 'must be a folder'), (['a'], 'must be a folder'), ('videos/{subject}', 'takes no placeholders')])
def test_cwd_is_a_plain_folder(cwd, message):
    with pytest.raises(RigConfigError, match=f'on.EXPEND.cwd: {message}'):
        parse_config({'on': {'EXPEND': {'run': 'copy', 'cwd': cwd}}})
    with pytest.raises(RigConfigError, match='on.EXPEND.cwd: applies to run: commands only'):
        parse_config({'on': {'EXPEND': {'call': 'a:b', 'cwd': 'videos'}}})


@pytest.mark.parametrize('content', ['', '# nothing yet\n', 'name: cameras\n', 'name: cameras\non: {}\n',
                                     'name: cameras\non:\n  EXPSTART: []\n'])
def test_a_config_without_actions_says_it_only_answers(tmp_path, no_leaked_threads, log_lines, content):
    file = write_config(tmp_path, content)
    agent = RigAgent(load_config(file, {'name': 'cameras', 'listen': 'udp://127.0.0.1:0'}))
    try:
        with Services({'cameras': agent.server.uri}, timeout=DEADLINE) as services:
            assert services.info('CONNECTED')['cameras'][1]['name'] == 'cameras'
    finally:
        agent.close()
    log_lines.wait_for(f'^cameras: no actions in {re.escape(str(file))}: this rig only answers \\(status, info\\)$')
    assert len([line for line in log_lines.lines if 'no actions' in line]) == 1


def test_a_config_with_actions_does_not_say_so(agents, log_lines):
    agents({'EXPEND': {'run': python('pass')}})
    log_lines.wait_for('listening on .*actions at EXPEND')
    assert not [line for line in log_lines.lines if 'no actions' in line]


@pytest.mark.parametrize('content, lines', [
    ('name: cameras\non:\n  EXPSTART: [unclosed\n',
     ['while parsing a flow sequence', '  in "{file}", line 3, column 13:', '      EXPSTART: [unclosed',
      '                ^', "expected ',' or ']', but got '<stream end>'", '  in "{file}", line 4, column 1:']),
    ('name: cameras\non:\n  EXPSTART:\n    run: a: b\n',
     ['mapping values are not allowed here', '  in "{file}", line 4, column 11:', '        run: a: b',
      '              ^']),
    ('name: "a\x00b"\n', ['unacceptable character #x0000: special characters are not allowed',
                           '  in "{file}", position 8']),
], ids=['unclosed', 'colon', 'NUL'])
def test_yaml_error_keeps_its_line_column_and_caret(tmp_path, capsys, content, lines):
    file = write_config(tmp_path, content)
    assert main([str(file)]) == 2
    first, *rest = error_lines(capsys)
    expected = [line.format(file=file) for line in lines]
    assert first == f'iblnet-rig: error: {file}: not valid YAML: {expected[0]}'
    assert rest[:len(expected) - 1] == expected[1:]


def test_every_error_of_a_file_names_it(tmp_path, saved_sys_path):
    (tmp_path / 'broken_hooks_iblnet.py').write_text('raise RuntimeError("camera driver missing")\n')
    file = write_config(tmp_path, {'on': {'EXPINIT': {'call': 'broken_hooks_iblnet:prepare'}}})
    try:
        with pytest.raises(RigConfigError) as caught:
            RigAgent(load_config(file, {'listen': 'udp://127.0.0.1:0'}))
    finally:
        sys.modules.pop('broken_hooks_iblnet', None)
    assert str(caught.value) == f'{file}: on.EXPINIT.call: cannot import broken_hooks_iblnet:prepare: ' \
        'RuntimeError: camera driver missing'


def test_the_agent_tells_its_version():
    done = subprocess.run([*AGENT, '--version'], env=agent_env(), capture_output=True, text=True, timeout=DEADLINE,
                          check=False)
    assert done.returncode == 0 and done.stderr == ''
    assert done.stdout == f'iblnet-rig (iblnet_sync {__version__})\n'


@pytest.mark.parametrize('option, value, message', [
    ('--listen', 'nowhere', '--listen: not a UDP address like udp://0.0.0.0:11001'),
    ('--name', ' ', '--name: must be a non-empty text'),
])
def test_option_errors_name_the_option(tmp_path, capsys, option, value, message):
    file = write_config(tmp_path, 'name: cameras\n')
    with pytest.raises(SystemExit) as exited:
        main([str(file), option, value])
    assert exited.value.code == 2
    assert error_lines(capsys)[-1].startswith(f'iblnet-rig: error: {message}')


def test_log_file_that_cannot_be_opened_is_one_line(tmp_path, capsys):
    file = write_config(tmp_path, 'name: cameras\nlisten: udp://127.0.0.1:0\n')
    assert main([str(file), '--log-file', str(tmp_path / 'no-such-folder' / 'rig.log')]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith('iblnet-rig: error: --log-file: ') and 'no-such-folder' in line


@POSIX_ONLY
def test_ctrl_c_before_serving_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while a call: module takes its time to import (a camera SDK, say)."""
    (tmp_path / 'slow_hooks_iblnet.py').write_text(
        'import sys, time\nsys.stderr.write("importing" + chr(10)); sys.stderr.flush()\ntime.sleep(60)\n'
        'def prepare(data):\n    pass\n')
    file = write_config(tmp_path, {'name': 'cameras', 'on': {'EXPINIT': {'call': 'slow_hooks_iblnet:prepare'}}})
    agent = AgentProcess(file)
    try:
        agent.wait_for('^importing$')
        agent.process.send_signal(signal.SIGINT)
        assert agent.process.wait(DEADLINE) == 130
    finally:
        agent.close()
    assert agent.lines == ['importing', 'iblnet-rig: interrupted']


@POSIX_ONLY
def test_ctrl_c_while_serving_ends_with_its_line_and_exit_130(tmp_path):
    file = write_config(tmp_path, {'name': 'cameras', 'listen': 'udp://127.0.0.1:0'})
    agent = AgentProcess(file)
    try:
        agent.wait_for('listening on')
        agent.process.send_signal(signal.SIGINT)
        assert agent.process.wait(DEADLINE) == 130
    finally:
        agent.close()
    assert agent.lines[-2].endswith('INFO    SIGINT received: stopping cameras and the commands it started')
    assert agent.lines[-1].endswith('INFO    cameras stopped')
    assert not [line for line in agent.lines if 'Traceback' in line]


def test_log_calls_never_wait_for_a_slow_handler_and_every_line_is_written_at_the_end():
    from iblnet_sync import rig
    release = threading.Event()

    class SlowDisk(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            release.wait(DEADLINE)  # a disk that stalls until the test releases it
            self.lines.append(self.format(record))

    disk = SlowDisk()
    root_handlers = list(logging.getLogger().handlers)
    with rig._console_logging([disk], verbose=False):
        logger = threading.Thread(target=lambda: [rig.log.info('line %d', index) for index in range(500)])
        logger.start()
        logger.join(DEADLINE)
        assert not logger.is_alive(), 'a log call waited for the handler'
        assert disk.lines == [], 'the handler was still stalled on the first line'
        release.set()
    assert [line.split('INFO    ')[1] for line in disk.lines] == [f'line {index}' for index in range(500)]
    assert logging.getLogger().handlers == root_handlers, 'the queue handler is removed'


@POSIX_ONLY
def test_verbose_shows_each_datagram_as_sent_and_received_in_order(tmp_path):
    from iblutil.io.net.base import ExpMessage
    file = write_config(tmp_path, {'name': 'cameras', 'listen': 'udp://127.0.0.1:0'})
    agent = AgentProcess(file, '-v')
    code = int(ExpMessage.EXPSTATUS)
    steps = {  # our Services talks to a rig it does not know as iblutil's main does: no envelope
        'the request received': f'DEBUG   cameras: received [{code}, 0, {{}}] from',
        'its echo sent': f'DEBUG   cameras: sent [{code}, 0, {{}}] to',
        'the agent handles it': 'DEBUG   EXPSTATUS received [0, {}]',
        'the answer sent': f'DEBUG   cameras: sent [{code}, 0]\\n to',
        'its echo received': f'DEBUG   cameras: received [{code}, 0]\\n from',
    }
    try:
        with Services({'cameras': agent.uri}, timeout=DEADLINE) as services:
            assert services.status('CONNECTED') == {'cameras': [int(ExpStatus.CONNECTED)]}
        agent.wait_for(re.escape(steps['its echo received']))
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(DEADLINE) == 0
    finally:
        agent.close()
    seen = [step for line in agent.lines for step, text in steps.items() if text in line]
    assert seen == list(steps), '\n'.join(agent.lines)
