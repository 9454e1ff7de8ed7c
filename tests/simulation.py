#!/usr/bin/env python3
"""A deterministic network simulator for the protocol cores, with invariants checked after each run.

One main and one auxiliary rig talk through a seeded network that loses, duplicates, delays,
reorders and injects junk, on a virtual clock: thousands of lifecycles a second, every one
reproducible from its seed. The peers are our cores (:mod:`iblnet_sync.core`), behavioural
models of iblutil's main and rig (:mod:`tests.iblutil_models`, checked against the real iblutil by
``tests/test_iblutil_models.py``), and models of the programs that labs run at the other end
(:mod:`tests.real_programs`: Rigbox's Timeline and iblrig's video program as rigs, iblrig's own main),
and a naive peer that echoes every datagram it receives (:mod:`tests.naive_peers`).

Pairings (main with rig, see :data:`PAIRINGS`): ``ours`` (ours with ours), ``ours-iblutil``,
``iblutil-ours``, and the real programs ``timeline`` and ``video`` (our main with that rig) and
``iblrig`` (iblrig's main with our rig), and the naive peer ``naive-ours`` (a naive main, which
sometimes sends a request before the previous one's answer came, with our rig) and ``ours-naive``
(our main with a naive rig). A seed's pairing is drawn (:data:`PROGRAM_SHARE` of the scenarios go
to the programs, :data:`NAIVE_SHARE` to the naive peer), or forced with ``--pairing``: the rest of
the scenario is the same.

Usage, from the repository root (a module of the ``tests`` package, on this checkout's ``iblnet_sync``)::

    python -m tests.simulation --scenarios 100000 --seed 1          # a soak: prints the invariant counts
    python -m tests.simulation --scenarios 100000 --pairing video   # one pairing only
    python -m tests.simulation --replay 671 --pairing naive-ours -v  # one scenario of a pairing
    python -m tests.simulation --replay 123456 -v                   # one scenario, with its trace

Invariants (a scenario violates one or more; the counts say how often):

- ``handled_once``: our rig never runs a handler more often than the main's caller asked: a
  tagged request once by its ID; a plain one once between our own peers on networks that do not
  duplicate datagrams, and at most twice otherwise, whoever the main (a duplicate of a plain
  request is, byte for byte, the same main asking again: see :meth:`Run.handle`); toward a naive
  main, at most twice per request it made;
- ``no_crossed``: between our own peers, once they know each other, no caller receives an answer
  or error report made for another request;
- ``deadline``: every call of our main ends (answer or failure) by its deadline;
- ``bounded``: the peers fall silent after the lifecycle (no storm survives), whoever the peer,
  even where iblutil's own pair would storm on the same network, and with a naive peer, whose side
  never ends a bounce: the last 5 of the 30 virtual seconds after the lifecycle are silent, or the
  run is followed 30 s at a time until they are (by 10 minutes), and no scenario reaches 3000
  datagrams. (A chain that each network duplicate feeds anew, an iblutil rig with 12 s handlers
  running one on each copy of our echo of its answer, is slow but ends by itself; a storm does not.)
- ``no_failure``: between our own peers, with loss up to 20% each way and default settings,
  every call succeeds (but a first call, when it is not the announced EXPINFO);
- ``iblutil_alive``: an iblutil peer is never killed (its socket closed) by something its iblutil
  counterpart would not have done in our peer's place (see :attr:`Run.death_excused`), on a
  network on which iblutil's own pair loses nobody. iblrig's main and video program are iblutil
  peers; the reference for a real program is the program with iblutil's counterpart;
- ``program_works``: with a real program at the other end, on a network that loses, duplicates and
  reorders nothing, with default settings, every call gets its answer, but those the program never
  answers with the same event (ALYX to Timeline and to the video program, EXPCLEANUP to the video
  program, answered with EXPINTERRUPT), which end at their deadline in stage 'no response'.

A run with an iblutil peer is compared with a reference run of iblutil's own pair (the models of
both) on the same network: the fate of a datagram depends on the seed and its bytes only, and a
handler's duration and failure on the seed and the request only, so both runs see the same
network and the same application until their peers act differently.
"""
from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import heapq
import itertools
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from iblnet_sync import core, dialect, protocol
from iblnet_sync.experiment import RigExperiment
from iblnet_sync.protocol import ExpMessage, ExpStatus
from tests.events import events_of
from tests.iblutil_models import IblutilMain, IblutilRig
from tests.naive_peers import NaiveMain, NaiveRig
from tests.real_programs import POLL, IblrigMain, Timeline, VideoProgram, iblrig_stop

INVARIANTS = ('handled_once', 'no_crossed', 'deadline', 'bounded', 'no_failure', 'iblutil_alive', 'program_works')
PAIRINGS = {'ours': ('ours', 'ours'), 'ours-iblutil': ('ours', 'iblutil'), 'iblutil-ours': ('iblutil', 'ours'),
            'timeline': ('ours', 'timeline'), 'video': ('ours', 'video'), 'iblrig': ('iblrig', 'ours'),
            'naive-ours': ('naive', 'ours'), 'ours-naive': ('ours', 'naive')}
"""dict: pairing name -> (main, rig)."""
PROGRAMS = ('timeline', 'video', 'iblrig')
"""tuple: the pairings with a real program (:mod:`tests.real_programs`)."""
PROGRAM_SHARE = 0.3
"""float: the share of drawn scenarios that pair ours with a real program."""
NAIVE = ('naive-ours', 'ours-naive')
"""tuple: the pairings with a naive peer, one that echoes everything (:mod:`tests.naive_peers`)."""
NAIVE_SHARE = 0.03
"""float: the share of the drawn scenarios left to our peers and iblutil's (not given to a program)
that pair ours with a naive peer instead."""
TOGETHER = 0.3
"""float: the share of a naive main's requests sent before the previous one's answer came."""
PROGRAM_REF = '2026-11-25_1_mouse'
"""str: the reference set in Timeline (and the one every experiment with a program rig uses)."""
UNANSWERED = {'timeline': {'alyx'}, 'video': {'alyx', 'cleanup'}}
"""dict: calls a program rig never answers with their own event (they end in 'no response')."""
DEFAULT_TIMEOUT = 10.0
QUIET = 30.0  # virtual seconds: the window after the lifecycle whose last SILENT seconds must be silent,
SILENT = 5.0  # or the run is followed for another window (up to FOLLOW after the lifecycle)
FOLLOW = 600.0
STORM = 3000  # datagrams in one scenario that count as an endless storm (the run stops there)


@dataclass
class Scenario:
    """The random choices of one run, all drawn from its seed."""

    seed: int
    main: str                 # 'ours' or 'iblutil'
    rig: str
    loss: tuple[float, float]  # main->rig, rig->main
    duplicate: float
    reorder: float
    delay: float               # base one-way delay, seconds
    junk: int                  # junk datagrams injected
    handler_delay: float       # upper bound of a handler's duration
    timeout: float             # the caller's timeout
    same_bytes: bool           # answers as iblrig's rigs give them (often the request's bytes)
    announce: bool             # our main announces itself in EXPINFO
    fail_rate: float           # share of handler calls that raise
    calls: list[tuple[str, Any]] = field(default_factory=list)
    gap: float = 0.02          # upper bound of the caller's time between two calls (0: back to back)
    together: frozenset[int] = frozenset()  # calls a naive main sends before the previous one's answer

    @classmethod
    def draw(cls, seed: int, pairing: str | None = None) -> Scenario:
        """The scenario of `seed`; `pairing` (a key of :data:`PAIRINGS`) forces its peers."""
        if pairing is not None and pairing not in PAIRINGS:
            raise ValueError(f'unknown pairing {pairing!r}; one of {", ".join(PAIRINGS)}')
        r = random.Random(seed)
        peers = r.choices([('ours', 'ours'), ('ours', 'iblutil'), ('iblutil', 'ours')], [6, 2, 2])[0]
        # (the programs are drawn from a stream of their own: the other pairings' scenarios stay as they were)
        p = random.Random(seed * 1_000_003 + 0x5EED)
        if pairing is None and p.random() < PROGRAM_SHARE:
            pairing = p.choice(PROGRAMS)
        # (and the naive peer from a third, drawn alike when the pairing is forced: --pairing replays it)
        q = random.Random(seed * 1_000_033 + 0x9A1E)
        naive_share, naive = q.random(), q.choice(NAIVE)
        if pairing is None and naive_share < NAIVE_SHARE:
            pairing = naive
        if pairing is not None:
            peers = PAIRINGS[pairing]
        gap = p.choice([0.0, 0.0, 0.001, 0.02]) if pairing in PROGRAMS else 0.02
        if pairing in NAIVE:
            gap = q.choice([0.0, 0.0, 0.001, 0.02])
        calm = r.random() < 0.2
        loss_max = 0.0 if calm else r.choice([0.05, 0.1, 0.2, 0.2, 0.4])
        slow = r.random() < 0.15
        calls: list[tuple[str, Any]] = [('status', None)] * (r.random() < 0.25)  # a bare Services, or a ping
        calls += [('info', None), ('init', None), ('start', None)]
        calls += [('status', None)] * r.randint(0, 3)
        calls += [('alyx', None)] * (r.random() < 0.2)
        calls += [('stop', r.random() < 0.2), ('cleanup', None)]
        if r.random() < 0.3:  # a second experiment on the same connection
            calls += [('info', None), ('init', None), ('start', None), ('stop', False)]
        together: set[int] = set()  # (two in flight at most: a call is not sent together with two others)
        for n in range(1, len(calls)):
            if q.random() < TOGETHER and n - 1 not in together and peers[0] == 'naive':
                together.add(n)
        return cls(
            seed=seed, main=peers[0], rig=peers[1],
            loss=(r.uniform(0, loss_max), r.uniform(0, loss_max)),
            duplicate=0.0 if calm else r.choice([0.0, 0.02, 0.1]),
            reorder=0.0 if calm else r.choice([0.0, 0.05, 0.2]),
            delay=r.uniform(0.0001, 0.002), junk=0 if calm else r.choice([0, 0, 1, 4]),
            handler_delay=r.choice([0.001, 0.01, 0.3]) if not slow else r.choice([1.5, 4.0, 12.0]),
            timeout=DEFAULT_TIMEOUT if r.random() < 0.8 else r.choice([0.05, 0.3, 1.0, 3.0]),
            same_bytes=r.random() < 0.5, announce=peers[0] == 'ours',
            fail_rate=0.0 if r.random() < 0.7 else 0.1, calls=calls, gap=gap, together=frozenset(together))

    @property
    def pairing(self) -> str:
        """str: the name of the pairing (a key of :data:`PAIRINGS`)."""
        return next(name for name, peers in PAIRINGS.items() if peers == (self.main, self.rig))

    @property
    def clean(self) -> bool:
        """Default settings on a network that loses, duplicates and reorders nothing (junk may come)."""
        return self.default_settings and self.loss == (0.0, 0.0) and not self.duplicate and not self.reorder

    @property
    def default_settings(self) -> bool:
        """Loss up to 20% each way, library defaults, and callers that wait long enough."""
        return (max(self.loss) <= 0.2 and self.timeout == DEFAULT_TIMEOUT and self.handler_delay < 1.0
                and self.fail_rate == 0.0)


class Network:
    """Two links on a virtual clock. The fate of a datagram (lost, duplicated, delayed) depends
    only on the seed, the link, its bytes and how many times those bytes went over that link
    before, so two runs that send the same datagrams see the same network trace."""

    def __init__(self, scenario: Scenario, trace: Callable[[str], None] | None = None):
        self.s = scenario
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._copies: collections.Counter = collections.Counter()
        self._last_arrival = [0.0, 0.0]
        self.sent = 0
        self.last_send = 0.0
        self.lost: list[tuple[int, bytes, float]] = []  # (link, datagram, when)
        self.arriving: tuple[str, int] | None = None  # while a datagram is delivered: (its kind, which copy)
        self.trace = trace

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def run_until(self, done: Callable[[], bool], horizon: float) -> None:
        while self._queue and not done() and self.sent < STORM:
            when, _, action = heapq.heappop(self._queue)
            if when > horizon:
                heapq.heappush(self._queue, (when, 0, action))
                return
            self.now = max(self.now, when)
            action()

    def arrive(self, deliver: Callable[[bytes], None], data: bytes, kind: str, copy: int) -> None:
        """Deliver `data`, copy number `copy` (1: a network duplicate) of a datagram of `kind`."""
        self.arriving = (kind, copy)
        try:
            deliver(data)
        finally:
            self.arriving = None

    def transmit(self, link: int, data: bytes, deliver: Callable[[bytes], None], kind: str = '') -> None:
        """Send `data` over link 0 (main->rig) or 1 (rig->main): a 'request', an 'answer', a 'resend' or
        an 'echo' (anything else a peer sends when a datagram arrives)."""
        self.sent += 1
        self.last_send = self.now
        # our rig's plain answer is iblutil's answer plus a newline: the same message, so the same fate
        message = data[:-1] if data.endswith(dialect.PEER_SUFFIX) else data
        key = (link, message)
        self._copies[key] += 1
        digest = hashlib.blake2b(b'%d|%d|%d|' % (self.s.seed, link, self._copies[key]) + message, digest_size=8)
        r = random.Random(int.from_bytes(digest.digest(), 'little'))
        if self.trace:
            self.trace(f'{self.now:9.4f} {"main->rig" if link == 0 else "rig->main"} {data[:90]!r}')
        if r.random() < self.s.loss[link]:
            self.lost.append((link, data, self.now))
            if self.trace:
                self.trace('          (lost)')
            return
        copies = 2 if r.random() < self.s.duplicate else 1
        for copy in range(copies):
            arrival = self.now + self.s.delay * r.uniform(0.5, 1.5)
            if r.random() < self.s.reorder:  # overtaken by what follows
                arrival += r.uniform(0.0, 0.03)
            else:  # a link keeps its order otherwise
                arrival = self._last_arrival[link] = max(arrival, self._last_arrival[link])
            self.at(arrival, functools.partial(self.arrive, deliver, data, kind, copy))


class Run:
    """One scenario: the caller's lifecycle at the main, the rig's handlers, the checks."""

    def __init__(self, scenario: Scenario, main: str | None = None, rig: str | None = None,
                 trace: Callable[[str], None] | None = None, follow: bool = True):
        self.s = scenario
        self.follow = follow  # whether a run still talking after the lifecycle's window is followed on
        self.kind_main, self.kind_rig = main or scenario.main, rig or scenario.rig
        self.net = Network(scenario, trace)
        self.trace = trace
        self.r = random.Random(scenario.seed * 7919 + 1)
        nonce = f'{scenario.seed:x}'
        # (iblutil's main standing in for ours in a reference run has our caller's pace: the same pause)
        self.main: Any = make_main(self.kind_main, nonce, reference=scenario.main == 'ours')
        self.rig: Any = make_rig(self.kind_rig, nonce)
        self.experiment = RigExperiment('rig', clock=lambda: self.net.now)  # the rig application's, as RigServer's
        self.handlings: list[tuple[float, bytes, list]] = []   # (time, request value, answer)
        self.requests: collections.Counter = collections.Counter()
        self.checked: collections.Counter = collections.Counter()  # handlings that handled_once counts, by value
        self._request_ids: dict[int, str] = {}  # our rig's Handle token -> the ID of the tagged request
        self._request_data: dict[int, tuple[bytes, int]] = {}  # a program rig's Handle token -> (the datagram
        #                                                        it took, which copy of it the network delivered)
        self.crashed_on: tuple[bytes, int] | None = None  # the same, of the handler that crashed the program
        self.rig_sent: set[bytes] = set()  # what a program rig sent (its echoes and answers)
        self._handled_ids: set[str] = set()
        self._given: collections.Counter = collections.Counter()  # requests given to the handler, by value
        self._fails: dict[int, bool] = {}  # Handle token -> whether that handler raises
        self.fatal: tuple[str, int, bytes] | None = None  # (kind, copy, datagram) an iblutil peer died of
        self.unechoed: list[tuple[bytes, float]] = []  # datagrams our peer received and did not echo, when
        self.results: list[tuple[int, str, Any]] = []
        self.violations: set[str] = set()
        self._outcome: tuple[str, Any] | None = None
        self._outcomes: dict[int, tuple[str, Any]] = {}  # a naive main's outcomes, by token
        self._request_sent = False
        self.storm_cut: set[bytes] = set()  # datagrams our main stopped echoing as a storm (M21)
        self._timers = {'main': None, 'rig': None}

    # --- plumbing: events from the peers ---
    def main_events(self, events: list, kind: str = 'echo') -> None:
        for e in events:
            if isinstance(e, core.Send):
                if kind in ('request', 'resend') and not self._request_sent:  # (a request held for the pause)
                    kind, self._request_sent = 'request', True
                self.net.transmit(0, e.datagram, self.to_rig, kind)
            elif isinstance(e, core.Answered):
                self._outcome = self._outcomes[e.exchange] = ('answer', e.data)
            elif isinstance(e, core.Failed):
                self._outcome = self._outcomes[e.exchange] = ('failed', (e.stage, e.detail))
        self._arm('main', self.main)

    def rig_events(self, events: list, kind: str = 'echo') -> None:
        for e in events:
            if isinstance(e, core.Send):
                if isinstance(self.rig, VideoProgram):
                    self.rig_sent.add(e.datagram)
                self.net.transmit(1, e.datagram, self.to_main, kind)
            elif isinstance(e, core.Handle):
                delay, self._fails[e.request] = self.handler_fate(e.message)
                if isinstance(self.rig, NaiveRig):  # it answers in its receive loop, at once
                    delay = 0.0
                self.net.at(self.net.now + delay, functools.partial(self.handle, e))
        self._arm('rig', self.rig)

    def _arm(self, name: str, peer: Any) -> None:
        when = peer.wakeup
        if when is not None and when != self._timers[name]:
            self._timers[name] = when
            tick = (lambda: self.main_events(self.main.tick(self.net.now), 'resend')) if name == 'main' else (
                lambda: self.rig_events(self.rig.tick(self.net.now), 'resend'))
            self.net.at(when, tick)

    def to_rig(self, data: bytes) -> None:
        if isinstance(self.rig, IblutilRig) and not self.rig.alive:  # its socket is closed: port unreachable
            self.main_events(self.main.abort('refused', 'port unreachable'))
            return
        alive, answered = getattr(self.rig, 'alive', True), getattr(self.rig, 'state', '') == core.ANSWERED
        events = self.rig.receive(data, self.net.now)
        if alive and not getattr(self.rig, 'alive', True) and self.net.arriving:
            self.fatal = (*self.net.arriving, data)
        # (taken for the echo of its answer, as iblutil takes what equals the datagram whose echo it awaits)
        self._note_unechoed(self.rig, data, events, answered and self.rig.state == core.DONE)
        if data[:1] == b'{':
            for e in events_of(events, core.Handle):
                self._request_ids[e.request] = dialect.parse(data).msg_id or ''
        if isinstance(self.rig, VideoProgram):
            for e in events_of(events, core.Handle):
                self._request_data[e.request] = (data, self.net.arriving[1] if self.net.arriving else 0)
        self.rig_events(events)

    def to_main(self, data: bytes) -> None:
        alive, cuts = getattr(self.main, 'alive', True), core.ROWS['M21']
        events = self.main.receive(data, self.net.now)
        if alive and not getattr(self.main, 'alive', True) and self.net.arriving:
            self.fatal = (*self.net.arriving, data)
        self._note_unechoed(self.main, data, events, bool(events_of(events, core.Echoed)))
        if self.kind_main == 'ours' and core.ROWS['M21'] > cuts:
            self.storm_cut.add(data)  # M21: not echoed (a storm, or a bounce of our echo)
        self.main_events(events)

    def _note_unechoed(self, peer: Any, data: bytes, events: list, awaited: bool) -> None:
        """Remember a datagram that our peer neither echoed nor took for the echo it awaited (which is what
        iblutil does with it): an iblutil peer may be awaiting its echo."""
        if not isinstance(peer, (IblutilMain, IblutilRig)) and core.Send(data) not in events and not awaited:
            self.unechoed.append((data, self.net.now))

    # --- the rig's application ---
    def handler_fate(self, message: protocol.Message) -> tuple[float, bool]:
        """How long the handler takes and whether it raises: drawn from the request and how many times the
        rig was given it before, not from a shared stream, so that a run and its reference agree."""
        value = protocol.encode(message.event, *message.data)
        self._given[value] += 1
        digest = hashlib.blake2b(b'%d|%d|' % (self.s.seed, self._given[value]) + value, digest_size=8).digest()
        r = random.Random(int.from_bytes(digest, 'little'))
        return r.uniform(0, self.s.handler_delay), r.random() < self.s.fail_rate

    def handle(self, event: core.Handle) -> None:
        if not self.rig.is_current(event.request):  # superseded while its handler ran: its answer is not sent
            if isinstance(self.rig, core.RigConversation):
                self.rig_events(self.rig.answer(event.request, None, self.net.now), 'answer')  # (R13)
            return
        message = event.message
        value = protocol.encode(message.event, *message.data)
        k = len(self.handlings)
        msg_id = self._request_ids.pop(event.request, None)
        if self.kind_rig == 'ours' and msg_id is not None:  # a tagged request: once, by its ID
            if msg_id in self._handled_ids:
                self.violations.add('handled_once')
            self._handled_ids.add(msg_id)
        elif self.kind_rig == 'ours':
            # A plain request has no identity: a network duplicate of it, or of the main's echo of an answer
            # with the request's bytes (which a main that does not know its rig yet must echo: an iblutil rig
            # awaits it), is byte for byte the same main asking again, which an iblutil main does (status
            # polls), and which the rig must then handle as iblutil does. So on a network that duplicates, a
            # plain request may be handled twice (R14 keeps it there: a bounce of our echo is not handled);
            # once between our own peers otherwise.
            limit = 1 if self.kind_main == 'ours' and not self.s.duplicate else 2
            if self.checked[value] >= limit * self.requests[value]:
                self.violations.add('handled_once')
            self.checked[value] += 1
        answer: bytes | None
        if isinstance(self.rig, VideoProgram):  # a real program makes its own answer, and never raises
            self._fails.pop(event.request)
            answer = self.rig.respond(message, self.net.now)
            took = self._request_data.pop(event.request, None)
            if not self.rig.alive and self.crashed_on is None:
                self.crashed_on = took
            answer_value = [] if answer is None else protocol.decode(answer).data
        elif self._fails.pop(event.request):
            answer_value: list = ['error', k]
            answer = protocol.encode(0, f'RuntimeError: handler {k}', int(message.event))
        elif isinstance(self.rig, NaiveRig):  # it answers from its own state
            answer = self.rig.respond(message)
            answer_value = protocol.decode(answer).data
        else:
            answer_value, answer = self.answer(message, k)
        self.handlings.append((self.net.now, value, answer_value))
        self.rig_events(self.rig.answer(event.request, answer, self.net.now), 'answer')

    @property
    def status(self) -> ExpStatus:
        """ExpStatus: the status of the rig application's experiment."""
        return self.experiment.status

    def answer(self, message: protocol.Message, k: int) -> tuple[list, bytes | None]:
        """The rig's answer to `message`, made as RigServer makes it (by :class:`RigExperiment`) with a
        handler whose data carry the handling number k, unless answers are the plain ones iblrig's rigs
        give (then often the request's very bytes: a handler that returns nothing)."""
        event, data = message
        returned: Any = None if self.s.same_bytes else {'k': k}
        if event is ExpMessage.EXPINFO:
            returned = {'k': k}
        elif event is ExpMessage.ALYX:
            returned = ('https://alyx.example.org', {'user': {'k': k}})
        answer = self.experiment.answer(event, data, 'main', lambda _: returned)  # (one main: it owns the rig)
        return ([] if answer is None else protocol.decode(answer).data), answer

    # --- the main's caller ---
    def request_for(self, call: str, arg: Any, n: int) -> bytes:
        ref = PROGRAM_REF if self.kind_rig in ('timeline', 'video') else f'2026-11-25_{n}_mouse'
        if call == 'info':
            info = {'subject': 'mouse', 'main_sync': False}
            if self.s.announce:  # the same bytes whoever the main, so that traces compare
                info[dialect.PEER_KEY] = dialect.PEER_VERSION
            return protocol.info_message('CONNECTED', info)
        if call == 'init':
            return protocol.init_message({'exp_ref': ref})
        if call == 'start':
            return protocol.start_message(ref)
        if call == 'status':
            return protocol.status_message('CONNECTED')
        if call == 'stop' and self.kind_main == 'iblrig':
            return iblrig_stop({'error': 'RuntimeError', 'message': 'Bpod'} if arg else None, immediately=bool(arg))
        if call == 'stop':
            return protocol.stop_message(None, immediately=bool(arg))
        if call == 'alyx':
            return protocol.alyx_message(None)
        return protocol.cleanup_message()

    def execute(self) -> Run:
        junk = [b'', b'\xff\xfe', b'{"id": 3}', b'[999, 1]', b'[0]', b'hello', b'[32]', b'{"id": "x", "msg": 5}']
        for _ in range(self.s.junk):
            when, link = self.r.uniform(0, 0.5), self.r.randint(0, 1)
            data = self.r.choice(junk)
            deliver = self.to_rig if link == 0 else self.to_main
            self.net.at(when, functools.partial(self.net.arrive, deliver, data, 'junk', 0))
        if self.s.junk and self.kind_rig == 'ours' and random.Random(self.s.seed * 31 + 5).random() < 0.2:
            # a tagged message that answers nothing (M12); only where the rig is ours, which may send one
            stranger = b'{"id": "r0.1", "re": null, "msg": [64, 0, {}]}'
            self.net.at(0.25, functools.partial(self.net.arrive, self.to_main, stranger, 'junk', 0))
        flying: list[tuple[int, str, int]] = []  # a naive main's requests in flight: (call, name, token)
        for n, (call, arg) in enumerate(self.s.calls):
            # The task does something else between calls. With a real program or a naive peer the network
            # delivers meanwhile what is under way; the other pairings keep their first draws' harsher network,
            # which holds it back until the next request (so that their seeds replay as they always did).
            resume = self.net.now + self.r.uniform(0, self.s.gap)
            if n in self.s.together:  # a naive main's caller does not wait for the previous answer
                resume = self.net.now
            if self.s.pairing in PROGRAMS + NAIVE:
                self.net.run_until(lambda: False, resume)
            self.net.now = max(self.net.now, resume)
            plain = self.request_for(call, arg, n)
            self.requests[plain] += 1
            started = self.net.now
            # (iblrig's caller waits for its queue's next poll, then for the answer)
            deadline = started + self.s.timeout + (POLL if self.kind_main == 'iblrig' else 0.0)
            self._outcome = None
            self._request_sent = False  # its first send is the request, also when it comes from the timer
            if self.net.sent >= STORM:
                break
            tagged = getattr(self.main, 'tagged', False)
            self.main_events(self.main.request(plain, started, True, deadline), 'request')
            if isinstance(self.main, NaiveMain):
                flying.append((n, call, self.main.token))
                if n + 1 not in self.s.together:  # wait for every answer in flight (or the last deadline)
                    self.net.run_until(lambda: all(t in self._outcomes for _, _, t in flying), deadline)
                    if not all(t in self._outcomes for _, _, t in flying):
                        self.net.now = max(self.net.now, deadline)
                        self.main_events(self.main.give_up(self.net.now))
                    self.results += [(m, name, self._outcomes[t]) for m, name, t in flying]
                    flying = []
                continue
            self.net.run_until(lambda: self._outcome is not None, deadline)
            if self._outcome is None:  # the caller's own wait ends at the deadline
                self.net.now = max(self.net.now, deadline)
                self.main_events(self.main.give_up(self.net.now))
            assert self._outcome is not None
            if self.net.now > deadline + 1e-9 and self.kind_main == 'ours':
                self.violations.add('deadline')
            self.results.append((n, call, self._outcome))
            if self.kind_main == self.kind_rig == 'ours' and tagged:
                # (plain exchanges, before the peers know each other, have iblutil's ambiguities)
                self.check_answer(plain, started, self._outcome)
        end = self.net.now
        horizon = end + QUIET
        self.net.run_until(lambda: False, horizon)
        # Still talking: a chain that each network duplicate feeds anew (an iblutil rig runs its handler on
        # a copy of an echo, and answers when done: with 12 s handlers, one link every few seconds) ends by
        # itself; a storm needs nothing new and runs until FOLLOW or STORM. (A reference run is not followed.)
        while self.follow and self.talking(horizon) and horizon < end + FOLLOW and self.net.sent < STORM:
            horizon += QUIET
            self.net.run_until(lambda: False, horizon)
        self.stormed = self.net.sent >= STORM or self.talking(horizon)
        return self

    def talking(self, horizon: float) -> bool:
        """Whether a peer sent something in the last SILENT seconds before `horizon`."""
        return self.net.last_send > horizon - SILENT

    def check_answer(self, plain: bytes, started: float, outcome: tuple[str, Any]) -> None:
        """The answer (or error report) must come from a handling of this very request."""
        kind, value = outcome
        if kind == 'failed' and value[0] == 'error report':
            k = int(value[1].rsplit(' ', 1)[-1]) if value[1].startswith('RuntimeError: handler') else -1
            ok = 0 <= k < len(self.handlings) and self.handlings[k][1] == plain and self.handlings[k][0] >= started
            if not ok:
                self.violations.add('no_crossed')
        elif kind == 'answer' and value is not None and not self.s.same_bytes:
            number = _handling_number(value)
            if number is not None:
                handling = self.handlings[number] if 0 <= number < len(self.handlings) else None
                ok = handling is not None and handling[1] == plain and handling[0] >= started
                if not ok:
                    self.violations.add('no_crossed')
            elif protocol.decode(plain).event not in (ExpMessage.EXPSTATUS,):
                self.violations.add('no_crossed')  # an answer that no handling made

    @property
    def failed_calls(self) -> int:
        """Failed calls, but for a first call that is not an announced EXPINFO: until the rig's
        first answer tells that it runs iblnet_sync, the main is as fragile as iblutil's."""
        first_agrees = bool(self.results) and self.results[0][1] == 'info' and self.s.announce
        return sum(1 for n, _, (kind, _) in self.results if kind == 'failed' and (n > 0 or first_agrees))

    @property
    def program_works(self) -> bool:
        """Every call got its answer, but those the program rig never answers, which ended 'no response'."""
        unanswered = UNANSWERED.get(self.kind_rig, set())
        for _, call, (kind, value) in self.results:
            expected = ('failed', 'no response') if call in unanswered else ('answer', None)
            if kind != expected[0] or (kind == 'failed' and value[0] != expected[1]):
                return False
        return len(self.results) == len(self.s.calls)

    @property
    def iblutil_dead(self) -> bool:
        peers = [p for p in (self.main, self.rig) if isinstance(p, (IblutilMain, IblutilRig))]
        return any(not p.alive for p in peers)

    @property
    def death_excused(self) -> bool:
        """Whether an iblutil peer that died was killed by nothing its iblutil counterpart would not have
        done in our peer's place. Our peers differ from iblutil's in a few ways only: the main resends,
        either side leaves some datagrams unechoed, and the rig marks its answers with a newline. So the
        death is ours when

        - our peer received what it awaits the echo of, and neither echoed it nor took it for the echo
          of its own (whatever then killed it: the wait's end, or the next datagram);
        - it timed out waiting for an echo, though the network lost neither what it sent nor the echo of
          it;
        - the wrong datagram it received while it awaited an echo was a resend, or a marked answer that
          unmarked would have been the awaited echo (an iblutil rig's answer equal to the request);
        - an iblutil rig answered twice at once (a second confirmed send replaces the first wait), having
          taken a resend of ours for a request, and the network lost neither the first answer nor its echo;
        - a program's handler crashed on a datagram of ours that was neither a network copy nor an echo of
          the program's own bytes (which iblutil's main sends just the same: the video program takes a copy
          of our echo of its answer for a request, and its handler fails on it).

        But a death awaiting the echo of bytes that our main stopped echoing as a storm (M21: echoed
        8 times in a burst, or a bounce of our echo) is excused: the price that the core's docstring states, which a
        reference run usually shows as iblutil's own storm, but not always with the video program, whose
        late re-arm makes the storm's start depend on micro-timing.

        Anything else (a third party's junk, a network duplicate, a request at the caller's pace, an
        echo, an answer when the handler is done) iblutil's own counterpart sends just the same, and
        whether it lands in an echo wait is timing, on which a run and its reference part.
        """
        for peer in (self.main, self.rig):
            if not isinstance(peer, (IblutilMain, IblutilRig)) or peer.alive or peer.cause is None:
                continue
            why, awaited, since = peer.cause
            if awaited in self.storm_cut:  # (whatever then ended its wait: the echo would not have come)
                return True  # M21's documented price: iblutil's main would have echoed that storm for ever
            if why != 'replaced' and any(data == awaited and when >= since for data, when in self.unechoed):
                return False
            lost = any(data == awaited and when >= since for _, data, when in self.net.lost)
            if why == 'no echo':
                return lost
            if why == 'replaced':  # (a wait whose datagram or echo the network lost dies anyway: 'no echo')
                return lost or (isinstance(peer, IblutilRig) and not peer.took_resend)
            if why == 'crashed':
                return self.crashed_on is not None and (self.crashed_on[1] > 0 or self.crashed_on[0] in self.rig_sent)
            if why == 'wrong echo' and self.fatal is not None:
                kind, copy, data = self.fatal
                marked = kind == 'answer' and data.endswith(dialect.PEER_SUFFIX) and data[:-1] == awaited
                return copy > 0 or not (kind == 'resend' or marked)
        return False

def make_main(kind: str, nonce: str, reference: bool = False) -> Any:
    """The main peer of a kind: 'ours', 'iblutil', 'iblrig' or 'naive'; iblutil's with our pause in a
    `reference` run."""
    if kind == 'ours':
        return core.MainConversation(nonce)
    if kind == 'iblrig':
        return IblrigMain()
    if kind == 'naive':
        return NaiveMain()
    return IblutilMain(pause=core.PAUSE if reference else 0.0)


def make_rig(kind: str, nonce: str) -> Any:
    """The rig peer of a kind: 'ours', 'iblutil', 'timeline', 'video' or 'naive'."""
    if kind == 'ours':
        return core.RigConversation(nonce)
    if kind == 'timeline':
        return Timeline(PROGRAM_REF)
    if kind == 'naive':
        return NaiveRig()
    return VideoProgram() if kind == 'video' else IblutilRig()


def _handling_number(data: list) -> int | None:
    for item in data:
        if isinstance(item, dict):
            if isinstance(item.get('k'), int):
                return item['k']
            if isinstance(item.get('user'), dict):
                return item['user'].get('k')
    return None


def simulate(seed: int, trace: Callable[[str], None] | None = None,
             pairing: str | None = None) -> tuple[Scenario, set[str], Run]:
    """Run one scenario (of `pairing`, when given) and check every invariant; return what it violated."""
    scenario = Scenario.draw(seed) if pairing is None else Scenario.draw(seed, pairing=pairing)
    run = Run(scenario, trace=trace).execute()
    violations = set(run.violations)
    if scenario.main == 'ours' and scenario.rig == 'ours' and scenario.default_settings and run.failed_calls:
        violations.add('no_failure')
    if scenario.pairing in PROGRAMS and scenario.clean and not run.program_works:
        violations.add('program_works')
    if run.stormed:  # whoever the peer: no storm survives, even where iblutil's own pair storms
        violations.add('bounded')
    if 'ours' in (scenario.main, scenario.rig) and run.iblutil_dead:
        # compare with iblutil's own counterpart on the same network
        reference = Run(scenario, main='iblutil' if scenario.main == 'ours' else scenario.main,
                        rig='iblutil' if scenario.rig == 'ours' else scenario.rig, follow=False).execute()
        # Decidable only when iblutil's own pair loses nobody: once a reference peer dies, the traces part
        # (a dead iblutil main stops talking, so its rig lives on untested) and iblutil does not survive
        # this network either. Some deaths are no counterpart's doing (see Run.death_excused).
        undecided = reference.iblutil_dead or reference.stormed
        if run.iblutil_dead and not (run.death_excused or undecided):
            violations.add('iblutil_alive')
    return scenario, violations, run


def soak(scenarios: int, seed: int = 0, pairing: str | None = None) -> tuple[collections.Counter, dict[str, int]]:
    """Run `scenarios` scenarios from `seed` on (all of `pairing`, when given); count violations and keep
    the first seed of each."""
    counts: collections.Counter = collections.Counter()
    first: dict[str, int] = {}
    for s in range(seed, seed + scenarios):
        _, violations, _ = simulate(s, pairing=pairing)
        for v in violations:
            counts[v] += 1
            first.setdefault(v, s)
    return counts, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m tests.simulation',
                                     description='Run the protocol cores through seeded faulty networks.')
    parser.add_argument('--scenarios', type=int, default=20000, help='how many scenarios (default 20000)')
    parser.add_argument('--seed', type=int, default=0, help='the first seed (default 0)')
    parser.add_argument('--replay', type=int, metavar='SEED', help='run one scenario and print its trace')
    parser.add_argument('-v', '--verbose', action='store_true', help='with --replay: print every datagram')
    parser.add_argument('--pairing', choices=list(PAIRINGS),
                        help='every scenario with these peers (default: drawn); also for --replay')
    args = parser.parse_args(argv)
    if args.replay is not None:
        print(Scenario.draw(args.replay, pairing=args.pairing))
        scenario, violations, run = simulate(args.replay, trace=print if args.verbose else None,
                                             pairing=args.pairing)
        for n, call, outcome in run.results:
            print(f'  call {n} {call}: {outcome}')
        print('violations:', sorted(violations) or 'none')
        return 1 if violations else 0
    import logging
    import time
    library = logging.getLogger('iblnet_sync')
    level = library.level
    library.setLevel(logging.ERROR)  # storms are counted, not logged
    try:
        started = time.perf_counter()
        counts, first = soak(args.scenarios, args.seed, args.pairing)
        elapsed = time.perf_counter() - started
    finally:
        library.setLevel(level)
    which = f' of pairing {args.pairing}' if args.pairing else ''
    print(f'{args.scenarios} scenarios{which} from seed {args.seed} in {elapsed:.1f} s')
    for name in INVARIANTS:
        extra = f' (first seed {first[name]})' if name in first else ''
        print(f'  {name:14s} violated in {counts[name]} scenarios{extra}')
    taken = sorted(core.ROWS.items(), key=lambda item: (item[0][0], int(item[0][1:])))
    print('  rows taken:', ', '.join(f'{row} {n:,}' for row, n in taken))
    return 1 if counts else 0


if __name__ == '__main__':
    sys.exit(main())
