"""Log lines that a peer cannot abuse: its text shortened and escaped, its warnings rate-limited.

A datagram may carry 65 KB of anything: control characters, ``\\r`` (which makes a terminal
overwrite the line), ESC sequences, U+2028 (a line break for some log viewers). Text from a
peer goes into a log line only through :func:`peer_text`, and the lines a peer can cause
again and again go through a :class:`PeerLogLimiter`.

Examples
--------
>>> peer_text('mouse\\r2026-11-24 ERROR forged')
'mouse\\\\r2026-11-24 ERROR forged'
>>> peer_text('m' * 1000, limit=10)
'mmmmmmmmmm...[990 more characters]'
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from .dialect import parse
from .protocol import DecodeError, ExpMessage

__all__ = ['PEER_TEXT_LIMIT', 'PeerLogLimiter', 'datagram_text', 'mask_alyx', 'peer_text']

PEER_TEXT_LIMIT = 300
"""int: characters of a peer's text shown in a log line by default; the rest is counted, not shown."""
_NAMED = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}


def _escaped(char: str) -> str:
    """`char` as it is if printable (a space is), else as a Python-style escape."""
    if char.isprintable():
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f'\\x{code:02x}' if code < 0x100 else f'\\u{code:04x}' if code < 0x10000 else f'\\U{code:08x}'


def peer_text(value: Any, limit: int = PEER_TEXT_LIMIT) -> str:
    """Text from a peer made safe for one log line: escaped, and cut after `limit` characters.

    Every character that is not printable (control characters, ``\\r``, ``\\n``, ESC,
    U+2028 and U+2029, other separators and format characters, lone surrogates) is shown as
    an escape (``\\r``, ``\\x1b``, ``\\u2028``), so the value can neither start a new line
    nor move the cursor. Backslashes are kept as they are, so Windows paths stay readable.

    Parameters
    ----------
    value : object
        A string, or anything else (shown as its ``repr``).
    limit : int
        At most this many characters of escaped text; what does not fit is replaced by the
        marker ``...[N more characters]`` (N counts the original characters left out).

    Returns
    -------
    str
        One line of at most `limit` characters plus the marker.
    """
    text = value if isinstance(value, str) else repr(value)
    shown: list[str] = []
    used = 0
    for index, char in enumerate(text):
        piece = _escaped(char)
        if used + len(piece) > limit:
            return ''.join(shown) + f'...[{len(text) - index} more characters]'
        shown.append(piece)
        used += len(piece)
    return ''.join(shown)


def mask_alyx(data: list) -> list:
    """ALYX data as it may be logged (at DEBUG only): the base URL and user names, every token ``'***'``.

    Examples
    --------
    >>> mask_alyx(['https://alyx.example.org', {'technician': 'c2VjcmV0'}])
    ['https://alyx.example.org', {'technician': '***'}]
    """
    return [item if index == 0 and isinstance(item, str) and item.startswith(('http://', 'https://')) or item is None
            else {key: '***' for key in item} if isinstance(item, dict) else '***'
            for index, item in enumerate(data)]  # (whatever its shape, nothing but a URL and user names shows)


def datagram_text(datagram: bytes, limit: int = PEER_TEXT_LIMIT) -> str:
    """A datagram as it may be logged: :func:`peer_text` of its text, an Alyx token masked.

    Examples
    --------
    >>> print(datagram_text(b'[128, "https://alyx.example.org", {"technician": "c2VjcmV0"}]'))
    ALYX ['https://alyx.example.org', {'technician': '***'}]
    """
    if b'128' in datagram:  # only then can it be an ALYX message, plain or tagged
        try:
            message = parse(datagram).message
        except DecodeError:
            message = None
        if message is not None and message.event is ExpMessage.ALYX:
            return peer_text(f'ALYX {mask_alyx(message.data)}', limit)
    return peer_text(datagram.decode('utf-8', 'replace'), limit)


class PeerLogLimiter:
    """At most `burst` log lines per `period` seconds for each key (e.g. a sender); the others are counted.

    The next line logged for a key after some were held back says how many, so a flood shows
    up in the log as a few lines and a count instead of drowning it. Keys are remembered for
    at most `max_keys` (the least recently seen is forgotten first), so a flood from many
    senders cannot grow the table. Safe from any thread.

    Parameters
    ----------
    burst : int
        Lines logged per key in each period.
    period : float
        Seconds of a period; a key's count starts again with its first line after a period.
    max_keys : int
        Keys remembered at most.
    clock : callable
        Returns the time in seconds (``time.monotonic`` by default; tests replace ``clock``).

    Examples
    --------
    >>> limiter = PeerLogLimiter(burst=2)
    >>> [limiter.admit(('10.0.0.7', 5000)) for _ in range(3)]  # the third is held back
    [0, 0, None]
    >>> limiter.warning(logging.getLogger(__name__), ('10.0.0.7', 5000), 'junk from %s', '10.0.0.7')
    False
    """

    def __init__(self, burst: int = 10, period: float = 60.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        if burst < 1 or not period > 0 or max_keys < 1:
            raise ValueError(f'burst ({burst}) and max_keys ({max_keys}) must be at least 1, period ({period}) above 0')
        self.burst, self.period, self.max_keys, self.clock = burst, period, max_keys, clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[Hashable, list] = OrderedDict()  # key: [period start, lines in it, held back]

    def admit(self, key: Hashable) -> int | None:
        """Count one line for `key`: None if it is to be held back, else how many were held back before it."""
        now = self.clock()
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = [now, 0, 0]
                if len(self._keys) > self.max_keys:
                    self._keys.popitem(last=False)
            else:
                self._keys.move_to_end(key)
                if now - state[0] >= self.period:
                    state[0], state[1] = now, 0
            state[1] += 1
            if state[1] > self.burst:
                state[2] += 1
                return None
            held, state[2] = state[2], 0
            return held

    def log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` unless `key` is over its burst; say how many lines were held back before it.

        Parameters
        ----------
        logger : logging.Logger
            Where the line goes.
        level : int
            Its level, e.g. ``logging.WARNING``.
        key : hashable
            Whose line it is, e.g. the sender's address; shown (escaped) in the count.
        msg, *args
            As for :meth:`logging.Logger.log`; peer text in `args` goes through :func:`peer_text` first.

        Returns
        -------
        bool
            Whether the line was logged.
        """
        return self._log(logger, level, key, msg, args)

    def warning(self, logger: logging.Logger, key: Hashable, msg: str, *args: Any) -> bool:
        """:meth:`log` at WARNING."""
        return self._log(logger, logging.WARNING, key, msg, args)

    def _log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, args: tuple) -> bool:
        if not logger.isEnabledFor(level):
            return False
        held = self.admit(key)
        if held is None:
            return False
        if held:
            msg += ' (%d more for %s were not logged before this one)'
            args += (held, peer_text(str(key), 80))
        logger.log(level, msg, *args, stacklevel=3)  # the line's location is our caller's
        return True
