"""Exceptions that name the rig, its URI, the event and what went wrong."""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ['RigError', 'RigTimeout', 'RigRefused', 'RigErrorReport', 'RigClosed',
           'ClosedError', 'BroadcastError', 'BroadcastTimeout']


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
    stage : str
        What went wrong in a few words: 'no echo', 'no response', 'refused', 'error report',
        'busy', 'closed'.
    """

    stage = 'failed'

    def __init__(self, rig: str, uri: str, event: str, detail: str, stage: str | None = None):
        self.rig, self.uri, self.event, self.detail = rig, uri, event, detail
        if stage:
            self.stage = stage
        super().__init__(f'{rig} ({uri}) {event}: {self.stage}: {detail}')


class RigTimeout(RigError, TimeoutError):
    """The rig did not echo or did not respond before the deadline."""

    stage = 'no response'


class RigRefused(RigError, ConnectionRefusedError):
    """Nothing listens at the rig's address (ICMP port unreachable)."""

    stage = 'refused'


class RigErrorReport(RigError):
    """The rig's handler for the event raised and the rig sent an ``[0, ...]`` error report."""

    stage = 'error report'


class ClosedError(RuntimeError):
    """The object was used after ``close()``, or closed while a call waited."""


class RigClosed(RigError, ClosedError):
    """The exchange ended because its communicator was closed (also a :class:`ClosedError`)."""

    stage = 'closed'


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
