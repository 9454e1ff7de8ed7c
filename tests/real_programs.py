"""Behavioural models of the three programs that labs already run at the other end of the protocol.

Written from the facts in PROTOCOL.md ("Rigs that labs already run"); sans-I/O, with the interface
of the peers in :mod:`tests.iblutil_models` (``receive(data, now)`` returns events, ``tick``, ``wakeup``,
``alive``), so the simulator (:mod:`tests.simulation`) and the loopback peers of :mod:`tests.program_peers`
drive them alike. Unlike the iblutil models, the rigs here make their own answers (``respond``).

- :class:`Timeline`: Rigbox's Timeline listener (MATLAB), the main sync of mesoscope rigs. It echoes
  every datagram but one equal to the last message it sent (taken as that message's confirmation),
  answers at once in compact JSON, and cannot read a message whose array holds only numbers and
  nulls (MATLAB's ``jsondecode`` makes it a numeric array): those, and unknown codes, are answered
  with an error report ``[0, MESSAGE, ORIGINAL_TEXT]``. It never closes its socket.
- :class:`VideoProgram`: iblrig's camera program, an iblutil rig (:class:`tests.iblutil_models.IblutilRig`)
  that handles one message at a time and loses quick requests: it waits for the next message again
  only :data:`REARM` seconds after a handler finished (after the echo of its answer, or at once
  when there is no answer), and a request that arrives before that is echoed (by iblutil) but
  never handled.
- :class:`IblrigMain`: iblrig's own main: iblutil's main (:class:`tests.iblutil_models.IblutilMain`) with
  iblrig's bytes for EXPEND and EXPINTERRUPT (:func:`iblrig_stop`) and a queue polled every
  :data:`POLL` seconds, so there is always a pause between two requests.
"""
from __future__ import annotations

import json
import math
from typing import Any

from iblnet_sync import core, protocol
from iblnet_sync.protocol import ExpMessage, ExpStatus
from tests.iblutil_models import IblutilMain, IblutilRig

REARM = 0.0002
"""float: seconds between the end of a handler of the video program and its next wait for a message
(a few turns of its event loop; a request that arrives sooner is lost)."""
POLL = 0.2
"""float: seconds between two looks at iblrig's request queue (``Auxiliaries.refresh_rate``)."""
API_VERSION = '1.0.0'
"""str: the ``api_version`` that Timeline reports in its EXPINFO answer."""
CODES = frozenset(int(e) for e in ExpMessage)


def compact(*elements: Any) -> bytes:
    """A message as MATLAB's ``jsonencode`` writes it: JSON without spaces."""
    return json.dumps(list(elements), separators=(',', ':')).encode()


def spaced(*elements: Any) -> bytes:
    """A message as Python's ``json.dumps`` writes it by default (iblutil's bytes)."""
    return json.dumps(list(elements)).encode()


def iblrig_stop(details: dict | None = None, immediately: bool = False) -> bytes:
    """EXPEND or EXPINTERRUPT as iblrig's main sends them: the task's arguments as a list.

    Examples
    --------
    >>> iblrig_stop()
    b'[4, []]'
    >>> iblrig_stop({'error': 'X'}, immediately=True)
    b'[16, [{"error": "X"}]]'
    """
    event = ExpMessage.EXPINTERRUPT if immediately else ExpMessage.EXPEND
    return spaced(int(event), [] if details is None else [details])


# --- Rigbox's Timeline listener ---
class MatlabParseError(ValueError):
    """What Timeline's ``jsondecode`` and its first look at the message make of a datagram it cannot read."""


def matlab_decode(data: bytes) -> tuple[int, list]:
    """The event code and data that Timeline reads in `data`, as MATLAB's ``jsondecode`` sees it.

    ``jsondecode`` turns a JSON array into a cell array (which Timeline can index) only when its
    elements are not all of one scalar kind: an array of numbers and nulls becomes a numeric array,
    of booleans a logical array, of objects with the same keys a struct array, and none of these can
    be indexed as Timeline does. Anything but an array cannot either.

    Raises
    ------
    MatlabParseError
        Timeline answers it with an error report.
    """
    try:
        value = json.loads(data.decode('latin-1'))
    except ValueError as ex:
        raise MatlabParseError(f'JSON syntax error: {ex}') from None
    if not isinstance(value, list) or not value:
        raise MatlabParseError('the decoded message is not a cell array: it cannot be indexed')
    kinds = {_matlab_kind(v) for v in value}
    uniform_objects = all(isinstance(v, dict) for v in value) and len({tuple(v) for v in value}) == 1
    if kinds <= {'number', 'null'} or kinds == {'bool'} or uniform_objects:
        raise MatlabParseError('the decoded message is an array, not a cell array: it cannot be indexed')
    code = value[0]
    if isinstance(code, bool) or not isinstance(code, (int, float)) or code not in CODES:
        raise MatlabParseError(f'{code!r} is not a member of the experiment signals')
    return int(code), value[1:]


def _matlab_kind(value: Any) -> str:
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, (int, float)):
        return 'number'
    return type(value).__name__


class Timeline:
    """Rigbox's Timeline listener (``processIBLUDP.m``) as a sans-I/O peer: echo and answer at once.

    Parameters
    ----------
    exp_ref : str, None
        The reference the operator set in Timeline (reported in EXPSTART and EXPINFO answers); its
        status is RUNNING (20) once set, else CONNECTED (0).

    Attributes
    ----------
    received : list of (int, list)
        Every message it read (code, data), in order.
    answered : list of bytes
        Every answer and error report it sent.
    """

    alive = True  # it never closes its socket
    wakeup = None

    def __init__(self, exp_ref: str | None = None):
        self.exp_ref = exp_ref
        self.last_sent: bytes | None = None
        self.received: list[tuple[int, list]] = []
        self.answered: list[bytes] = []
        self.confirmed = 0

    @property
    def status(self) -> int:
        return int(ExpStatus.RUNNING if self.exp_ref else ExpStatus.CONNECTED)

    def receive(self, data: bytes, now: float = 0.0) -> list[core.Event]:
        """A datagram from anyone: its echo, then at once the answer (or nothing)."""
        if data == self.last_sent:  # the confirmation of its last message: not echoed
            self.confirmed += 1
            return []
        events: list[core.Event] = [core.Send(data)]  # every other datagram, error reports included
        answer = self.respond(data)
        if answer is not None:
            self.last_sent = answer
            self.answered.append(answer)
            events.append(core.Send(answer))
        return events

    def respond(self, data: bytes) -> bytes | None:
        """The answer to `data`: an error report for what it cannot read, None when it says nothing."""
        try:
            code, rest = matlab_decode(data)
        except MatlabParseError as ex:
            return compact(0, str(ex), data.decode('latin-1'))
        self.received.append((code, rest))
        status, ref = self.status, self.exp_ref or ''
        if code == ExpMessage.EXPINIT:
            return compact(code, {'status': status})
        if code == ExpMessage.EXPSTART:
            return compact(code, ref, {'status': status})
        if code in (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT, ExpMessage.EXPCLEANUP, ExpMessage.EXPSTATUS):
            return compact(code, status)
        if code == ExpMessage.EXPINFO:
            info = rest[1] if len(rest) > 1 else None
            if not isinstance(info, dict) or 'subject' not in info:
                return None  # its callback fails on the missing field: no answer at all
            return compact(code, status, {'main_sync': True, 'api_version': API_VERSION, 'status': status,
                                          'exp_ref': ref})
        return None  # ALYX: no answer

    def tick(self, now: float) -> list[core.Event]:
        return []


# --- iblrig's video program ---
class VideoProgram(IblutilRig):
    """iblrig's camera program (``CameraSessionNetworked``) on an iblutil rig, as a sans-I/O peer.

    It takes a message only while it waits for one (from :attr:`listening_from` on): the handler then
    runs (the simulator's :class:`core.Handle`), its answer (:meth:`respond`) goes out as iblutil's
    confirmed send, and the program waits for the next message :data:`REARM` seconds after the echo of
    that answer (or after the handler, when it answers nothing). A message that arrives meanwhile is
    echoed by iblutil and lost (:attr:`lost`). A handler that fails ends the program (``alive`` False,
    cause ``'crashed'``).

    Parameters
    ----------
    rearm : float
        Seconds between the end of a handler and the next wait for a message.
    """

    def __init__(self, rearm: float = REARM, experiment_description: dict | None = None):
        super().__init__()
        self.rearm = rearm
        self.status = ExpStatus.CONNECTED
        self.exp_ref: str | None = None
        self.experiment_description = experiment_description or {'devices': {'cameras': {'left': {}}}}
        self.listening_from: float | None = 0.0  # None while a handler runs or its answer awaits its echo
        self.current: int | None = None
        self.lost: list[bytes] = []
        self.handled: list[tuple[ExpMessage, list]] = []

    def is_current(self, request: int) -> bool:
        return self.alive and request == self.current

    def receive(self, data: bytes, now: float) -> list[core.Event]:
        answering = self.awaiting is not None
        events = super().receive(data, now)
        if answering and self.awaiting is None and self.alive:  # the echo of its answer: the handler is done
            self._finished(now)
        kept: list[core.Event] = []
        for event in events:
            if isinstance(event, core.Handle):
                if self.listening_from is None or now < self.listening_from:
                    self.lost.append(data)  # echoed, but nobody waits for it
                    continue
                self.listening_from, self.current = None, event.request
            kept.append(event)
        return kept

    def answer(self, request: int, answer: bytes | None, now: float) -> list[core.Event]:
        """The handler of `request` ends with `answer` (a confirmed send) or with none."""
        if not self.is_current(request):
            return []
        self.current = None
        if answer is None:
            self._finished(now)
            return []
        return super().answer(request, answer, now)

    def respond(self, message: protocol.Message, now: float = 0.0) -> bytes | None:
        """Run the program's handler for `message`: its answer, or None; a failing handler ends it."""
        try:
            return self._respond(message)
        except (AssertionError, ValueError, TypeError, KeyError, AttributeError):
            self.die(now, 'crashed')
            return None

    def _respond(self, message: protocol.Message) -> bytes | None:
        event, data = message
        self.handled.append((event, list(data)))
        S = ExpStatus
        if event is ExpMessage.EXPINIT:
            ref = (data[0] or {}).get('exp_ref')
            assert ref, 'no experiment reference'
            ref = protocol.exp_ref_to_str(ref) if isinstance(ref, dict) else ref
            if self.status is S.CONNECTED:
                self.exp_ref, self.status = ref, S.INITIALIZED
            elif self.status in (S.INITIALIZED, S.RUNNING):
                assert ref == self.exp_ref, 'another experiment is under way'
            return spaced(int(event), int(self.status), self.info())
        if event is ExpMessage.EXPSTART:
            ref, _extra = data  # exactly two elements, or the handler fails
            ref = protocol.exp_ref_to_str(ref) if isinstance(ref, dict) else ref
            if self.status is S.CONNECTED:
                self.exp_ref, self.status = ref, S.RUNNING
            elif self.status is S.INITIALIZED:
                self.status = S.RUNNING
            return spaced(int(event), self.exp_ref, {**self.info(), 'status': int(self.status)})
        if event in (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT, ExpMessage.EXPCLEANUP):
            code = ExpMessage.EXPEND if event is ExpMessage.EXPEND else ExpMessage.EXPINTERRUPT
            return spaced(int(code), {**self.info(), 'status': int(self.status)})
        if event is ExpMessage.EXPSTATUS:
            return spaced(int(event), int(self.status))
        if event is ExpMessage.EXPINFO:
            return spaced(int(event), int(self.status), self.info())
        if event is ExpMessage.ALYX:
            _base_url, _token = data  # a token is installed, a request for ours unanswered (not logged in)
        return None

    def info(self) -> dict:
        """The program's ExpInfo."""
        return {'exp_ref': self.exp_ref, 'main_sync': False, 'experiment_description': self.experiment_description,
                'master': False, 'rig_version': '8.27.0', 'spec_version': '1.0.0'}

    def _finished(self, now: float) -> None:
        self.listening_from = now + self.rearm


# --- iblrig's own main ---
class IblrigMain(IblutilMain):
    """iblrig's main (``Auxiliaries``): iblutil's main behind a request queue polled every :data:`POLL` s.

    A request waits in the queue until the next poll; polls come :data:`POLL` seconds apart from
    the end of the previous exchange (the loop sleeps after each one), so two requests are always
    at least that far apart.
    """

    def __init__(self, poll: float = POLL):
        super().__init__()
        self.poll = poll

    def send_time(self, now: float) -> float:
        """The queue's next poll from `now` on."""
        slept_at = self.ended or 0.0  # (the loop sleeps after each exchange, and first at its start)
        polls = max(1, math.ceil((now - slept_at) / self.poll - 1e-9))
        return slept_at + polls * self.poll
