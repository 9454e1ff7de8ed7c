"""Behavioural models of iblutil's main (client role, ``Services``) and rig (server role), for the simulator.

They take the same inputs and give the same events as the cores of :mod:`iblnet_sync.core`, and
reproduce what iblutil 1.20's ``EchoProtocol`` does with each datagram (checked against the real
one over loopback by ``test_iblutil_models.py``):

- every datagram that is not an awaited echo is echoed at once, unless its second character
  is ``0``, then handed to the callbacks if it decodes as a JSON list of two or more elements;
- while the echo of a confirmed send is awaited, the next datagram from the peer completes
  the wait if it has the same bytes, and otherwise fails it: the protocol closes (dies);
- a wait longer than the echo timeout (1 s) also closes it;
- a second confirmed send replaces the first, whose wait can then only time out.

One difference depends on the Python that runs iblutil, not on the datagrams: a callback
registered for several events at once (``ExpMessage.any()``, ``EXPSTART | EXPEND``) is called as
``callback(data, addr, event)`` on Python 3.10 and 3.11 but as ``callback(data, addr)`` on 3.12 and
later. iblutil decides with ``event not in ExpMessage``, and from Python 3.12 ``Flag.__contains__``
counts any combination of members as in the class. Code on an iblutil peer that needs the event
registers one callback per event (as ``peers.IblutilRig`` does).
"""
from __future__ import annotations

import json

from iblnet_sync import core, protocol
from iblnet_sync.protocol import ExpMessage

ECHO_TIMEOUT = 1.0


def _decode(data: bytes) -> protocol.Message | None:
    """What iblutil's callbacks would receive, or None where iblutil warns or raises."""
    try:
        value = json.loads(data)
        if not isinstance(value, list) or len(value) < 2 or not value[0]:
            return None
        return protocol.Message(ExpMessage.validate(value[0], allow_bitwise=False), value[1:])
    except (ValueError, TypeError):
        return None


def _echoes(data: bytes) -> bool:
    """iblutil echoes a datagram unless its second character is '0' (or it is not text at all)."""
    try:
        return data.decode()[1] != '0'
    except (UnicodeDecodeError, IndexError):
        return False


class _Peer:
    def __init__(self) -> None:
        self.alive = True
        self.died_at: float | None = None
        self.awaiting: bytes | None = None
        self.echo_deadline: float | None = None
        self.awaiting_since = 0.0
        self.replaced: list[tuple[float, bytes, float]] = []  # waits a newer confirmed send replaced:
        #                                                        (deadline, awaited, since)
        self.cause: tuple[str, bytes | None, float] | None = None  # why it died: (why, awaited, since)

    @property
    def wakeup(self) -> float | None:
        times = [t for t in [self.echo_deadline, *(r[0] for r in self.replaced)] if t is not None]
        return min(times) if times else None

    def die(self, now: float, why: str = 'closed') -> None:
        if self.alive:
            self.alive, self.died_at = False, now
            replaced = self._replaced_overdue(now) if why == 'replaced' else None
            self.cause = (why, *(replaced or (self.awaiting, self.awaiting_since)))
        self.awaiting = self.echo_deadline = None
        self.replaced = []

    def _await(self, datagram: bytes, now: float) -> None:
        """A confirmed send: a wait still pending can no longer complete (it will time out); wait for this."""
        if self.awaiting is not None and self.echo_deadline is not None:
            self.replaced.append((self.echo_deadline, self.awaiting, self.awaiting_since))
        self.awaiting, self.echo_deadline, self.awaiting_since = datagram, now + ECHO_TIMEOUT, now

    def _overdue(self, now: float) -> str | None:
        """Why a wait has timed out by `now` ('no echo', or 'replaced' for a wait a newer send replaced)."""
        if self.echo_deadline is not None and now >= self.echo_deadline:
            return 'no echo'
        return 'replaced' if self._replaced_overdue(now) else None

    def _replaced_overdue(self, now: float) -> tuple[bytes, float] | None:
        """The first wait that a newer send replaced and that has timed out by `now`: (awaited, since)."""
        return next(((awaited, since) for deadline, awaited, since in self.replaced if now >= deadline), None)


class IblutilMain(_Peer):
    """iblutil's ``Services`` with one rig: a confirmed send, then the first message of the event.

    Parameters
    ----------
    pause : float
        Seconds its caller lets pass after an exchange ended before the next request goes out
        (0: at once). The simulator's reference runs give iblutil's main the pace of ours.
    """

    def __init__(self, pause: float = 0.0) -> None:
        super().__init__()
        self.token = 0
        self.want: ExpMessage | None = None
        self.open = False
        self.pause = pause
        self.ended: float | None = None  # when the last exchange ended
        self._queued: tuple[bytes, bool, float] | None = None  # a request waiting for its time: (plain, answer?, when)

    @property
    def wakeup(self) -> float | None:
        times = [t for t in (super().wakeup, self._queued[2] if self._queued else None) if t is not None]
        return min(times) if times else None

    def send_time(self, now: float) -> float:
        """When a request asked for at `now` goes out."""
        return now if self.ended is None else max(now, self.ended + self.pause)

    def request(self, plain: bytes, now: float, expect_answer: bool = True,
                deadline: float | None = None) -> list[core.Event]:
        self._queued = (plain, expect_answer, self.send_time(now))
        return self.tick(now)

    def _send_request(self, plain: bytes, now: float, expect_answer: bool) -> list[core.Event]:
        self.token += 1
        if not self.alive:
            return [core.Failed(self.token, 'closed', 'the protocol closed')]
        self.want = protocol.decode(plain).event if expect_answer else None
        self.open = True
        self._await(plain, now)  # (Services' caller would still be blocked in a pending wait: it ends alike)
        return [core.Send(plain)]

    def receive(self, data: bytes, now: float) -> list[core.Event]:
        return self._ended(self._receive(data, now), now)

    def _receive(self, data: bytes, now: float) -> list[core.Event]:
        if not self.alive:
            return []
        if self.awaiting is not None:
            if data != self.awaiting:
                return self._fail(now, 'wrong echo')
            self.awaiting = self.echo_deadline = None
            if self.want is None and self.open:
                self.open = False
                return [core.Echoed(self.token, now), core.Answered(self.token, None, now)]
            return [core.Echoed(self.token, now)]
        events: list[core.Event] = [core.Send(data)] if _echoes(data) else []
        message = _decode(data)
        if message is not None and self.open and message.event == self.want:
            self.open = False
            events.append(core.Answered(self.token, message.data, now))
        return events

    def tick(self, now: float) -> list[core.Event]:
        why = self._overdue(now)
        events = self._fail(now, why) if why and self.alive else []
        if self._queued is not None and now >= self._queued[2]:
            plain, expect_answer, _ = self._queued
            self._queued = None
            events += self._send_request(plain, now, expect_answer)
        return self._ended(events, now)

    def give_up(self, now: float) -> list[core.Event]:
        if self._queued is not None:  # never sent
            self._queued = None
            self.token += 1
            return self._ended([core.Failed(self.token, 'no response', 'never sent')], now)
        if not self.open:
            return []
        self.open = False
        return self._ended([core.Failed(self.token, 'no response', 'timed out')], now)

    def _ended(self, events: list[core.Event], now: float) -> list[core.Event]:
        if any(isinstance(e, (core.Answered, core.Failed)) for e in events):
            self.ended = now
        return events

    def abort(self, stage: str, detail: str) -> list[core.Event]:
        return []  # iblutil ignores socket errors; the echo wait times out

    def _fail(self, now: float, why: str) -> list[core.Event]:
        self.die(now, why)
        if self.open:
            self.open = False
            return [core.Failed(self.token, 'closed', why)]
        return []


class IblutilRig(_Peer):
    """An iblutil rig: echoes, runs its callback for every message, answers with a confirmed send."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.took_resend = False  # it handled a datagram in a spelling only a main that resends sends

    def is_current(self, request: int) -> bool:
        return self.alive  # iblutil runs the callback of every message it takes for new

    def receive(self, data: bytes, now: float) -> list[core.Event]:
        if not self.alive:
            return []
        if self.awaiting is not None:
            if data != self.awaiting:
                self.die(now, 'wrong echo')
                return []
            self.awaiting = self.echo_deadline = None
            return []
        events: list[core.Event] = [core.Send(data)] if _echoes(data) else []
        message = _decode(data)
        if message is not None:
            self.count += 1
            self.took_resend = self.took_resend or data != data.rstrip()
            events.append(core.Handle(self.count, message))
        return events

    def answer(self, request: int, answer: bytes | None, now: float) -> list[core.Event]:
        if not self.alive or answer is None:
            return []
        if answer[1:2] == b'0':  # a failed callback's report: sent, never confirmed
            return [core.Send(answer)]
        self._await(answer, now)
        return [core.Send(answer)]

    def tick(self, now: float) -> list[core.Event]:
        why = self._overdue(now)
        if why:
            self.die(now, why)
        return []
