"""Exceptions that name the rig, its URI, the event and what went wrong."""
from __future__ import annotations

from enum import Enum
from typing import Any, Mapping

__all__ = ['Stage', 'RigError', 'RigTimeout', 'RigRefused', 'RigErrorReport', 'RigClosed',
           'ClosedError', 'BroadcastError', 'BroadcastTimeout']


class Stage(str, Enum):
    """Where an exchange failed, in a few words: a ``str``, so ``error.stage == 'no echo'`` holds.

    Examples
    --------
    >>> Stage.NO_ECHO == 'no echo', f'{Stage.NO_ECHO}', Stage('refused')
    (True, 'no echo', <Stage.REFUSED: 'refused'>)
    """

    NO_ECHO = 'no echo'
    """Nothing came back: the rig never echoed the request."""
    NO_RESPONSE = 'no response'
    """The rig echoed the request but did not answer it in time."""
    ERROR_REPORT = 'error report'
    """The rig's handler raised: the rig sent ``[0, "Type: message", EVENT]``."""
    REFUSED = 'refused'
    """Nothing listens at the rig's address (ICMP port unreachable)."""
    CLOSED = 'closed'
    """The communicator was closed while the exchange ran."""
    INTERRUPTED = 'interrupted'
    """The caller was interrupted (Ctrl-C) while sending or waiting."""
    BUSY = 'busy'
    """The rig stayed busy with an earlier exchange until the deadline."""
    SOCKET_ERROR = 'socket error'
    """The socket reported another error."""
    FAILED = 'failed'
    """Any other failure."""

    __hash__ = str.__hash__  # a Stage and its text are the same key in a dict or a set

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:  # f'{stage}' is its text on every Python (3.12 changed Enum's)
        return format(self.value, spec)


class RigError(Exception):
    """One rig failed one exchange.

    Attributes
    ----------
    rig : str
        The rig's name.
    uri : str
        The rig's URI.
    event : str
        The event name of the exchange, e.g. 'EXPSTART'.
    stage : Stage
        What went wrong in a few words (a ``str``): 'no echo', 'no response', 'refused',
        'error report', 'busy', 'closed', ...
    """

    stage: Stage | str = Stage.FAILED

    def __init__(self, rig: str, uri: str, event: str, detail: str, stage: Stage | str | None = None):
        self.rig, self.uri, self.event, self.detail = rig, uri, event, detail
        if stage:
            self.stage = _as_stage(stage)
        super().__init__(f'{rig} ({uri}) {event}: {self.stage}: {detail}')


class RigTimeout(RigError, TimeoutError):
    """The rig did not echo or did not respond before the deadline."""

    stage = Stage.NO_RESPONSE


class RigRefused(RigError, ConnectionRefusedError):
    """Nothing listens at the rig's address (ICMP port unreachable)."""

    stage = Stage.REFUSED


class RigErrorReport(RigError):
    """The rig's handler for the event raised and the rig sent an ``[0, ...]`` error report."""

    stage = Stage.ERROR_REPORT


class ClosedError(RuntimeError):
    """The object was used after ``close()``, or closed while a call waited."""


class RigClosed(RigError, ClosedError):
    """The exchange ended because its communicator was closed (also a :class:`ClosedError`)."""

    stage = Stage.CLOSED


class BroadcastError(RuntimeError):
    """Some rigs of a broadcast failed.

    Attributes
    ----------
    event : str
        The event that was broadcast.
    failures : dict of str to RigError
        For each failed rig, what went wrong.
    responses : dict
        The responses of the rigs that did answer.
    """

    def __init__(self, event: str, failures: Mapping[str, RigError], responses: Mapping[str, Any]):
        self.event, self.failures, self.responses = event, dict(failures), dict(responses)
        lines = '\n'.join(f'  - {error}' for error in self.failures.values())
        ok = ', '.join(self.responses) or 'none'
        super().__init__(f'{event} failed for {len(self.failures)} rig(s) (answered: {ok}):\n{lines}')


class BroadcastTimeout(BroadcastError, TimeoutError):
    """A broadcast in which at least one rig timed out (``except TimeoutError`` catches it)."""


def _as_stage(stage: Stage | str) -> Stage | str:
    """`stage` as a :class:`Stage` when it names one; other text as it is."""
    try:
        return Stage(stage)
    except ValueError:
        return stage
