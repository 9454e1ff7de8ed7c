"""The rig agent's YAML file: who the rig is, where it listens, and what it does at each event.

A file looks like::

    name: cameras
    listen: udp://0.0.0.0:11001
    main_sync: false
    on:
      EXPSTART:
        run: [bonsai, C:/rigs/record.bonsai, --start, -p:Session={exp_ref}]
        until: EXPEND
      EXPEND:
        run: python copy_videos.py {exp_ref}

:data:`EXAMPLE_CONFIG` is a commented file to start from. Every problem is a
:class:`RigConfigError` whose one-line message names the key, e.g. ``on.EXPSTART.until``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iblutil.io.net.base import LISTEN_PORT, ExpMessage

from . import protocol
from .config import ConfigError

__all__ = ['DEFAULT_GRACE', 'EVENTS', 'EXAMPLE_CONFIG', 'Action', 'RigConfig', 'RigConfigError',
           'load_config', 'parse_config']

EVENTS = tuple(event.name for event in ExpMessage)
"""tuple of str: the event names an ``on:`` mapping may use."""
DEFAULT_GRACE = 5.0
"""float: seconds a child is given to stop after the polite stop, before it is terminated."""
_TOP_KEYS = ('name', 'listen', 'main_sync', 'exp_ref', 'experiment_description', 'on')
_ACTION_KEYS = ('run', 'call', 'until', 'grace', 'timeout')
_CALL_SPEC = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$')

EXAMPLE_CONFIG = f"""\
# iblnet-rig: what this acquisition PC does when the main rig (the behaviour task) sends
# each event of an experiment. Start it with:  iblnet-rig THIS_FILE.yaml
name: cameras                      # this rig's name, in logs and in its EXPINFO answer
listen: udp://0.0.0.0:{LISTEN_PORT}        # where to listen ({LISTEN_PORT} is iblrig's port)
main_sync: false                   # true if this rig decides the experiment reference
# exp_ref: 2026-11-24_1_mouse      # a fixed reference to report in EXPINFO (main sync only)

# For each event ({', '.join(EVENTS)}):
# one action, or a list of actions done in order. An action is one of
#   run:  a command line, a list or a string (no shell: pipes and redirections do nothing).
#         Placeholders: {{exp_ref}} {{subject}} {{date}} {{sequence}} {{event}}, and the keys of
#         the dictionary the main rig sent; write {{{{ and }}}} for literal braces.
#         A quick command runs to its end: a non-zero exit status reaches the main rig as an
#         error with the end of the command's stderr.
#         timeout: SECONDS  stops a quick command that takes longer, and reports it.
#         until: EVENT  makes it long-running instead: started at this event, stopped at
#         EVENT and at EXPINTERRUPT: Ctrl-C first (Ctrl-Break on Windows), then terminated
#         after `grace` seconds (default {DEFAULT_GRACE:g}).
#   call: package.module:function  called with the message data; what it returns is sent
#         back to the main rig. The module must be importable (or sit next to this file).
on:
  EXPINIT:
    run: [python, -c, "print('preparing {{exp_ref}}')"]
  EXPSTART:
    run: [bonsai, C:/rigs/record.bonsai, --start, "-p:Session={{exp_ref}}"]
    until: EXPEND
    grace: 10
  EXPEND:
    run: python copy_videos.py {{subject}} {{date}} {{sequence}}
    timeout: 8                     # the main rig waits for the answer (10 s by default)
  # EXPCLEANUP:
  #   call: mylab.cameras:cleanup
"""


class RigConfigError(ConfigError):
    """A rig agent configuration that cannot be used; the message is one line naming the key.

    Attributes
    ----------
    key : str
        The offending key, e.g. ``'on.EXPSTART.until'``; empty when the file itself is unreadable.
    """

    def __init__(self, key: str, problem: str, source: str | os.PathLike | None = None):
        self.key = key
        where = ': '.join(str(part) for part in (source, key) if part)
        super().__init__(' '.join(f'{where}: {problem}'.split()) if where else problem)


@dataclass(frozen=True)
class Action:
    """What to do at one event: run a command (quick or long-running) or call a function.

    Attributes
    ----------
    key : str
        Where it was configured, e.g. ``'on.EXPSTART'``, for messages.
    run : tuple of str, str, None
        The command's arguments with their placeholders; a string command line stays a string
        on Windows (where the system splits it) and is split like a shell would elsewhere.
    call : str, None
        ``package.module:function``.
    until : str, None
        The event that stops a long-running command; None for a quick command.
    grace : float
        Seconds between the polite stop and the termination of the command.
    timeout : float, None
        Seconds a quick command may run before it is stopped and reported as failed.
    """

    key: str
    run: tuple[str, ...] | str | None = None
    call: str | None = None
    until: str | None = None
    grace: float = DEFAULT_GRACE
    timeout: float | None = None


@dataclass(frozen=True)
class RigConfig:
    """A parsed rig agent file; see the module docstring."""

    name: str
    listen: str = f'udp://0.0.0.0:{LISTEN_PORT}'
    main_sync: bool = False
    exp_ref: str | None = None
    experiment_description: dict = field(default_factory=dict)
    on: Mapping[str, tuple[Action, ...]] = field(default_factory=dict)
    folder: Path | None = None
    """The folder of the file, if any: modules of ``call`` actions may sit there."""


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> RigConfig:
    """Read and check a rig agent file.

    Parameters
    ----------
    path : str, PathLike
        The YAML file.
    overrides : mapping, optional
        Top-level keys that replace the file's (e.g. from command-line flags); None values are ignored.

    Raises
    ------
    RigConfigError
        Unreadable, not YAML, or a key with a bad value (named in the message).
    """
    import yaml
    try:
        content = yaml.safe_load(Path(path).read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError) as ex:
        raise RigConfigError('', f'cannot read the file: {ex}', path) from None
    except yaml.YAMLError as ex:
        raise RigConfigError('', f'not valid YAML: {ex}', path) from None
    return dataclasses.replace(parse_config(content, overrides, source=path), folder=Path(path).resolve().parent)


def parse_config(content: Any, overrides: Mapping[str, Any] | None = None,
                 source: str | os.PathLike | None = None) -> RigConfig:
    """Check the content of a rig agent file (as loaded from YAML) and return it as a :class:`RigConfig`.

    Parameters
    ----------
    content : mapping, None
        The file's content; None (an empty file) is a rig that only answers.
    overrides : mapping, optional
        Top-level keys that replace the content's; None values are ignored.
    source : str, PathLike, optional
        The file's name, for messages.

    Raises
    ------
    RigConfigError
        A missing, unknown or bad key, named in the message.
    """
    content = {} if content is None else content
    if not isinstance(content, dict):
        raise RigConfigError('', f'must be a mapping of keys ({", ".join(_TOP_KEYS)}), not {_kind(content)}', source)
    if True in content:  # YAML 1.1 reads a bare `on` key as the boolean true
        content = {('on' if key is True else key): value for key, value in content.items()}
    content = {**content, **{key: value for key, value in (overrides or {}).items() if value is not None}}
    _refuse_unknown(content, _TOP_KEYS, '', source)
    return RigConfig(
        name=_name(content.get('name', socket.gethostname()), source),
        listen=_listen(content.get('listen', RigConfig.listen), source),
        main_sync=_boolean(content.get('main_sync', False), 'main_sync', source),
        exp_ref=_exp_ref(content.get('exp_ref'), source),
        experiment_description=_mapping(content.get('experiment_description') or {}, 'experiment_description',
                                        source),
        on=_events(content.get('on') or {}, source),
    )


def _kind(value: Any) -> str:
    return 'nothing' if value is None else f'a {type(value).__name__} ({value!r:.40})'


def _refuse_unknown(mapping: dict, known: tuple[str, ...], prefix: str, source: Any) -> None:
    for key in mapping:
        if key not in known:
            raise RigConfigError(f'{prefix}{key}', f'unknown key; expected one of {", ".join(known)}', source)


def _name(value: Any, source: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
        raise RigConfigError('name', f'must be a non-empty text, not {_kind(value)}', source)
    return str(value).strip()


def _listen(value: Any, source: Any) -> str:
    try:
        protocol.rig_address(value, allow_any_port=True)
    except (ValueError, TypeError) as ex:
        raise RigConfigError('listen', f'not a UDP address like udp://0.0.0.0:{LISTEN_PORT}: {ex}', source) from None
    return value


def _boolean(value: Any, key: str, source: Any) -> bool:
    if not isinstance(value, bool):
        raise RigConfigError(key, f'must be true or false, not {_kind(value)}', source)
    return value


def _exp_ref(value: Any, source: Any) -> str | None:
    if value is None:
        return None
    try:
        return protocol.exp_ref_to_str(protocol.exp_ref_to_dict(str(value)))
    except ValueError:
        raise RigConfigError('exp_ref', f'must look like 2026-11-24_1_mouse (DATE_SEQUENCE_SUBJECT), not {value!r}',
                             source) from None


def _mapping(value: Any, key: str, source: Any) -> dict:
    if not isinstance(value, dict):
        raise RigConfigError(key, f'must be a mapping, not {_kind(value)}', source)
    return value


def _event_name(value: Any, key: str, source: Any) -> str:
    name = str(value).strip().upper()
    if not isinstance(value, str) or name not in EVENTS:
        raise RigConfigError(key, f'must be an event name ({", ".join(EVENTS)}), not {value!r}', source)
    return name


def _events(value: Any, source: Any) -> dict[str, tuple[Action, ...]]:
    events: dict[str, tuple[Action, ...]] = {}
    for key, actions in _mapping(value, 'on', source).items():
        event = _event_name(key, f'on.{key}', source)
        if event in events:
            raise RigConfigError(f'on.{key}', f'{event} is given twice', source)
        listed = actions if isinstance(actions, list) else [actions]
        keys = [f'on.{event}[{i}]' for i in range(len(listed))] if isinstance(actions, list) else [f'on.{event}']
        events[event] = tuple(_action(action, key, event, source) for action, key in zip(listed, keys))
    return events


def _action(value: Any, key: str, event: str, source: Any) -> Action:
    if not isinstance(value, dict):
        raise RigConfigError(key, f'must be a mapping with run: or call:, not {_kind(value)}', source)
    _refuse_unknown(value, _ACTION_KEYS, f'{key}.', source)
    if ('run' in value) == ('call' in value):
        raise RigConfigError(key, 'needs exactly one of run: (a command) or call: (package.module:function)', source)
    if 'call' in value:
        for option in ('until', 'timeout'):
            if option in value:
                raise RigConfigError(f'{key}.{option}', 'applies to run: commands only', source)
        return Action(key, call=_call(value['call'], f'{key}.call', source),
                      grace=_seconds(value.get('grace', DEFAULT_GRACE), f'{key}.grace', source))
    until = value.get('until')
    if until is not None:
        until = _event_name(until, f'{key}.until', source)
        if until == event:
            raise RigConfigError(f'{key}.until', f'a command started at {event} cannot be stopped by {event}', source)
        if 'timeout' in value:
            raise RigConfigError(f'{key}.timeout', 'applies to quick commands only, not with until:', source)
    timeout = value.get('timeout')
    return Action(key, run=_command(value['run'], f'{key}.run', source), until=until,
                  grace=_seconds(value.get('grace', DEFAULT_GRACE), f'{key}.grace', source),
                  timeout=None if timeout is None else _seconds(timeout, f'{key}.timeout', source))


def _call(value: Any, key: str, source: Any) -> str:
    if not isinstance(value, str) or not _CALL_SPEC.match(value.strip()):
        raise RigConfigError(key, f'must look like package.module:function, not {value!r}', source)
    return value.strip()


def _seconds(value: Any, key: str, source: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise RigConfigError(key, f'must be a number of seconds above 0, not {_kind(value)}', source)
    return float(value)


def _command(value: Any, key: str, source: Any) -> tuple[str, ...] | str:
    """A list of arguments as a tuple; a string split like a shell would, except on Windows."""
    if isinstance(value, str) and value.strip():
        if os.name == 'nt':  # the system splits a command line on Windows; shlex would eat its backslashes
            command: tuple[str, ...] | str = value
        else:
            try:
                command = tuple(shlex.split(value))
            except ValueError as ex:
                raise RigConfigError(key, f'cannot split the command line: {ex}', source) from None
    elif isinstance(value, list) and value and all(_is_scalar(part) for part in value):
        command = tuple(str(part) for part in value)
    else:
        raise RigConfigError(key, f'must be a command line or a list of arguments, not {_kind(value)}', source)
    for part in ([command] if isinstance(command, str) else command):
        _check_placeholders(part, key, source)
    return command


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _check_placeholders(template: str, key: str, source: Any) -> None:
    """Refuse braces that ``str.format`` cannot read, and positional fields such as ``{}``."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as ex:
        raise RigConfigError(key, f'bad placeholder in {template!r}: {ex} (write {{{{ and }}}} for braces)',
                             source) from None
    for name in fields:
        if not name or name.isdigit():
            raise RigConfigError(key, f'placeholders must be named, e.g. {{exp_ref}}, in {template!r}', source)
