"""The rig agent: an acquisition PC on the network with a YAML file and one command.

``iblnet-rig CONFIG`` (or ``python -m iblnet_sync.rig CONFIG``) runs a :class:`RigServer`
that answers the main rig, and at each event runs a command line or calls a Python function,
as the file says (see :mod:`iblnet_sync.rig_config`; ``iblnet-rig --example-config`` prints
one to start from).

- At start-up, every ``run:`` program must be found and every ``call:`` must import
  (:func:`check_actions`), or the agent refuses to start, naming each one that cannot.
- A command starts in the configuration file's folder, or in its action's ``cwd:``.
- A quick command runs to its end; a non-zero exit status, or a command that cannot start,
  reaches the main rig as an error report carrying the end of its stderr.
- A long-running command (``until: EVENT``) is started at its event and stopped at EVENT or
  at EXPINTERRUPT: Ctrl-C first (SIGINT to its process group; Ctrl-Break on Windows), then
  terminated after a grace period.
- Ctrl-C or SIGTERM (Ctrl-Break on Windows) stops the agent and every command it started.
- Log lines go through a queue to the console and the ``--log-file``: a slow disk or terminal
  never delays the network thread.
- Values from the network are data: the experiment reference and every value a placeholder
  takes are checked (:class:`~iblnet_sync.rig_config.ValueRules`) before anything runs; a
  value that breaks a rule is refused with an error report naming the key and the rule.
- Alyx credentials are never logged above DEBUG, and the token not even there; text from the
  network is escaped and cut in log lines (:func:`~iblnet_sync.logtext.peer_text`); the
  ``--log-file`` rotates by size.

Examples
--------
    iblnet-rig --example-config > cameras.yaml
    iblnet-rig cameras.yaml --log-file cameras.log

Exit code: 0 after SIGTERM or SIGHUP, 130 after Ctrl-C (or Ctrl-Break), 1 when the agent cannot
listen, 2 for a bad configuration or option (one line each problem, never a traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import logging
import logging.handlers
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import protocol
from .logtext import PeerLogLimiter, mask_alyx, peer_text
from .rig_config import (
    EVENTS,
    EXAMPLE_CONFIG,
    Action,
    RigConfig,
    RigConfigError,
    ValueRefused,
    ValueRules,
    _windows_split,
    load_config,
    parse_config,
    placeholders,
)
from .rig_server import RigServer
from .version import __version__

__all__ = ['Child', 'CommandFailed', 'RigAgent', 'ValueRefused', 'check_actions', 'import_calls', 'main',
           'mask_alyx', 'placeholder_values', 'render', 'stop_children']
log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = 'iblnet-rig'
TAIL_LINES = 12
"""int: how many of the last stderr lines of a command are kept for its error report."""
TAIL_CHARS = 1500
"""int: at most this much stderr goes into an error report (it must fit in a datagram)."""
FORCE_WAIT = 2.0
"""float: seconds to wait after each step of a forced stop (terminate, then kill)."""
READER_WAIT = 1.0
"""float: how long an ended command's stderr may still be read (a grandchild may hold it open)."""
RECEIVED_CHARS = 200
"""int: characters of a message's data shown in the line that says it was received."""
STDERR_CHARS = 1000
"""int: characters of one stderr line of a command shown in the log."""
LOG_BURST, LOG_PERIOD = 10, 60.0
"""int, float: "EVENT received" lines logged per event in each period of seconds; the others are counted."""
LOG_FILE_BYTES, LOG_FILE_BACKUPS = 10_000_000, 5
"""int, int: ``--log-file`` is renamed PATH.1 (PATH.1 to PATH.2, ...) at this size; this many old files are kept."""
_REFERENCE_KEYS = frozenset({'exp_ref', 'subject', 'date', 'sequence'})


class CommandFailed(RuntimeError):
    """A command failed, could not start, or outlived its timeout; the message ends with its stderr."""


# --- child processes ---
if sys.platform == 'win32':
    def _own_group() -> dict:
        """Popen options: a process group of its own, so that Ctrl-Break reaches it and not us."""
        return {'creationflags': subprocess.CREATE_NEW_PROCESS_GROUP}

    def _ctrl_break(process: subprocess.Popen) -> None:
        process.send_signal(signal.CTRL_BREAK_EVENT)

    def _kill_tree(process: subprocess.Popen) -> None:
        subprocess.run(['taskkill', '/T', '/F', '/PID', str(process.pid)], capture_output=True, check=False)
        process.kill()

    _STOP_STEPS: tuple[tuple[str, Callable[[subprocess.Popen], None]], ...] = (
        ('Ctrl-Break', _ctrl_break), ('taskkill /T /F', _kill_tree))
else:
    def _own_group() -> dict:
        """Popen options: a session of its own, so its children can be signalled with it, and Ctrl-C
        in the agent's terminal reaches only the agent, which stops it."""
        return {'start_new_session': True}

    def _signal_group(signum: int, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signum)

    _STOP_STEPS = tuple((signal.Signals(signum).name, functools.partial(_signal_group, signum))
                        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL))


class Child:
    """A command the agent started: its process, the last lines of its stderr, when it started.

    Parameters
    ----------
    command : list of str, str
        The command, placeholders filled in.
    action : Action
        The configured action it comes from.
    cwd : Path, optional
        The folder it starts in (the agent's own by default); a relative program path such as
        ``./copy.sh`` is found there, on Windows too.
    """

    def __init__(self, command: Sequence[str] | str, action: Action, cwd: Path | None = None):
        self.command, self.action = command, action
        self.stopping = False  # the agent asked it to stop
        self.process = subprocess.Popen(_in_folder(command, cwd), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, errors='replace', cwd=cwd, **_own_group())
        self.started = time.monotonic()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._reader = threading.Thread(target=self._read_stderr, name=f'iblnet-rig-stderr-{self.process.pid}',
                                        daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f'<Child {self.action.key} pid {self.process.pid} {show(self.command)}>'

    def _read_stderr(self) -> None:
        """Log each stderr line and keep the last ones; close the pipe at its end.

        A long-running command that ends by itself is logged at once (not at its ``until`` event).
        """
        assert self.process.stderr is not None
        with self.process.stderr as pipe:
            for line in pipe:
                self._tail.append(line.rstrip())
                log.info('  [pid %d] %s', self.process.pid, peer_text(line.rstrip(), STDERR_CHARS))
        if not self.action.until:
            return
        self.process.wait()
        if not self.stopping:
            log.log(logging.ERROR if self.process.returncode else logging.INFO, '%s: %s ended by itself before %s, %s',
                    self.action.key, show(self.command), self.action.until, self.ended())

    def stderr_tail(self) -> str:
        """The end of what the command wrote to stderr (waiting briefly for the last of it)."""
        self._reader.join(READER_WAIT)
        return '\n'.join(self._tail)[-TAIL_CHARS:]

    def failure(self, what: str) -> CommandFailed:
        """A :class:`CommandFailed` saying `what` happened to the command, with its stderr."""
        tail = self.stderr_tail()
        return CommandFailed(f'{show(self.command)} {what}' + (f'; stderr:\n{tail}' if tail else '; no stderr'))

    def ended(self) -> str:
        """How the command ended and how long it ran, in words."""
        code = self.process.returncode
        how = f'killed by {signal.Signals(-code).name}' if code < 0 and -code in signal.valid_signals() else \
            f'exit status {code}'
        return f'{how} after {_seconds_since(self.started)}'


def _in_folder(command: Sequence[str] | str, cwd: Path | None) -> Sequence[str] | str:
    """The command with a relative program path (``./copy.sh``, ``bin/tool``) made relative to `cwd`.

    POSIX looks for it there anyway; Windows would look in the agent's own folder.
    """
    if cwd is None or isinstance(command, str) or not os.path.dirname(command[0]) or os.path.isabs(command[0]):
        return command
    return [os.path.join(cwd, command[0]), *command[1:]]


def stop_children(children: Iterable[Child], grace: float | None = None) -> list[Child]:
    """Stop commands: a polite stop to all at once, then terminate those still running after `grace`.

    Parameters
    ----------
    children : iterable of Child
        The commands to stop; those that already ended are left alone.
    grace : float, optional
        Seconds between the polite stop and the next step; the longest ``grace`` of the
        children's actions by default.

    Returns
    -------
    list of Child
        Those that could not be stopped (none, normally).
    """
    running = [child for child in children if child.process.poll() is None]
    wait = grace if grace is not None else max((child.action.grace for child in running), default=0.0)
    for step, (name, send) in enumerate(_STOP_STEPS):
        if not running:
            break
        if step:
            log.warning('%s still running after %.1f s: sending %s', ', '.join(map(repr, running)), wait, name)
            wait = FORCE_WAIT
        for child in running:
            child.stopping = True
            with contextlib.suppress(OSError):  # it ended in the meantime
                send(child.process)
        running = _wait_all(running, wait)
    for child in running:
        log.error('%r could not be stopped', child)
    return running


def _wait_all(children: list[Child], timeout: float) -> list[Child]:
    """Wait for the children until one deadline; return those still running."""
    deadline = time.monotonic() + timeout
    running = []
    for child in children:
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            running.append(child)
    return running


class _Children:
    """Every command the agent started that may still run; once closed, no new one starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Child] = set()
        self._closed = False

    def start(self, command: Sequence[str] | str, action: Action, cwd: Path | None = None) -> Child:
        """Start a command in the folder `cwd` and track it.

        Raises
        ------
        CommandFailed
            The agent is stopping, or the command cannot start (not found, not executable).
        """
        with self._lock:  # no command may start after close() took the list of those to stop
            if self._closed:
                raise CommandFailed(f'{show(command)} not started: the agent is stopping')
            try:
                child = Child(command, action, cwd)
            except OSError as ex:
                raise CommandFailed(f'{show(command)} cannot start: {ex}') from None
            self._running.add(child)
        return child

    def forget(self, child: Child) -> None:
        with self._lock:
            self._running.discard(child)

    def close(self) -> list[Child]:
        """Refuse new commands; return those that may still run."""
        with self._lock:
            self._closed = True
            running, self._running = list(self._running), set()
        return running


# --- commands and calls ---
def placeholder_values(event: str, data: list, current_ref: str | dict | None, rules: ValueRules | None = None,
                       needed: Iterable[str] | None = None) -> dict[str, str]:
    """The values a command's placeholders take for one message, each checked.

    Parameters
    ----------
    event : str
        The event name, e.g. 'EXPSTART'.
    data : list
        The message data (without the event code).
    current_ref : str, dict, None
        The rig's experiment reference, used when the message carries none.
    rules : ValueRules, optional
        What the reference and the values may look like (the defaults of ``ValueRules()``).
    needed : iterable of str, optional
        The placeholders the event's commands use: only these values are checked and
        returned (other keys of the main rig's dictionary may hold anything). All by default.

    Returns
    -------
    dict of str to str
        ``event``; ``exp_ref``, ``subject``, ``date`` and ``sequence`` when a reference is
        known; and the keys of the dictionary the main rig sent (its last data element; never
        the credentials of ALYX) whose value is not None.

    Raises
    ------
    ValueRefused
        The reference in the message (EXPSTART, EXPINIT: always parsed, since the rig takes
        it), or a needed value, breaks a rule; the message names the key and the rule.

    Examples
    --------
    >>> placeholder_values('EXPSTART', ['2026-11-24_3_mouse', {'rate': 60}], None)['sequence']
    '3'
    """
    rules = rules or ValueRules()
    wanted = None if needed is None else set(needed)
    details = protocol.details(data)  # (iblrig's main sends EXPINTERRUPT's details inside a list)
    extra = details if isinstance(details, dict) and event != 'ALYX' else {}
    given = data[0] if event == 'EXPSTART' and data else extra.get('exp_ref') if event == 'EXPINIT' else None
    values = {'event': event}
    reference = None
    if given:
        reference = rules.reference(given)
    elif current_ref and (wanted is None or wanted & _REFERENCE_KEYS):
        reference = rules.reference(current_ref, "exp_ref (the rig's current reference)")
    if reference:
        values.update(exp_ref=str(protocol.exp_ref_to_str(reference)), subject=reference['subject'],
                      date=reference['date'].isoformat(), sequence=str(reference['sequence']))
    for key, value in extra.items():
        if value is not None and key not in values and (wanted is None or key in wanted):
            values[str(key)] = rules.value(str(key), value)
    return values


def render(command: Sequence[str] | str, values: Mapping[str, str], key: str = 'run') -> list[str] | str:
    """Fill in a command's placeholders.

    Raises
    ------
    CommandFailed
        A placeholder has no value for this message (e.g. ``{exp_ref}`` before any reference).
    """
    try:
        if isinstance(command, str):
            return command.format_map(values)
        return [part.format_map(values) for part in command]
    except (KeyError, AttributeError, IndexError, ValueError) as ex:
        raise CommandFailed(f'{key}: placeholder {ex} has no value for this message; '
                            f'known: {", ".join(sorted(values))}') from None


def show(command: Sequence[str] | str, width: int = 120) -> str:
    """A command as one line for logs and messages: escaped, and cut after `width` characters."""
    return peer_text(command if isinstance(command, str) else subprocess.list2cmdline(command), width)


def import_calls(config: RigConfig) -> dict[str, Callable[[list], Any]]:
    """Import the function of each ``call:`` action, keyed by the action's key.

    Modules are looked for on ``sys.path`` and then in the configuration file's folder.

    Raises
    ------
    RigConfigError
        A module that cannot be imported, or no such callable in it (the first; :func:`check_actions` lists all).
    """
    calls, problems = _import_all(config)
    if problems:
        raise problems[0]
    return calls


def check_actions(config: RigConfig) -> tuple[dict[str, Callable[[list], Any]], list[RigConfigError]]:
    """Check what the actions need on this machine, before the agent starts: every problem, not only the first.

    Each ``run:`` program must be found: a name on ``PATH`` (with ``PATHEXT`` on Windows), a
    path such as ``./copy.sh`` relative to the folder the command starts in
    (:meth:`~iblnet_sync.rig_config.RigConfig.working_directory`), which must exist. A
    program given by a placeholder is known only at its event, and not checked. Each
    ``call:`` must import and be callable.

    Parameters
    ----------
    config : RigConfig
        The configuration.

    Returns
    -------
    calls : dict
        The functions of the ``call:`` actions that imported, by action key.
    problems : list of RigConfigError
        One per action that cannot work, in the file's order; each message names the file and the key,
        e.g. ``cameras.yaml: on.EXPSTART.run: program 'bonsai' not found (PATH=...)``.
    """
    problems = []
    for actions in config.on.values():
        for action in actions:
            if action.run:
                problem = _program_problem(action, config.working_directory(action))
                if problem:
                    problems.append(RigConfigError(*problem, config.file))
    calls, call_problems = _import_all(config)
    order = {action.key: index for index, action in enumerate(a for actions in config.on.values() for a in actions)}
    return calls, sorted(problems + call_problems, key=lambda problem: order.get(problem.key.rpartition('.')[0], 0))


def _program_problem(action: Action, cwd: Path | None) -> tuple[str, str] | None:
    """Why the program of a ``run:`` action cannot start, as ``(key, problem)``; None if it can, or may."""
    assert action.run
    if cwd is not None and not cwd.is_dir():
        key = f'{action.key}.cwd' if action.cwd else f'{action.key}.run'
        return key, f'the folder {str(cwd)!r} where the command starts ' + \
            ('is not a folder' if cwd.exists() else 'does not exist')
    words = action.run if isinstance(action.run, tuple) else _windows_split(action.run)
    if not words or placeholders(words[0]):
        return None  # a program chosen at the event: known only then
    program = words[0].format_map({})  # {{ and }} are braces
    key = f'{action.key}.run'
    if os.path.dirname(program):  # a path: relative to the command's folder, as the command will find it
        path = os.path.join(cwd if cwd is not None else os.getcwd(), program)
        if shutil.which(path):
            return None
        if os.path.isfile(path):
            return key, f'program {program!r} is not executable ({os.path.normpath(path)})'
        return key, f'program {program!r} not found ({os.path.normpath(path)})'
    if shutil.which(program):
        return None
    return key, f"program {program!r} not found (PATH={os.environ.get('PATH', '')})"


def _import_all(config: RigConfig) -> tuple[dict[str, Callable[[list], Any]], list[RigConfigError]]:
    """Import every ``call:``; return those that imported and what went wrong with the others."""
    calls, problems = {}, []
    for actions in config.on.values():
        for action in actions:
            if action.call:
                try:
                    calls[action.key] = _import_callable(action.call, f'{action.key}.call', config.folder,
                                                         config.file)
                except RigConfigError as ex:
                    problems.append(ex)
    return calls, problems


def _import_callable(spec: str, key: str, folder: Path | None, source: str | None = None) -> Callable[[list], Any]:
    module_name, _, attributes = spec.partition(':')
    if folder is not None and str(folder) not in sys.path:
        sys.path.append(str(folder))
    try:
        target: Any = importlib.import_module(module_name)
        for attribute in attributes.split('.'):
            target = getattr(target, attribute)
    except Exception as ex:  # noqa: BLE001 (importing a module may raise anything)
        where = f' (looked on sys.path, then in {folder})' if isinstance(ex, ImportError) and folder else ''
        raise RigConfigError(key, f'cannot import {spec}: {type(ex).__name__}: {ex}{where}', source) from None
    if not callable(target):
        raise RigConfigError(key, f'{spec} is not callable', source)
    return target


def _seconds_since(start: float) -> str:
    elapsed = time.monotonic() - start
    return f'{elapsed * 1000:.1f} ms' if elapsed < 1 else f'{elapsed:.2f} s'


# --- the agent ---
class RigAgent:
    """A :class:`RigServer` that runs the configured commands and calls at each event.

    Parameters
    ----------
    config : RigConfig
        What to listen on and what to do.
    calls : mapping, optional
        The functions of the ``call:`` actions by action key; imported with :func:`import_calls` by default.

    Attributes
    ----------
    server : RigServer
        The rig the main rig talks to; ``server.uri`` is the bound address.
    log_limiter : PeerLogLimiter
        Limits the "EVENT received" lines per event (:data:`LOG_BURST` per :data:`LOG_PERIOD`).

    Examples
    --------
    >>> with RigAgent(load_config('cameras.yaml')) as agent:  # doctest: +SKIP
    ...     agent.server.wait_closed()
    """

    def __init__(self, config: RigConfig, calls: Mapping[str, Callable[[list], Any]] | None = None):
        self.config = config
        self._calls = dict(calls) if calls is not None else import_calls(config)
        self._children = _Children()
        self._long_running: list[Child] = []  # only touched on the server's callback thread
        self._needed = {event: {name for action in actions if action.run for name in placeholders(action.run)}
                        for event, actions in config.on.items()}
        self.log_limiter = PeerLogLimiter(LOG_BURST, LOG_PERIOD)
        self.server = RigServer(config.listen, name=config.name, main_sync=config.main_sync, exp_ref=config.exp_ref,
                                experiment_description=config.experiment_description,
                                allow=None if config.allow is None else [str(network) for network in config.allow])
        for event in EVENTS:
            self.server.assign_handler(event, functools.partial(self._on_event, event))
        log.info('%s listening on %s (main sync: %s; actions at %s)', config.name, self.server.uri,
                 'yes' if config.main_sync else 'no', ', '.join(event for event, actions in config.on.items()
                                                                 if actions) or 'no event')
        if not config.has_actions:
            log.warning('%s: no actions in %s: this rig only answers (status, info)', config.name,
                        config.file or 'the configuration')
        if config.allow is None:
            log.warning('%s: no allow: in the configuration: any host that reaches %s may drive this rig',
                        config.name, self.server.uri)
        else:
            log.info('%s: driven only from %s (allow:)', config.name, ', '.join(map(str, config.allow)))

    def close(self) -> None:
        """Stop every command still running (politely first), then stop serving; idempotent."""
        running = self._children.close()
        if running:
            log.info('stopping %s', ', '.join(map(repr, running)))
        stop_children(running)
        self.server.close()

    def __enter__(self) -> RigAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- on the server's callback thread ---
    def _on_event(self, event: str, data: list) -> Any:
        """Check the message's values, stop the long-running commands this event ends, then do the event's actions.

        Raises
        ------
        ValueRefused
            A value from the network breaks a rule: nothing was run or stopped.
        CommandFailed
            A placeholder has no value (nothing was run or stopped), or a command failed.
        """
        received = time.monotonic()
        level = logging.INFO if event != 'EXPSTATUS' or event in self.config.on else logging.DEBUG  # polled often
        logged = self._log_received(event, data, level)
        actions = self.config.on.get(event, ())
        try:
            values = placeholder_values(event, data, self.server.exp_ref, self.config.rules,
                                        self._needed.get(event, set()))
            if event == 'EXPINFO' and self.config.main_sync and not self.config.exp_ref:
                self._check_subject(data)  # the rig makes its next reference from it
        except ValueRefused as ex:
            raise ValueRefused(f'{ex}; nothing was run') from None
        commands = [render(action.run, values, f'{action.key}.run') if action.run else None for action in actions]
        problems = self._stop_long_running(lambda child: event == 'EXPINTERRUPT' or child.action.until == event)
        returned = None
        for action, command in zip(actions, commands):
            if command is None:
                returned = self._call(action, data)
            elif action.until:
                self._start_long_running(action, command, received)
            else:
                self._run_quick(action, command, received)
        if problems:
            raise CommandFailed('; '.join(problems))
        if logged:
            log.log(level, '%s handled in %s', event, _seconds_since(received))
        return returned

    def _log_received(self, event: str, data: list, level: int) -> bool:
        """Say that `event` was received, with its data escaped and cut (ALYX's only at DEBUG, its token masked)."""
        shown = '(Alyx credentials: logged at DEBUG only, the token masked)' if event == 'ALYX' else \
            peer_text(json.dumps(data, default=str), RECEIVED_CHARS)
        logged = self.log_limiter.log(log, level, event, '%s received %s', event, shown)
        if logged and event == 'ALYX':
            log.debug('ALYX data: %s', peer_text(json.dumps(mask_alyx(data), default=str), RECEIVED_CHARS))
        return logged

    def _check_subject(self, data: list) -> None:
        extra = data[-1] if data and isinstance(data[-1], dict) else {}
        subject = extra.get('subject')
        if subject:
            if not isinstance(subject, str):
                raise ValueRefused(f'subject: must be a text, not a {type(subject).__name__}')
            self.config.rules.text('subject', subject, self.config.rules.subject_pattern)

    def _start(self, action: Action, command: list[str] | str, received: float) -> Child:
        child = self._children.start(command, action, self.config.working_directory(action))
        log.info('%s: started %s (pid %d, %s after the event was received)', action.key, show(child.command),
                 child.process.pid, f'{(child.started - received) * 1000:.1f} ms')
        return child

    def _run_quick(self, action: Action, command: list[str] | str, received: float) -> None:
        """Run a command to its end; raise :class:`CommandFailed` unless it exits with 0."""
        child = self._start(action, command, received)
        try:
            child.process.wait(action.timeout)
        except subprocess.TimeoutExpired:
            stop_children([child], action.grace)
            log.error('%s: %r outlived its timeout of %g s: stopped', action.key, child, action.timeout)
            raise child.failure(f'did not end within its timeout of {action.timeout:g} s and was stopped') from None
        finally:
            self._children.forget(child)
        if child.stopping:
            log.error('%s: %s was stopped by the agent, %s', action.key, show(child.command), child.ended())
            raise child.failure(f'was stopped by the agent, {child.ended()}')
        if child.process.returncode:
            log.error('%s: %s failed, %s', action.key, show(child.command), child.ended())
            raise child.failure(f'failed, {child.ended()}')
        log.info('%s: %s ended, %s', action.key, show(child.command), child.ended())

    def _start_long_running(self, action: Action, command: list[str] | str, received: float) -> None:
        problems = self._stop_long_running(lambda child: child.action is action)
        if problems:  # started again before its `until` event: the earlier run is over anyway
            log.warning('%s: the earlier run had failed: %s', action.key, '; '.join(problems))
        self._long_running.append(self._start(action, command, received))

    def _stop_long_running(self, due: Callable[[Child], bool]) -> list[str]:
        """Stop the long-running commands for which `due` holds; return what went wrong, in words."""
        stopping = [child for child in self._long_running if due(child)]
        if not stopping:
            return []
        self._long_running = [child for child in self._long_running if child not in stopping]
        stop_children(stopping)
        problems = []
        for child in stopping:
            self._children.forget(child)
            if child.process.returncode is None:
                problems.append(f'{show(child.command)} could not be stopped')
            elif child.stopping:
                log.info('%s: stopped %s, %s', child.action.key, show(child.command), child.ended())
            elif child.process.returncode:
                log.error('%s: %s had already ended: %s', child.action.key, show(child.command), child.ended())
                problems.append(str(child.failure(f'had already ended before it was stopped, {child.ended()}')))
            else:
                log.info('%s: %s had already ended, %s', child.action.key, show(child.command), child.ended())
        return problems

    def _call(self, action: Action, data: list) -> Any:
        started = time.monotonic()
        returned = self._calls[action.key](data)
        log.info('%s: %s returned after %s', action.key, action.call, _seconds_since(started))
        return returned


# --- the program ---
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ('SIGINT', 'SIGTERM', 'SIGBREAK', 'SIGHUP')
                      if hasattr(signal, name))


class _StopSignals:
    """Ctrl-C, SIGTERM, SIGHUP or Ctrl-Break wake the main thread (``wait``) instead of raising in it.

    While installed, these signals never interrupt the agent's own shutdown: a second Ctrl-C
    cannot leave a command running.
    """

    def __enter__(self) -> _StopSignals:
        self._reader, self._writer = socket.socketpair()  # a socket, since Windows has no pipe for this
        self._writer.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, self._note) for signum in _STOP_SIGNALS}
        return self

    @staticmethod
    def _note(signum: int, frame: Any) -> None:
        """Nothing to do here: the signal's number is written to the wake-up socket."""

    def wait(self) -> str:
        """Block until a stop signal arrives; return its name."""
        while True:
            select.select([self._reader], [], [])
            signum = self._reader.recv(1)[0]
            if signum in _STOP_SIGNALS:  # another signal with a Python handler may write here too
                return signal.Signals(signum).name

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._reader.close()
        self._writer.close()


def _log_handlers(log_file: str | None) -> list[logging.Handler]:
    """Where log lines go: stderr, and `log_file` rotated by size when given (OSError if it cannot be opened)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES,
                                                             backupCount=LOG_FILE_BACKUPS, encoding='utf-8'))
    return handlers


@contextlib.contextmanager
def _console_logging(handlers: list[logging.Handler], verbose: bool) -> Iterator[None]:
    """Timestamped lines to `handlers`: the agent's from INFO, the others' from WARNING (all from DEBUG if `verbose`).

    A log call only puts its line on a queue (:class:`logging.handlers.QueueHandler`); a thread
    of its own (:class:`logging.handlers.QueueListener`) writes it to the handlers, so a slow
    terminal or disk never delays the thread that logs (the network's, the callbacks'). At the
    end, every line still queued is written, then the handlers are removed and closed.
    """
    formatter = logging.Formatter('%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s', '%Y-%m-%d %H:%M:%S')
    for handler in handlers:
        handler.setFormatter(formatter)
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()  # unbounded: a log call never waits
    listener = logging.handlers.QueueListener(lines, *handlers, respect_handler_level=True)
    to_queue = logging.handlers.QueueHandler(lines)
    root, levels = logging.getLogger(), (logging.getLogger().level, log.level)
    listener.start()
    root.addHandler(to_queue)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(to_queue)  # first: a line logged from now on goes to stderr, not into a stopped queue
        root.setLevel(levels[0])
        log.setLevel(levels[1])
        listener.stop()  # writes every line still queued
        for handler in handlers:
            handler.close()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``iblnet-rig``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description='Answer a main rig and run commands at each experiment event, as a YAML '
        'file says.', epilog='Start with: iblnet-rig --example-config > rig.yaml')
    parser.add_argument('config', nargs='?', help='the YAML file')
    parser.add_argument('--listen', metavar='URI',
                        help='where to listen, e.g. udp://0.0.0.0:11001 (replaces the file\'s)')
    parser.add_argument('--name', help='the rig\'s name (replaces the file\'s)')
    parser.add_argument('--main-sync', action=argparse.BooleanOptionalAction, default=None,
                        help='whether this rig decides the experiment reference (replaces the file\'s)')
    parser.add_argument('--log-file', metavar='PATH',
                        help=f'also write the log lines to this file; it rotates at {LOG_FILE_BYTES // 10 ** 6} MB, '
                        f'keeping {LOG_FILE_BACKUPS} older files (PATH.1 the newest)')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='log the network library\'s details too: each datagram as it is sent and received')
    parser.add_argument('--example-config', action='store_true', help='print a commented configuration and exit')
    parser.add_argument('--version', action='version', version=f'%(prog)s (iblnet_sync {__version__})')
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options; a missing file or a bad ``--listen`` or ``--name`` ends the program (exit 2) naming the option."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config and not args.example_config:
        parser.error('a CONFIG file is needed (iblnet-rig --example-config prints one to start from)')
    for key in ('listen', 'name'):
        value = getattr(args, key)
        if value is not None:
            try:
                parse_config({key: value})  # the option alone, so that its error names the option, not the file
            except RigConfigError as ex:
                parser.error(f'--{key}: {ex.problem}')
    return args


def serve(config: RigConfig, calls: Mapping[str, Callable[[list], Any]]) -> int:
    """Run the agent until Ctrl-C, SIGTERM, SIGHUP or Ctrl-Break; then stop it and its commands.

    Returns
    -------
    int
        130 after Ctrl-C or Ctrl-Break, 0 after SIGTERM or SIGHUP, 1 if the agent cannot listen.
    """
    with _StopSignals() as signals:
        try:
            agent = RigAgent(config, calls)
        except OSError as ex:  # cannot listen there
            log.error('%s', ex)
            return EXIT_FAILED
        with agent:
            name = signals.wait()
            log.info('%s received: stopping %s and the commands it started', name, config.name)
    log.info('%s stopped', config.name)
    return EXIT_INTERRUPTED if name in ('SIGINT', 'SIGBREAK') else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The ``iblnet-rig`` command; returns the exit code.

    Every failure is told in one line (a YAML error with the lines that show where), never with a
    traceback: 2 for a bad configuration or option (each problem on a line of its own), 130 for
    Ctrl-C before the agent serves (``iblnet-rig: interrupted``); see :func:`serve` for the rest.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the agent serves (e.g. a call: module that takes long to import) or after
        print(f'{PROG}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if args.example_config:
        print(EXAMPLE_CONFIG, end='')
        return EXIT_OK
    overrides = {'listen': args.listen, 'name': args.name, 'main_sync': args.main_sync}
    try:
        config = load_config(args.config, overrides)
    except RigConfigError as ex:
        print(f'{PROG}: error: {ex}', file=sys.stderr)
        return EXIT_CONFIG
    calls, problems = check_actions(config)
    if problems:
        for problem in problems:
            print(f'{PROG}: error: {problem}', file=sys.stderr)
        return EXIT_CONFIG
    try:
        handlers = _log_handlers(args.log_file)
    except OSError as ex:
        print(f'{PROG}: error: --log-file: {ex}', file=sys.stderr)
        return EXIT_CONFIG
    with _console_logging(handlers, args.verbose):
        return serve(config, calls)


if __name__ == '__main__':
    sys.exit(main())
