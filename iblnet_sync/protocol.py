"""The wire format: pure functions between Python values and datagrams, no sockets.

Every function here produces the bytes that ``iblutil.io.net`` sends for the same call, but
three, which MATLAB cannot read as iblutil writes them (Rigbox's Timeline listener, the main
sync of mesoscope rigs, decodes with ``jsondecode``, which turns an array of only numbers and
nulls into a numeric array that its code cannot index, and answers it with an error report):

==================  ====================  ======================  =============================
call                iblutil sends         iblnet_sync sends       why this spelling
==================  ====================  ======================  =============================
``stop()``          ``[4, null]``         ``[4, []]``             iblrig's own main sends it so
``cleanup()``       ``[8, null]``         ``[8, []]``             the same, for EXPCLEANUP
``status(S)``       ``[32, S]``           ``[32, S, {}]``         an object makes it a MATLAB cell
==================  ====================  ======================  =============================

An iblutil rig hands its callbacks ``[[]]`` or ``[S, {}]`` instead of ``[None]`` or ``[S]``;
rigs read neither (they answer with their own status). EXPINTERRUPT keeps iblutil's
``[16, {DETAILS}]`` (an object decodes fine); iblrig's main sends ``[16, [DETAILS]]``, which our
rigs read as the same details (:func:`details`).

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
    'encode', 'decode', 'loads', 'as_message', 'canonical', 'TooLarge', 'MAX_PAYLOAD', 'rig_address',
    'init_message', 'start_message', 'stop_message',
    'cleanup_message', 'status_message', 'info_message', 'alyx_message', 'gives_token', 'error_report',
    'exp_ref_to_str', 'exp_ref_to_dict', 'details', 'reported_request',
]

ERROR_CODE = 0
"""int: event code of an error report ``[0, "Type: message", EVENT]``; never echoed."""
MAX_DATAGRAM = 65535
"""int: the largest datagram that may arrive (the receive buffer size)."""


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
        An unknown or compound event.
    TooLarge
        The datagram would exceed the 65,507 bytes that a UDP datagram carries over IPv4.
    """
    if event != ERROR_CODE:
        event = as_event(event)  # one event only: OR-ed flags never go on the wire
    try:
        text = json.dumps([int(event), *fields])
    except (TypeError, ValueError) as ex:
        raise TypeError(f'Message data must be JSON-serialisable: {ex}') from None
    datagram = text.encode()
    if len(datagram) > MAX_PAYLOAD:
        raise TooLarge(f'Message of {len(datagram):,} bytes: a UDP datagram carries at most {MAX_PAYLOAD:,}')
    return datagram


MAX_PAYLOAD = 65507
"""int: the most bytes one UDP datagram can carry over IPv4 (65,535 minus IP and UDP headers)."""


class TooLarge(ValueError):
    """A message that no UDP datagram can carry."""


def canonical(message: Message) -> bytes:
    """The message as an encoder writes it: the same bytes for every spelling of the same value."""
    return json.dumps([int(message.event), *message.data]).encode()


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
    if not isinstance(uri, str):
        raise TypeError(f'A rig address must be a string like "udp://10.0.0.7:11001", not {type(uri).__name__}')
    text = uri.strip()
    if text.split('://', 1)[-1].count(':') > 1 or '[' in text:
        raise ValueError(f'{uri!r}: IPv6 addresses are not supported; give the rig\'s IPv4 address or host name')
    parsed = urlparse(text if '://' in text else f'udp://{text}')
    if parsed.scheme != 'udp':
        raise ValueError(f'{uri!r}: only udp:// is supported')
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f'{uri!r}: the port must be a number from 1 to 65535') from None
    if port == 0 and not allow_any_port:
        raise ValueError(f'{uri!r}: port 0 is not a rig\'s port; give the port the rig listens on '
                         f'({LISTEN_PORT} by default)')
    any_port = allow_any_port and port == 0
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
    return as_message(loads(datagram))


def loads(datagram: bytes) -> Any:
    """The JSON value of a datagram (raises :class:`DecodeError`)."""
    try:
        return json.loads(datagram.decode())  # decoding first skips json's encoding detection
    except (UnicodeDecodeError, ValueError) as ex:
        raise DecodeError(f'not UTF-8 JSON ({ex})') from None
    except RecursionError:
        raise DecodeError('JSON nested too deeply') from None


def as_message(value: Any) -> Message:
    """A decoded JSON value as a :class:`Message` (raises :class:`DecodeError` if it is none)."""
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
        given = ref['date']
        day = given if isinstance(given, datetime.date) else datetime.date.fromisoformat(str(given))
        return {'subject': str(ref['subject']), 'date': day, 'sequence': int(ref['sequence'])}
    except (KeyError, ValueError, TypeError):
        raise ValueError(f'Experiment reference {exp_ref!r} is not YYYY-MM-DD_N_SUBJECT') from None


def init_message(data: Any = None) -> bytes:
    """EXPINIT: ``[1, DATA]``."""
    return encode(ExpMessage.EXPINIT, data)


def start_message(exp_ref: str | dict | None, data: Any = None) -> bytes:
    """EXPSTART: ``[2, EXP_REF, DATA]`` with the reference as a string."""
    return encode(ExpMessage.EXPSTART, exp_ref_to_str(exp_ref), data)


def stop_message(data: Any = None, immediately: bool = False) -> bytes:
    """EXPEND ``[4, DATA]``, or EXPINTERRUPT ``[16, DATA]`` when `immediately`; no data is ``[]``."""
    return encode(ExpMessage.EXPINTERRUPT if immediately else ExpMessage.EXPEND, [] if data is None else data)


def cleanup_message(data: Any = None) -> bytes:
    """EXPCLEANUP: ``[8, DATA]``; no data is ``[]``."""
    return encode(ExpMessage.EXPCLEANUP, [] if data is None else data)


def status_message(status: ExpStatus | int | str) -> bytes:
    """EXPSTATUS: ``[32, STATUS, {}]`` (the object lets MATLAB's ``jsondecode`` read it)."""
    return encode(ExpMessage.EXPSTATUS, int(as_status(status)), {})


def details(data: list) -> Any:
    """The details a main sent with EXPEND or EXPINTERRUPT: its last element, unwrapped from
    iblrig's one-element list (``[16, [{...}]]`` is ``[16, {...}]``)."""
    last = data[-1] if data else None
    return last[0] if isinstance(last, list) and len(last) == 1 and isinstance(last[0], dict) else last


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


def reported_request(report: Message) -> Any:
    """What an error report says it is about: the event code of ``[0, TEXT, EVENT]``, the request
    of ``[0, TEXT, ORIGINAL]`` (Timeline's shape) as :func:`canonical` bytes, None for ``[0, TEXT]``,
    or whatever else its third element is (it then matches no request).
    """
    named = report.data[1] if len(report.data) > 1 else None
    if isinstance(named, str):
        try:
            return canonical(decode(named.encode()))
        except DecodeError:
            return named
    return named


ERROR_TEXT = 4000
"""int: characters of an error report's text at most (a longer one is cut, so that it always fits)."""


def error_report(error: BaseException, event: ExpMessage | int) -> bytes:
    """The report a receiver sends when its handler for `event` raised: ``[0, "Type: msg", EVENT]``."""
    text = f'{type(error).__name__}: {error}'
    if len(text) > ERROR_TEXT:
        text = text[:ERROR_TEXT - 3] + '...'
    return encode(ERROR_CODE, text, int(event))
