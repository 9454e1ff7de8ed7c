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

What comes from the network is data: :class:`ValueRules` checks the experiment reference and
every value a placeholder takes before anything runs, and a placeholder inside a shell's or
interpreter's script text (``[sh, -c, "cp {exp_ref} /data"]``) is refused here, at start-up,
with the safe form in the message (the value as an argument after the script).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import os
import re
import shlex
import socket
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from iblutil.io.net.base import LISTEN_PORT, ExpMessage

from . import protocol
from .config import ConfigError
from .logtext import peer_text

__all__ = ['DEFAULT_GRACE', 'DEFAULT_PATTERN', 'EVENTS', 'EXAMPLE_CONFIG', 'MAX_VALUE_LENGTH', 'SPECIAL_CHARACTERS',
           'Action', 'Network', 'RigConfig', 'RigConfigError', 'ValueRefused', 'ValueRules', 'load_config',
           'parse_config', 'placeholders']

EVENTS = tuple(event.name for event in ExpMessage)
"""tuple of str: the event names an ``on:`` mapping may use."""
DEFAULT_GRACE = 5.0
"""float: seconds a child is given to stop after the polite stop, before it is terminated."""
_TOP_KEYS = ('name', 'listen', 'main_sync', 'exp_ref', 'experiment_description', 'subject_pattern', 'value_pattern',
             'allow', 'on')
_ACTION_KEYS = ('run', 'call', 'until', 'grace', 'timeout', 'cwd')
_CALL_SPEC = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$')
_WINDOWS = os.name == 'nt'  # where a string command is handed to the system as it is (tests set it)

DEFAULT_PATTERN = r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}'
"""str: what a subject, and any other value from the network, may look like by default: 1 to 64 letters,
digits, ``_``, ``-`` and ``.``, not starting with ``-`` or ``.`` (``subject_pattern:``, ``value_pattern:``)."""
MAX_VALUE_LENGTH = 255
"""int: the longest value any pattern lets through (the longest file name of most file systems)."""
SPECIAL_CHARACTERS = '/\\:*?"<>|\'`$;&%!^(){}[],=~#'
"""str: characters that no value may contain, whatever the pattern: paths, shells and batch files read them."""
_DEVICE_NAME = re.compile(r'(CON|PRN|AUX|NUL|COM[0-9\u00b9\u00b2\u00b3]|LPT[0-9\u00b9\u00b2\u00b3])(\..*)?',
                          re.IGNORECASE)
_DATE = re.compile(r'[0-9]{4}-[0-9]{2}-[0-9]{2}')
_SEQUENCE = re.compile(r'[1-9][0-9]{0,8}')
_REFERENCE_RULE = 'must be DATE_SEQUENCE_SUBJECT like 2026-11-24_1_mouse, or a mapping of date, sequence and subject'

EXAMPLE_CONFIG = f"""\
# iblnet-rig: what this acquisition PC does when the main rig (the behaviour task) sends
# each event of an experiment. Start it with:  iblnet-rig THIS_FILE.yaml
name: cameras                      # this rig's name, in logs and in its EXPINFO answer
listen: udp://0.0.0.0:{LISTEN_PORT}        # where to listen ({LISTEN_PORT} is iblrig's port)
main_sync: true                    # this rig decides the experiment reference (numbers the
                                   # sessions); false when the task or another rig does
# exp_ref: 2026-11-24_1_mouse      # a fixed reference to report in EXPINFO (main sync only)
# allow: [192.168.1.10, 10.0.0.0/24]   # the hosts or networks (CIDR) from which a main rig may drive this rig
# subject_pattern: '{DEFAULT_PATTERN}'   # what a subject may look like (a regular expression)
# value_pattern: '{DEFAULT_PATTERN}'     # what other values may look like (default: subject_pattern)

# For each event ({', '.join(EVENTS)}):
# one action, or a list of actions done in order. An action is one of
#   run:  a command line, a list or a string (no shell: pipes and redirections do nothing).
#         Placeholders: {{exp_ref}} {{subject}} {{date}} {{sequence}} {{event}}, and the keys of
#         the dictionary the main rig sent; write {{{{ and }}}} for literal braces.
#         Values from the network are data: checked before anything runs (a reference is
#         DATE_SEQUENCE_SUBJECT; a value is one word of letters, digits, _ - and . that does
#         not start with - or .), anything else is refused and reported to the main rig.
#         For a shell, pass values as arguments after the script, never inside it:
#           run: [sh, -c, 'cp "$1" /data', sh, '{{exp_ref}}']
#         A quick command runs to its end: a non-zero exit status reaches the main rig as an
#         error with the end of the command's stderr.
#         timeout: SECONDS  stops a quick command that takes longer, and reports it.
#         cwd: FOLDER  where the command starts (relative to this file's folder); by default
#         this file's folder, whatever folder the agent was started from.
#         until: EVENT  makes it long-running instead: started at this event, stopped at
#         EVENT and at EXPINTERRUPT: Ctrl-C first (Ctrl-Break on Windows), then terminated
#         after `grace` seconds (default {DEFAULT_GRACE:g}).
#   call: package.module:function  called with the message data; what it returns is sent
#         back to the main rig. The module must be importable, or sit next to this file.
# At start-up every run: program must be found (on PATH, or relative to the command's
# folder for a path such as ./copy.sh) and every call: must import, or the agent refuses
# to start and names each one that cannot.
on:
  EXPINIT:
    run: [python, -c, "import sys; print('preparing', sys.argv[1])", "{{exp_ref}}"]
  EXPSTART:                        # a stand-in recorder; a real one, e.g.:
    # run: [bonsai, C:/rigs/record.bonsai, --start, "-p:Session={{exp_ref}}"]
    run: [python, -c, "import sys, time; print('recording', sys.argv[1], flush=True); time.sleep(86400)", "{{exp_ref}}"]
    until: EXPEND
    grace: 10
  EXPEND:                          # e.g. run: [python, copy_videos.py, "{{subject}}", "{{date}}", "{{sequence}}"]
    run: [python, -c, "import sys; print('copying', sys.argv[1:])", "{{subject}}", "{{date}}", "{{sequence}}"]
    timeout: 8                     # the main rig waits for the answer (10 s by default)
  # EXPCLEANUP:
  #   call: mylab.cameras:cleanup
"""


class RigConfigError(ConfigError):
    """A rig agent configuration that cannot be used; the message is one line naming the file and the key.

    Parameters
    ----------
    key : str
        The offending key, e.g. ``'on.EXPSTART.until'``; empty when the file itself is unreadable.
    problem : str
        What is wrong, in words (spaces and line breaks are squeezed into one line).
    source : str, PathLike, optional
        The file's name, put first in the message.
    details : str
        Lines that follow the message as they are, e.g. a YAML error's lines with their caret.

    Attributes
    ----------
    key, problem, source
        As given (`problem` squeezed into one line).
    """

    def __init__(self, key: str, problem: str, source: str | os.PathLike | None = None, details: str = ''):
        self.key, self.problem, self.source = key, ' '.join(problem.split()), source
        where = ': '.join(str(part) for part in (source, key) if part)
        message = ' '.join(f'{where}: {problem}'.split()) if where else self.problem
        super().__init__(f'{message}\n{details}' if details else message)


class ValueRefused(ValueError):
    """A value from the network that the rig will not use; the message names the key and the rule.

    Raised before anything runs, so the main rig gets ``[0, "ValueRefused: KEY: RULE, not 'VALUE'", EVENT]``.
    """


def _describe(pattern: re.Pattern) -> str:
    if pattern.pattern == DEFAULT_PATTERN:
        return f'{DEFAULT_PATTERN} (1 to 64 letters, digits, _, - or ., not starting with - or .)'
    return pattern.pattern


@dataclass(frozen=True)
class ValueRules:
    """What the experiment reference and the values of placeholders may look like.

    Whatever the patterns say, a value is at most :data:`MAX_VALUE_LENGTH` characters, does
    not start with ``-`` (it would become an option) or ``.`` (a hidden or parent folder), and
    contains no space, control character, path separator, drive colon or
    :data:`SPECIAL_CHARACTERS`, and is no Windows device name (``NUL``, ``COM1``): so it stays
    one argument, one file name, and one log line, whatever the command does with it.

    Attributes
    ----------
    subject_pattern : re.Pattern
        What the subject of a reference must match in full.
    value_pattern : re.Pattern
        What any other value a placeholder takes must match in full.

    Examples
    --------
    >>> ValueRules().reference('2026-11-24_3_mouse')['sequence']
    3
    >>> ValueRules().value('camera', '--output=elsewhere')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    iblnet_sync.rig_config.ValueRefused: camera: may not start with - or . (it would become an option, ...
    """

    subject_pattern: re.Pattern = re.compile(DEFAULT_PATTERN)
    value_pattern: re.Pattern = re.compile(DEFAULT_PATTERN)

    def text(self, key: str, text: str, pattern: re.Pattern, what: str = '') -> str:
        """Return `text` if it keeps the fixed rules and matches `pattern`; else raise :class:`ValueRefused`.

        Parameters
        ----------
        key : str
            The key to name in the message, e.g. ``'exp_ref'``.
        text : str
            The value.
        pattern : re.Pattern
            What it must match in full.
        what : str
            What the value is within `key`, e.g. ``'the subject'``.
        """
        rule = _broken_rule(text) or (None if pattern.fullmatch(text) else f'must match {_describe(pattern)}')
        if rule:
            raise ValueRefused(f"{key}: {what + ' ' if what else ''}{rule}, not '{peer_text(text, 80)}'")
        return text

    def value(self, key: str, value: Any) -> str:
        """A value from the main rig's dictionary as a placeholder's text: a text or a number, checked.

        Raises
        ------
        ValueRefused
            Not a text or a number (None, a list, a mapping), or a text the rules refuse.
        """
        key = peer_text(key, 80)  # a key of the main rig's dictionary
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueRefused(f'{key}: must be a text or a number, not {_kind(value)}')
        return self.text(key, str(value), self.value_pattern)

    def reference(self, value: Any, key: str = 'exp_ref') -> dict:
        """Parse an experiment reference strictly.

        Parameters
        ----------
        value : str, dict
            ``'YYYY-MM-DD_N_SUBJECT'``, or a mapping with ``date`` (text or date), ``sequence`` and ``subject``.
        key : str
            The key to name in messages.

        Returns
        -------
        dict
            ``{'subject': str, 'date': datetime.date, 'sequence': int}``.

        Raises
        ------
        ValueRefused
            Not of that form; a date that is not a real date written YYYY-MM-DD; a sequence
            that is not a whole number from 1; a subject the rules refuse.
        """
        if isinstance(value, str):
            parts = value.split('_', 2)
            if len(parts) != 3:
                raise ValueRefused(f"{key}: {_REFERENCE_RULE}, not '{peer_text(value, 80)}'")
            date, sequence, subject = parts
        elif isinstance(value, Mapping) and {'date', 'sequence', 'subject'} <= set(value):
            date, sequence, subject = value['date'], value['sequence'], value['subject']
        else:
            raise ValueRefused(f'{key}: {_REFERENCE_RULE}, not {_kind(value)}')
        return {'subject': self._subject(key, subject), 'date': _date(key, date), 'sequence': _sequence(key, sequence)}

    def _subject(self, key: str, subject: Any) -> str:
        if not isinstance(subject, str):
            raise ValueRefused(f'{key}: the subject must be a text, not {_kind(subject)}')
        return self.text(key, subject, self.subject_pattern, 'the subject')


def _broken_rule(text: str) -> str | None:
    """The fixed rule that `text` breaks, in words, or None."""
    if not text:
        return 'may not be empty'
    if len(text) > MAX_VALUE_LENGTH:
        return f'may have at most {MAX_VALUE_LENGTH} characters (it has {len(text):,})'
    if text[0] in '-.':
        return 'may not start with - or . (it would become an option, or a hidden or parent folder)'
    if any(char.isspace() or not char.isprintable() for char in text):
        return 'may not contain spaces or control characters (they split arguments and forge log lines)'
    if any(char in '/\\:' for char in text):
        return 'may not contain /, \\ or : (it would become a path)'
    if any(char in SPECIAL_CHARACTERS for char in text):
        return f'may not contain any of {SPECIAL_CHARACTERS} (shells and batch files read them)'
    if _DEVICE_NAME.fullmatch(text.rstrip('. ')):
        return 'may not be a Windows device name such as NUL or COM1'
    return None


def _date(key: str, value: Any) -> datetime.date:
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    shown = f"'{peer_text(value, 40)}'" if isinstance(value, str) else _kind(value)
    raise ValueRefused(f'{key}: the date must be a real date written YYYY-MM-DD, not {shown}')


def _sequence(key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 10 ** 9:
        return value
    if isinstance(value, str) and _SEQUENCE.fullmatch(value):
        return int(value)
    shown = f"'{peer_text(value, 40)}'" if isinstance(value, str) else _kind(value)
    raise ValueRefused(f'{key}: the sequence must be a whole number from 1 (no sign, no leading zero), not {shown}')


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


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
    cwd : str, None
        The folder the command starts in, as written (relative to the file's folder); None for
        the file's folder (see :meth:`RigConfig.working_directory`).
    """

    key: str
    run: tuple[str, ...] | str | None = None
    call: str | None = None
    until: str | None = None
    grace: float = DEFAULT_GRACE
    timeout: float | None = None
    cwd: str | None = None


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
    """The folder of the file, if any: modules of ``call`` actions may sit there, and ``run`` commands start there."""
    rules: ValueRules = field(default_factory=ValueRules)
    """What the reference and the values of placeholders may look like (``subject_pattern``, ``value_pattern``)."""
    allow: tuple[Network, ...] | None = None
    """The networks from which a main rig may drive this rig (``allow:``); None: any host."""
    file: str | None = None
    """The file's name as given (for messages); None when the content did not come from a file."""

    def working_directory(self, action: Action) -> Path | None:
        """The folder where a ``run`` action's command starts.

        Parameters
        ----------
        action : Action
            One of this configuration's actions.

        Returns
        -------
        Path, None
            The action's ``cwd`` (``~`` expanded) relative to the file's folder; else the file's
            folder; None (the agent's own working directory) for a configuration without a file
            and without ``cwd``.

        Examples
        --------
        >>> config = RigConfig('cameras', folder=Path('/rigs'))
        >>> config.working_directory(Action('on.EXPEND', run=('ls',), cwd='videos')).as_posix()
        '/rigs/videos'
        """
        if action.cwd is None:
            return self.folder
        cwd = Path(action.cwd).expanduser()
        return self.folder / cwd if self.folder is not None else cwd

    @property
    def has_actions(self) -> bool:
        """Whether any event has an action (without any, the rig only answers: status, info)."""
        return any(self.on.values())


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
        first, _, rest = _yaml_error_text(ex, path).partition('\n')
        raise RigConfigError('', f'not valid YAML: {first}', path, details=rest) from None
    return dataclasses.replace(parse_config(content, overrides, source=path), folder=Path(path).resolve().parent,
                               file=str(path))


def _yaml_error_text(error: Exception, path: str | os.PathLike) -> str:
    """A YAML error as PyYAML writes it (its lines, columns and carets), naming `path` instead of a string."""
    for name in ('context_mark', 'problem_mark'):
        mark = getattr(error, name, None)
        if mark is not None and hasattr(mark, 'name'):
            mark.name = str(path)
    if hasattr(error, 'position') and hasattr(error, 'name'):  # a ReaderError: a character YAML refuses
        error.name = str(path)
    return str(error).strip()


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
    subject_pattern = _pattern(content.get('subject_pattern', DEFAULT_PATTERN), 'subject_pattern', source)
    rules = ValueRules(subject_pattern, _pattern(content['value_pattern'], 'value_pattern', source)
                       if 'value_pattern' in content else subject_pattern)
    return RigConfig(
        name=_name(content.get('name', socket.gethostname()), source),
        listen=_listen(content.get('listen', RigConfig.listen), source),
        main_sync=_boolean(content.get('main_sync', False), 'main_sync', source),
        exp_ref=_exp_ref(content.get('exp_ref'), rules, source),
        experiment_description=_mapping(content.get('experiment_description') or {}, 'experiment_description',
                                        source),
        on=_events(content.get('on') or {}, source),
        rules=rules,
        allow=_allow(content.get('allow'), source),
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


def _exp_ref(value: Any, rules: ValueRules, source: Any) -> str | None:
    if value is None:
        return None
    try:
        return protocol.exp_ref_to_str(rules.reference(str(value)))
    except ValueRefused as ex:
        raise RigConfigError('exp_ref', f'{str(ex).partition(": ")[2]} (like 2026-11-24_1_mouse)', source) from None


def _pattern(value: Any, key: str, source: Any) -> re.Pattern:
    if not isinstance(value, str) or not value:
        raise RigConfigError(key, f'must be a regular expression, not {_kind(value)}', source)
    try:
        return re.compile(value)
    except re.error as ex:
        raise RigConfigError(key, f'not a regular expression: {ex}', source) from None


_LOCALHOST = (ipaddress.ip_network('127.0.0.0/8'), ipaddress.ip_network('::1/128'))


def _allow(value: Any, source: Any) -> tuple[Network, ...] | None:
    """The networks of ``allow:``: IP addresses, networks written in CIDR, ``localhost``; None when not given."""
    if value is None:
        return None
    listed = value if isinstance(value, list) else [value]
    if not listed:
        raise RigConfigError('allow', 'an empty list would let no main rig drive this rig; remove the key to let any '
                             'host drive it', source)
    networks: list[Network] = []
    for index, item in enumerate(listed):
        key = f'allow[{index}]' if isinstance(value, list) else 'allow'
        text = item.strip() if isinstance(item, str) else None
        if text is not None and text.lower() == 'localhost':
            networks.extend(_LOCALHOST)
            continue
        try:
            networks.append(ipaddress.ip_network(text or '', strict=True))
        except ValueError:
            hint = ''
            with contextlib.suppress(ValueError):
                hint = f' (the network of {text} is {ipaddress.ip_network(text or "", strict=False)})'
            raise RigConfigError(key, f'must be an IP address, a network such as 192.168.1.0/24, or localhost, not '
                                 f'{_kind(item)}{hint}; host names are not accepted (their address can change)',
                                 source) from None
    return tuple(dict.fromkeys(networks))


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
        for option in ('until', 'timeout', 'cwd'):
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
                  timeout=None if timeout is None else _seconds(timeout, f'{key}.timeout', source),
                  cwd=_folder(value.get('cwd'), f'{key}.cwd', source))


def _folder(value: Any, key: str, source: Any) -> str | None:
    """A ``cwd:`` as written: a folder name (a placeholder there would let the network choose a folder)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RigConfigError(key, f'must be a folder, relative to the file\'s folder or absolute, not {_kind(value)}',
                             source)
    if '{' in value or '}' in value:
        raise RigConfigError(key, f'takes no placeholders (a value from the network never chooses the folder), '
                             f'not {value!r}', source)
    return value.strip()


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
        if _WINDOWS:  # the system splits a command line on Windows; shlex would eat its backslashes
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
    _check_scripts(_windows_split(command) if isinstance(command, str) else command, key, source)
    return command


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def placeholders(command: Sequence[str] | str) -> set[str]:
    """The names of the placeholders in a command (checked by :func:`parse_config`), e.g. ``{'exp_ref'}``."""
    parts = [command] if isinstance(command, str) else command
    return {name for part in parts for _, name, _, _ in string.Formatter().parse(part) if name}


def _check_placeholders(template: str, key: str, source: Any) -> None:
    """Refuse braces that ``str.format`` cannot read, positional fields such as ``{}``, and attributes or indexes."""
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as ex:
        raise RigConfigError(key, f'bad placeholder in {template!r}: {ex} (write {{{{ and }}}} for braces)',
                             source) from None
    for name, spec in fields:
        if not name or name.isdigit():
            raise RigConfigError(key, f'placeholders must be named, e.g. {{exp_ref}}, in {template!r}', source)
        if any(char in name for char in '.[') or '{' in (spec or ''):
            raise RigConfigError(key, f'placeholders are plain names such as {{exp_ref}} or {{exp_ref:>20}}, not '
                                 f'{{{name}}} in {template!r}', source)


def _windows_split(line: str) -> tuple[str, ...]:
    """A Windows command line's words, near enough to find the program and its options (quotes removed)."""
    try:
        words = shlex.split(line, posix=False)
    except ValueError:  # an unbalanced quote
        words = line.split()
    return tuple(word[1:-1] if len(word) > 1 and word[0] == word[-1] == '"' else word for word in words)


# --- programs that read an argument as code: a placeholder there would make a value code ---
@dataclass(frozen=True)
class _Runner:
    """How a program's options say where its script text is.

    ``code``: letters of options followed by code (``-c``); ``glued``: whether the code may be
    glued to its letter (``-cprint(1)``); ``value``: letters followed by a value, glued or as
    the next argument (``-o pipefail``); ``glued_value``: letters whose value can only be glued
    (perl's ``-Idir``); ``stop``: letters after which the rest are the program's arguments
    (``python -m module``); ``long_code``: long options followed by code; ``plus``: options
    may start with ``+`` too; ``example``: the safe form, with values read as arguments.
    """

    code: str
    example: tuple[str, ...]
    glued: bool = False
    value: str = ''
    glued_value: str = ''
    stop: str = ''
    long_code: tuple[str, ...] = ()
    plus: bool = False


_SHELL = _Runner('c', (), value='oO', long_code=('--command', '--init-command'), plus=True)
_RUNNERS = {
    **{name: _SHELL for name in ('sh', 'bash', 'dash', 'zsh', 'ksh', 'mksh', 'ash', 'yash', 'fish', 'csh', 'tcsh')},
    'python': _Runner('c', ('python', '-c', 'import sys; print(sys.argv[1])', '{exp_ref}'), glued=True, value='WX',
                      stop='m'),
    'perl': _Runner('eE', ('perl', '-e', 'print $ARGV[0]', '{exp_ref}'), glued=True, glued_value='IMmxCdDil0V'),
    'ruby': _Runner('e', ('ruby', '-e', 'puts ARGV[0]', '{exp_ref}'), glued=True, value='IrCE', glued_value='xWTF0Kl'),
    'node': _Runner('ep', ('node', '-e', 'console.log(process.argv[1])', '{exp_ref}'), value='r',
                    long_code=('--eval', '--print')),
    'rscript': _Runner('e', ('Rscript', '-e', 'print(commandArgs(trailingOnly = TRUE)[1])', '{exp_ref}')),
    'php': _Runner('r', ('php', '-r', 'echo $argv[1];', '{exp_ref}')),
    'osascript': _Runner('e', ('osascript', '-e', 'on run argv', '-e', 'return item 1 of argv', '-e', 'end run',
                               '{exp_ref}')),
}
_PROGRAM_VERSION = re.compile(r'(python|pythonw|pypy|perl|ruby|node|php)[0-9.]*w?')
_POWERSHELL_VALUES = ('executionpolicy', 'ep', 'ex', 'windowstyle', 'w', 'version', 'v', 'psconsolefile',
                      'outputformat', 'o', 'of', 'inputformat', 'if', 'in', 'configurationname', 'config',
                      'workingdirectory', 'wd', 'settingsfile', 'settings', 'custompipename')
_CMD_EXAMPLE = "put the commands in a .bat file and pass the values as its arguments (%1, %2 in the file; the " \
               "values never contain characters that cmd reads), e.g. ['C:/rigs/copy.bat', '{exp_ref}']"
_POWERSHELL_EXAMPLE = "run a script file with the values as its arguments ($args[0] or param() in the file), e.g. " \
                      "[powershell, -File, C:/rigs/copy.ps1, '{exp_ref}'], or with PowerShell 7.4: " \
                      "[pwsh, -CommandWithArgs, 'Copy-Item $args[0] D:/data', '{exp_ref}']"


def _program(word: str) -> str:
    """A program's name without folder, case or .exe: ``C:\\Python311\\python.exe`` is ``python``."""
    name = re.split(r'[\\/]', word)[-1].lower()
    name = name[:-4] if name.endswith(('.exe', '.com')) else name
    match = _PROGRAM_VERSION.fullmatch(name)
    return 'python' if name == 'py' or (match and match.group(1) in ('python', 'pythonw', 'pypy')) else \
        match.group(1) if match else name


def _check_scripts(parts: Sequence[str], key: str, source: Any) -> None:
    """Refuse a placeholder in a script's text, wherever a shell or interpreter sits in the command."""
    for start, word in enumerate(parts):
        program = _program(word)
        args = parts[start + 1:]
        if program in _RUNNERS:
            end = _script_end(_RUNNERS[program], args)
        elif program == 'cmd':
            end = _cmd_script_end(args)
        elif program in ('powershell', 'pwsh'):
            end = _powershell_script_end(program, args)
        else:
            continue
        if end is None:
            continue
        script = parts[start:start + 1 + end + 1]
        named = [name for part in script for name in sorted(placeholders(part))]
        if named:
            raise RigConfigError(key, f'{{{named[0]}}} is inside the script text that {program} runs: a value there '
                                 f'would be read as code; {_safe_form(program, parts, start, start + 1 + end)}', source)


def _script_end(runner: _Runner, args: Sequence[str]) -> int | None:
    """The index in `args` of the last argument that is code, or None if the program runs no code of ours."""
    last = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ('-', '--') or not arg.startswith(('-', '+') if runner.plus else '-'):
            break  # the first operand: the rest are the script's (or the program's) arguments
        if arg.startswith('--'):
            name, equals, _ = arg.partition('=')
            if name in runner.long_code:
                last = index if equals else index + 1
                index += 0 if equals else 1
            index += 1
            continue
        letters = arg[1:]
        for position, letter in enumerate(letters):
            rest = letters[position + 1:]
            if letter in runner.code:
                last = index if rest and runner.glued else index + 1
                index += 0 if rest and runner.glued else 1
                break
            if letter in runner.value:
                index += 0 if rest else 1
                break
            if letter in runner.glued_value:
                break
            if letter in runner.stop:
                return last
        index += 1
    return last


def _cmd_script_end(args: Sequence[str]) -> int | None:
    """cmd reads everything from ``/c`` (or ``/k``) on as its script."""
    for arg in args:
        if not arg.startswith('/'):
            return None
        if arg[1:2].lower() in ('c', 'k'):
            return len(args) - 1
    return None


def _powershell_script_end(program: str, args: Sequence[str]) -> int | None:
    """PowerShell reads everything after ``-Command`` as its script (and Windows PowerShell a first operand)."""
    skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if not arg.startswith(('-', '/')):
            return len(args) - 1 if program == 'powershell' else None  # powershell's default is -Command
        name = arg[1:].lower().partition(':')[0]
        if name in ('commandwithargs', 'cwa'):
            return index + 1  # its code, then the arguments it reads as $args
        if name in _POWERSHELL_VALUES:
            skip = True
        elif name and ('command'.startswith(name) or name in ('e', 'ec') or
                       (len(name) > 1 and 'encodedcommand'.startswith(name))):
            return len(args) - 1
        elif name and 'file'.startswith(name):
            return None
    return None


def _safe_form(program: str, parts: Sequence[str], start: int, script: int) -> str:
    """The message's advice: the same command with the values as arguments after the script."""
    if program == 'cmd':
        return _CMD_EXAMPLE
    if program in ('powershell', 'pwsh'):
        return _POWERSHELL_EXAMPLE
    if _RUNNERS[program] is not _SHELL:
        return 'pass the values as arguments after the code and read them there (sys.argv, $ARGV...), e.g. ' + \
            _flow(_RUNNERS[program].example)
    names: list[str] = []
    after = list(parts[script + 1:])
    shift = max(len(after) - 1, 0)  # positional arguments already there: $1 ... $shift
    text = []
    for literal, name, spec, conversion in string.Formatter().parse(parts[script]):
        text.append(literal.replace('{', '{{').replace('}', '}}'))
        if name is not None:
            field_text = '{' + name + ('!' + conversion if conversion else '') + (':' + spec if spec else '') + '}'
            if field_text not in names:
                names.append(field_text)
            text.append(f'"${shift + names.index(field_text) + 1}"')
    safe = [*parts[:script], ''.join(text), *(after or [_program(parts[start])]), *names]
    return 'pass the values as the shell\'s arguments instead, e.g. ' + _flow(safe)


def _flow(words: Sequence[str]) -> str:
    """A list as YAML writes it on one line: ``[sh, -c, cp "$1" /data, sh, '{exp_ref}']``."""
    import yaml
    return yaml.safe_dump(list(words), default_flow_style=True, width=10 ** 6).strip()
