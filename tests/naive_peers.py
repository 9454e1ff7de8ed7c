"""Models of a naive peer, for the simulator: one that echoes every datagram it receives.

A careless implementation of the protocol echoes whatever arrives (junk, error reports, the echoes
of what it sent itself, the echoes of its echoes) and keeps no state about what it is waiting for.
Nothing bounds a bounce on its side: whatever bounces between it and our peer must end on ours
(rules M21 and R14 of :mod:`iblnet_sync.core`). Sans-I/O, with the interface of the peers in
:mod:`tests.iblutil_models` (``receive(data, now)`` returns events, ``tick``, ``wakeup``, ``alive``).

- :class:`NaiveMain`: sends each request the moment its caller asks, whatever is still in flight
  (the simulator's caller sometimes asks twice without waiting); takes the first datagram with a
  request's bytes for its echo and the first message of a request's event for its answer (the
  oldest request of that event first), and a plain error report for the failure of its oldest
  request.
- :class:`NaiveRig`: answers every message it receives (an echo of its own answer included, so
  the answers are made from its state only, never from a counter) with an unconfirmed send, at
  once, in its receive loop (the simulator gives its handler no time). With handlers that take
  seconds, each echo of an answer would come back as the same answer seconds later: a chain that
  our main's storm cut (M21) ends after 8 echoes with no request in between, but only after 8 handler
  runs, so possibly after the simulator's quiet period.
"""
from __future__ import annotations

from dataclasses import dataclass

from iblnet_sync import core, protocol
from iblnet_sync.protocol import ExpMessage, ExpStatus


def _decode(data: bytes) -> protocol.Message | None:
    try:
        return protocol.decode(data)
    except protocol.DecodeError:
        return None


@dataclass
class _Request:
    token: int
    plain: bytes
    event: ExpMessage
    echoed: bool = False


class NaiveMain:
    """A main that echoes everything and never waits for one request's answer to send the next."""

    alive = True  # it never closes its socket
    wakeup = None  # and has no timer: its caller gives up

    def __init__(self) -> None:
        self.token = 0
        self.pending: list[_Request] = []

    def request(self, plain: bytes, now: float, expect_answer: bool = True,
                deadline: float | None = None) -> list[core.Event]:
        self.token += 1
        self.pending.append(_Request(self.token, plain, protocol.decode(plain).event))
        return [core.Send(plain)]

    def receive(self, data: bytes, now: float) -> list[core.Event]:
        events: list[core.Event] = [core.Send(data)]  # every datagram, whatever it is
        echo = next((x for x in self.pending if not x.echoed and x.plain == data), None)
        if echo is not None:
            echo.echoed = True
            return events
        message = _decode(data)
        if message is None or not self.pending:
            return events
        if message.event == protocol.ERROR_CODE:
            x = self.pending.pop(0)
            return events + [core.Failed(x.token, 'error report', str(message.data[0]))]
        x = next((x for x in self.pending if x.event == message.event), None)
        if x is not None:
            self.pending.remove(x)
            events.append(core.Answered(x.token, message.data, now))
        return events

    def give_up(self, now: float) -> list[core.Event]:
        """The caller stops waiting: every request in flight fails."""
        failed = [core.Failed(x.token, 'no response', 'timed out') for x in self.pending]
        self.pending = []
        return failed

    def tick(self, now: float) -> list[core.Event]:
        return []

    def abort(self, stage: str, detail: str) -> list[core.Event]:
        return []  # it ignores socket errors


class NaiveRig:
    """A rig that echoes everything and answers every message it receives, from its state alone."""

    alive = True
    wakeup = None

    def __init__(self) -> None:
        self.count = 0
        self.status = ExpStatus.CONNECTED
        self.exp_ref: str | None = None

    def is_current(self, request: int) -> bool:
        return True  # every message is handled, however many are under way

    def receive(self, data: bytes, now: float) -> list[core.Event]:
        events: list[core.Event] = [core.Send(data)]
        message = _decode(data)
        if message is not None and message.event != protocol.ERROR_CODE:
            self.count += 1
            events.append(core.Handle(self.count, message))
        return events

    def answer(self, request: int, answer: bytes | None, now: float) -> list[core.Event]:
        return [] if answer is None else [core.Send(answer)]  # sent once, no echo awaited

    def respond(self, message: protocol.Message) -> bytes:
        """Its answer to `message`: the event and its state (so an answer to its own answer is the same)."""
        event, data = message
        S = ExpStatus
        if event is ExpMessage.EXPINIT:
            self.status = S.INITIALIZED
        elif event is ExpMessage.EXPSTART:
            self.status = S.RUNNING
            self.exp_ref = data[0] if data and isinstance(data[0], str) else self.exp_ref
            return protocol.encode(event, self.exp_ref, {'status': int(self.status)})
        elif event in (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT):
            self.status = S.STOPPED
        elif event is ExpMessage.EXPINFO:
            return protocol.encode(event, int(self.status), {'exp_ref': self.exp_ref, 'main_sync': False})
        elif event is ExpMessage.ALYX:
            return protocol.encode(event, 'https://alyx.example.org', {'user': 'naive'})
        return protocol.encode(event, int(self.status))

    def tick(self, now: float) -> list[core.Event]:
        return []
