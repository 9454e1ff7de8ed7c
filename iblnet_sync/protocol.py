"""The wire format: pure functions between Python values and datagrams, no sockets.

Every function here produces the exact bytes that ``iblutil.io.net`` sends for the same
call, so a rig running iblutil cannot tell the two libraries apart.

Examples
--------
>>> start_message('2026-11-24_3_mouse')
b'[2, "2026-11-24_3_mouse", null]'
>>> decode(b'[32, 20]')
Message(event=<ExpMessage.EXPSTATUS: 32>, data=[20])
"""
from __future__ import annotations

import datetime
import json
from typing import Any, NamedTuple

from urllib.parse import urlparse

from iblutil.io.net.base import LISTEN_PORT, ExpMessage, ExpStatus, validate_uri

__all__ = [
    'DecodeError', 'Message', 'ERROR_CODE', 'MAX_DATAGRAM', 'as_event', 'as_status',
    'encode', 'decode', 'respell', 'is_resend', 'announces_resends', 'RESENDS_KEY', 'rig_address',
    'init_message', 'start_message', 'stop_message',
    'cleanup_message', 'status_message', 'info_message', 'alyx_message', 'gives_token', 'error_report',
    'exp_ref_to_str', 'exp_ref_to_dict',
]

ERROR_CODE = 0
"""int: event code of an error report ``[0, "Type: message", EVENT]``; never echoed."""
MAX_DATAGRAM = 65535
"""int: the largest datagram expected (the UDP maximum)."""


_SINGLE_EVENTS = {int(e): e for e in ExpMessage}
_ALL_EVENTS = int(ExpMessage.any())


class DecodeError(ValueError):
    """A datagram that is not a protocol message (not UTF-8 JSON, not an array, bad code)."""


class Message(NamedTuple):
    """A decoded datagram.

    Attributes
    ----------
    event : ExpMessage
        The event code; ``ExpMessage(0)`` for an error report.
    data : list
        The elements after the event code, as the main side reports a response.
    """

    event: ExpMessage
    data: list


def as_event(event: ExpMessage | int | str, allow_compound: bool = False) -> ExpMessage:
    """Return `event` as an ``ExpMessage``, accepting an enum, an int or a name in any case.

    Parameters
    ----------
    event : ExpMessage, int, str
        The event, e.g. ``ExpMessage.EXPSTART``, ``2`` or ``'expstart'``.
    allow_compound : bool
        Whether OR-ed flags (only meaningful when registering callbacks) are accepted.

    Returns
    -------
    ExpMessage
        The validated event.

    Raises
    ------
    TypeError
        `event` is neither an ExpMessage, an int nor a str.
    ValueError
        No such event, or a compound event where a single one is required.
    """
    if isinstance(event, int) and not isinstance(event, bool) and event in _SINGLE_EVENTS:  # fast path
        return _SINGLE_EVENTS[event]
    if isinstance(event, bool):
        raise TypeError(f'Unknown event type {type(event).__name__}')
    try:
        checked = ExpMessage.validate(event, allow_bitwise=allow_compound)
    except ValueError as ex:
        raise ValueError(f'Unknown or compound event {event!r}: {ex}') from None
    if checked.value == 0 or checked.value & ~_ALL_EVENTS:
        raise ValueError(f'Unknown event {event!r}; choices: {[e.name for e in ExpMessage]}')
    return checked


def as_status(status: ExpStatus | int | str) -> ExpStatus:
    """Return `status` as an ``ExpStatus`` (enum, int or name in any case).

    Raises
    ------
    ValueError
        No such status.
    """
    try:
        if isinstance(status, str):
            return ExpStatus[status.strip().upper()]
        return ExpStatus(status)
    except (KeyError, ValueError):
        raise ValueError(f'Unknown status {status!r}; choices: {[s.name for s in ExpStatus]}') from None


def encode(event: ExpMessage | int, *fields: Any) -> bytes:
    """Encode one message as ``json.dumps`` does by default, the way iblutil sends it.

    Parameters
    ----------
    event : ExpMessage, int
        A single event code (or 0 for an error report).
    *fields
        The JSON-serialisable elements that follow the code.

    Returns
    -------
    bytes
        The UTF-8 datagram.

    Raises
    ------
    TypeError
        A field is not JSON-serialisable (raised before anything is sent).
    ValueError
        An unknown or compound event, or the datagram would exceed the UDP maximum of 65535 bytes.
    """
    if event != ERROR_CODE:
        event = as_event(event)  # one event only: OR-ed flags never go on the wire
    try:
        text = json.dumps([int(event), *fields])
    except (TypeError, ValueError) as ex:
        raise TypeError(f'Message data must be JSON-serialisable: {ex}') from None
    datagram = text.encode()
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError(f'Message of {len(datagram)} bytes exceeds the UDP maximum of {MAX_DATAGRAM}')
    return datagram


RESENDS_KEY = 'resends'
"""str: the key of EXPINFO's info by which a peer says it takes resends (iblnet_sync sets it)."""


def respell(datagram: bytes, sender: str = 'main') -> bytes:
    """Return the same message in another JSON spelling, for a resend.

    A resend must be told apart from the original's echo, from a response with the same bytes,
    and the two sides' resends from each other. So the main side resends the original followed
    by a tab, the rig side followed by a space: no JSON encoder writes either, both decode to
    the same value, and iblutil echoes them unchanged.

    Parameters
    ----------
    datagram : bytes
        The original datagram.
    sender : {'main', 'rig'}
        Which side resends.
    """
    return datagram + (b' ' if sender == 'rig' else b'\t')


def is_resend(datagram: bytes, sender: str = 'main') -> bool:
    """True if `datagram` is spelled as a resend by `sender` (see :func:`respell`)."""
    return datagram.endswith(b' ' if sender == 'rig' else b'\t')


def announces_resends(message: Message) -> bool:
    """True for an EXPINFO message whose info says its sender takes resends."""
    info = message.data[1] if message.event is ExpMessage.EXPINFO and len(message.data) > 1 else None
    return isinstance(info, dict) and info.get(RESENDS_KEY) is True


def rig_address(uri: str, allow_any_port: bool = False) -> tuple[str, int]:
    """The (IP address, port) of a rig's URI, validated with iblutil's ``validate_uri``.

    Parameters
    ----------
    uri : str
        ``udp://host:port``, ``host:port`` or ``host`` (port 11001); host names are resolved.
    allow_any_port : bool
        Accept port 0 (a listening rig lets the system choose), which ``validate_uri`` refuses.

    Raises
    ------
    ValueError, TypeError
        Not a valid UDP URI.
    """
    parsed = urlparse(uri if '://' in str(uri) else f'udp://{uri}')
    if parsed.scheme != 'udp':
        raise ValueError(f'Only udp:// is supported, not {uri!r}')
    any_port = allow_any_port and parsed.port == 0
    checked = urlparse(validate_uri(f'udp://{parsed.hostname}:{LISTEN_PORT}' if any_port else uri))
    return checked.hostname, 0 if any_port else checked.port


def decode(datagram: bytes) -> Message:
    """Decode a datagram into a :class:`Message`.

    Parameters
    ----------
    datagram : bytes
        The received bytes.

    Returns
    -------
    Message
        The event and the remaining elements.

    Raises
    ------
    DecodeError
        Not UTF-8 JSON, not an array of at least two elements, or an unknown or compound code.
    """
    try:
        value = json.loads(datagram.decode())  # decoding first skips json's encoding detection
    except (UnicodeDecodeError, ValueError) as ex:
        raise DecodeError(f'not UTF-8 JSON ({ex})') from None
    except RecursionError:
        raise DecodeError('JSON nested too deeply') from None
    if not isinstance(value, list) or len(value) < 2:
        raise DecodeError(f'expected a JSON array of at least two elements, got {type(value).__name__}')
    code = value[0]
    if type(code) is not int:
        raise DecodeError(f'event code must be an integer, got {code!r}')
    if code == ERROR_CODE:
        return Message(ExpMessage(0), value[1:])
    try:
        return Message(as_event(code), value[1:])
    except ValueError:
        raise DecodeError(f'unknown or compound event code {code}') from None


def exp_ref_to_str(exp_ref: str | dict | None) -> str | None:
    """Return an experiment reference as the string ``DATE_SEQUENCE_SUBJECT``.

    Parameters
    ----------
    exp_ref : str, dict, None
        A string (returned as it is), a dict with 'date', 'sequence' and 'subject', or None.

    Returns
    -------
    str, None
        E.g. ``'2026-11-24_3_mouse'``; None for an empty reference.

    Examples
    --------
    >>> exp_ref_to_str({'subject': 'mouse', 'date': datetime.date(2026, 11, 24), 'sequence': 3})
    '2026-11-24_3_mouse'
    """
    if not exp_ref:
        return None
    if isinstance(exp_ref, dict):
        return f"{exp_ref['date']}_{int(exp_ref['sequence'])}_{exp_ref['subject']}"
    if isinstance(exp_ref, str):
        return exp_ref
    raise TypeError(f'Experiment reference must be a str or dict, not {type(exp_ref).__name__}')


def exp_ref_to_dict(exp_ref: str | dict) -> dict:
    """Return an experiment reference as ``{'subject': str, 'date': date, 'sequence': int}``.

    Raises
    ------
    ValueError
        The reference is not of the form ``YYYY-MM-DD_N_SUBJECT``.
    """
    if isinstance(exp_ref, dict):
        ref = exp_ref
    else:
        try:
            date, sequence, subject = str(exp_ref).split('_', 2)
        except ValueError:
            raise ValueError(f'Experiment reference {exp_ref!r} is not YYYY-MM-DD_N_SUBJECT') from None
        ref = {'subject': subject, 'date': date, 'sequence': sequence}
    try:
        date = ref['date']
        if not isinstance(date, datetime.date):
            date = datetime.date.fromisoformat(str(date))
        return {'subject': str(ref['subject']), 'date': date, 'sequence': int(ref['sequence'])}
    except (KeyError, ValueError, TypeError):
        raise ValueError(f'Experiment reference {exp_ref!r} is not YYYY-MM-DD_N_SUBJECT') from None


def init_message(data: Any = None) -> bytes:
    """EXPINIT: ``[1, DATA]``."""
    return encode(ExpMessage.EXPINIT, data)


def start_message(exp_ref: str | dict | None, data: Any = None) -> bytes:
    """EXPSTART: ``[2, EXP_REF, DATA]`` with the reference as a string."""
    return encode(ExpMessage.EXPSTART, exp_ref_to_str(exp_ref), data)


def stop_message(data: Any = None, immediately: bool = False) -> bytes:
    """EXPEND ``[4, DATA]``, or EXPINTERRUPT ``[16, DATA]`` when `immediately`."""
    return encode(ExpMessage.EXPINTERRUPT if immediately else ExpMessage.EXPEND, data)


def cleanup_message(data: Any = None) -> bytes:
    """EXPCLEANUP: ``[8, DATA]``."""
    return encode(ExpMessage.EXPCLEANUP, data)


def status_message(status: ExpStatus | int | str) -> bytes:
    """EXPSTATUS: ``[32, STATUS]``."""
    return encode(ExpMessage.EXPSTATUS, int(as_status(status)))


def info_message(status: ExpStatus | int | str, data: Any = None) -> bytes:
    """EXPINFO: ``[64, STATUS, DATA]``."""
    return encode(ExpMessage.EXPINFO, int(as_status(status)), data)


def alyx_message(alyx: Any = None) -> bytes:
    """ALYX: ``[128, BASE_URL, {USER: TOKEN}]``, or the request ``[128, null, {}]``.

    Parameters
    ----------
    alyx : one.webclient.AlyxClient, optional
        A client whose token is sent when it is logged in; otherwise the token is requested.
    """
    base_url = getattr(alyx, 'base_url', None) if alyx else None
    logged_in = bool(alyx) and getattr(alyx, 'is_logged_in', False)
    token = {alyx.user: alyx._token} if logged_in else {}
    return encode(ExpMessage.ALYX, base_url, token)


def gives_token(datagram: bytes) -> bool:
    """True for an ALYX message that carries a token (answered by an echo only, not a response)."""
    message = decode(datagram)
    return message.event is ExpMessage.ALYX and bool(message.data[1:2] and message.data[1])


def error_report(error: BaseException, event: ExpMessage | int) -> bytes:
    """The report a receiver sends when its handler for `event` raised: ``[0, "Type: msg", EVENT]``."""
    return encode(ERROR_CODE, f'{type(error).__name__}: {error}', int(event))
