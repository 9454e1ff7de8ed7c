#!/usr/bin/env python3
"""A deterministic network simulator for the protocol cores, with invariants checked after each run.

One main and one auxiliary rig talk through a seeded network that loses, duplicates, delays,
reorders and injects junk, on a virtual clock: thousands of lifecycles a second, every one
reproducible from its seed. The peers are our cores (:mod:`iblnet_sync.core`) and behavioural
models of iblutil's main and rig (:mod:`iblutil_models`, checked against the real iblutil by
``tests/test_iblutil_models.py``).

Usage::

    python tests/simulation.py --scenarios 100000 --seed 1     # a soak: prints the invariant counts
    python tests/simulation.py --replay 123456 -v               # one scenario, with its trace

Invariants (a scenario violates one or more; the counts say how often):

- ``handled_once``: our rig never runs a handler more often than the main's caller asked;
- ``no_crossed``: no caller receives an answer or error report made for another request;
- ``deadline``: every call ends (answer or failure) by its deadline;
- ``bounded``: the peers fall silent after the lifecycle (no storm survives);
- ``no_failure``: between our own peers, with loss up to 20% each way and default settings,
  every call succeeds;
- ``iblutil_alive``: an iblutil peer is never killed (its socket closed) on a network trace on
  which iblutil's own counterpart would have kept it alive.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import heapq
import itertools
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
from iblutil_models import IblutilMain, IblutilRig  # noqa: E402

from iblnet_sync import core, protocol  # noqa: E402
from iblnet_sync.protocol import ExpMessage, ExpStatus  # noqa: E402

INVARIANTS = ('handled_once', 'no_crossed', 'deadline', 'bounded', 'no_failure', 'iblutil_alive')
DEFAULT_TIMEOUT = 10.0
QUIET = 30.0  # virtual seconds after the lifecycle within which every peer must fall silent
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

    @classmethod
    def draw(cls, seed: int) -> Scenario:
        r = random.Random(seed)
        pairing = r.choices([('ours', 'ours'), ('ours', 'iblutil'), ('iblutil', 'ours')], [6, 2, 2])[0]
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
        return cls(
            seed=seed, main=pairing[0], rig=pairing[1],
            loss=(r.uniform(0, loss_max), r.uniform(0, loss_max)),
            duplicate=0.0 if calm else r.choice([0.0, 0.02, 0.1]),
            reorder=0.0 if calm else r.choice([0.0, 0.05, 0.2]),
            delay=r.uniform(0.0001, 0.002), junk=0 if calm else r.choice([0, 0, 1, 4]),
            handler_delay=r.choice([0.001, 0.01, 0.3]) if not slow else r.choice([1.5, 4.0, 12.0]),
            timeout=DEFAULT_TIMEOUT if r.random() < 0.8 else r.choice([0.05, 0.3, 1.0, 3.0]),
            same_bytes=r.random() < 0.5, announce=pairing[0] == 'ours',
            fail_rate=0.0 if r.random() < 0.7 else 0.1, calls=calls)

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

    def transmit(self, link: int, data: bytes, deliver: Callable[[bytes], None]) -> None:
        """Send `data` over link 0 (main->rig) or 1 (rig->main)."""
        self.sent += 1
        self.last_send = self.now
        key = (link, data)
        self._copies[key] += 1
        digest = hashlib.blake2b(b'%d|%d|%d|' % (self.s.seed, link, self._copies[key]) + data, digest_size=8)
        r = random.Random(int.from_bytes(digest.digest(), 'little'))
        if self.trace:
            self.trace(f'{self.now:9.4f} {"main->rig" if link == 0 else "rig->main"} {data[:90]!r}')
        if r.random() < self.s.loss[link]:
            if self.trace:
                self.trace('          (lost)')
            return
        copies = 2 if r.random() < self.s.duplicate else 1
        for _ in range(copies):
            arrival = self.now + self.s.delay * r.uniform(0.5, 1.5)
            if r.random() < self.s.reorder:  # overtaken by what follows
                arrival += r.uniform(0.0, 0.03)
            else:  # a link keeps its order otherwise
                arrival = self._last_arrival[link] = max(arrival, self._last_arrival[link])
            self.at(arrival, lambda: deliver(data))


class Run:
    """One scenario: the caller's lifecycle at the main, the rig's handlers, the checks."""

    def __init__(self, scenario: Scenario, main: str | None = None, rig: str | None = None,
                 trace: Callable[[str], None] | None = None):
        self.s = scenario
        self.kind_main, self.kind_rig = main or scenario.main, rig or scenario.rig
        self.net = Network(scenario, trace)
        self.trace = trace
        self.r = random.Random(scenario.seed * 7919 + 1)
        nonce = f'{scenario.seed:x}'
        self.main: Any = (core.MainConversation(nonce) if self.kind_main == 'ours' else IblutilMain())
        self.rig: Any = (core.RigConversation(nonce) if self.kind_rig == 'ours' else IblutilRig())
        self.status = ExpStatus.CONNECTED
        self.handlings: list[tuple[float, bytes, list]] = []   # (time, request value, answer)
        self.requests: collections.Counter = collections.Counter()
        self.results: list[tuple[int, str, Any]] = []
        self.violations: set[str] = set()
        self._outcome: tuple[str, Any] | None = None
        self._timers = {'main': None, 'rig': None}

    # --- plumbing: events from the peers ---
    def main_events(self, events: list) -> None:
        for e in events:
            if isinstance(e, core.Send):
                self.net.transmit(0, e.datagram, self.to_rig)
            elif isinstance(e, core.Answered):
                self._outcome = ('answer', e.data)
            elif isinstance(e, core.Failed):
                self._outcome = ('failed', (e.stage, e.detail))
        self._arm('main', self.main)

    def rig_events(self, events: list) -> None:
        for e in events:
            if isinstance(e, core.Send):
                self.net.transmit(1, e.datagram, self.to_main)
            elif isinstance(e, core.Handle):
                delay = self.r.uniform(0, self.s.handler_delay)
                self.net.at(self.net.now + delay, lambda e=e: self.handle(e))
        self._arm('rig', self.rig)

    def _arm(self, name: str, peer: Any) -> None:
        when = peer.wakeup
        if when is not None and when != self._timers[name]:
            self._timers[name] = when
            tick = (lambda: self.main_events(self.main.tick(self.net.now))) if name == 'main' else (
                lambda: self.rig_events(self.rig.tick(self.net.now)))
            self.net.at(when, tick)

    def to_rig(self, data: bytes) -> None:
        if isinstance(self.rig, IblutilRig) and not self.rig.alive:  # its socket is closed: port unreachable
            self.main_events(self.main.abort('refused', 'port unreachable'))
            return
        self.rig_events(self.rig.receive(data, self.net.now))

    def to_main(self, data: bytes) -> None:
        self.main_events(self.main.receive(data, self.net.now))

    # --- the rig's application ---
    def handle(self, event: core.Handle) -> None:
        if not self.rig.is_current(event.request):
            return  # superseded before its handler ran: not handled
        message = event.message
        value = protocol.encode(message.event, *message.data)
        k = len(self.handlings)
        handled = sum(1 for h in self.handlings if h[1] == value)
        if handled >= self.requests[value] and self.kind_rig == 'ours' and self.kind_main == 'ours':
            # (an iblutil main takes a duplicated echo for a new request and sends it: iblutil's own flaw)
            self.violations.add('handled_once')
        if self.r.random() < self.s.fail_rate:
            answer_value: list = ['error', k]
            answer = protocol.encode(0, f'RuntimeError: handler {k}', int(message.event))
        else:
            answer_value, answer = self.answer(message, k)
        self.handlings.append((self.net.now, value, answer_value))
        self.rig_events(self.rig.answer(event.request, answer, self.net.now))

    def answer(self, message: protocol.Message, k: int) -> tuple[list, bytes | None]:
        """The rig's answer to `message`; data carry the handling number k unless answers
        are the plain ones iblrig's rigs give (then often the request's very bytes)."""
        event, data = message
        tag = None if self.s.same_bytes else {'k': k}
        if event is ExpMessage.EXPINFO:
            fields = [int(self.status), {'main_sync': True, 'exp_ref': None, 'k': k}]
        elif event is ExpMessage.EXPSTATUS:
            fields = [int(self.status)]
        elif event is ExpMessage.EXPINIT:
            self.status = ExpStatus.INITIALIZED
            fields = [int(self.status), tag]
        elif event is ExpMessage.EXPSTART:
            self.status = ExpStatus.RUNNING
            fields = [data[0] if data else None, tag]
        elif event in (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT):
            self.status = ExpStatus.STOPPED
            fields = [tag]
        elif event is ExpMessage.ALYX:
            fields = ['https://alyx.example.org', {'user': {'k': k}}]
        else:
            fields = [tag]
        return fields, protocol.encode(event, *fields)

    # --- the main's caller ---
    def request_for(self, call: str, arg: Any, n: int) -> bytes:
        if call == 'info':
            info = {'subject': 'mouse', 'main_sync': False}
            if self.s.announce:  # the same bytes whoever the main, so that traces compare
                info[protocol.PEER_KEY] = protocol.PEER_VERSION
            return protocol.info_message('CONNECTED', info)
        if call == 'init':
            return protocol.init_message({'exp_ref': f'2026-11-25_{n}_mouse'})
        if call == 'start':
            return protocol.start_message(f'2026-11-25_{n}_mouse')
        if call == 'status':
            return protocol.status_message('CONNECTED')
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
            self.net.at(when, (lambda d=data: self.to_rig(d)) if link == 0 else (lambda d=data: self.to_main(d)))
        for n, (call, arg) in enumerate(self.s.calls):
            self.net.now += self.r.uniform(0, 0.02)  # the task does something else between calls
            plain = self.request_for(call, arg, n)
            self.requests[plain] += 1
            started = self.net.now
            deadline = started + self.s.timeout
            self._outcome = None
            if self.net.sent >= STORM:
                break
            tagged = getattr(self.main, 'tagged', False)
            self.main_events(self.main.request(plain, started, True, deadline))
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
        self.net.run_until(lambda: False, end + QUIET)
        self.stormed = self.net.sent >= STORM or self.net.last_send > end + QUIET - 5
        return self

    def check_answer(self, plain: bytes, started: float, outcome: tuple[str, Any]) -> None:
        """The answer (or error report) must come from a handling of this very request."""
        kind, value = outcome
        if kind == 'failed' and value[0] == 'error report':
            k = int(value[1].rsplit(' ', 1)[-1]) if value[1].startswith('RuntimeError: handler') else -1
            ok = 0 <= k < len(self.handlings) and self.handlings[k][1] == plain and self.handlings[k][0] >= started
            if not ok:
                self.violations.add('no_crossed')
        elif kind == 'answer' and value is not None and not self.s.same_bytes:
            k = _handling_number(value)
            if k is not None:
                ok = 0 <= k < len(self.handlings) and self.handlings[k][1] == plain and self.handlings[k][0] >= started
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
    def iblutil_dead(self) -> bool:
        peers = [p for p in (self.main, self.rig) if isinstance(p, (IblutilMain, IblutilRig))]
        return any(not p.alive for p in peers)


def _handling_number(data: list) -> int | None:
    for item in data:
        if isinstance(item, dict):
            if isinstance(item.get('k'), int):
                return item['k']
            if isinstance(item.get('user'), dict):
                return item['user'].get('k')
    return None


def simulate(seed: int, trace: Callable[[str], None] | None = None) -> tuple[Scenario, set[str], Run]:
    """Run one scenario and check every invariant; return what it violated."""
    scenario = Scenario.draw(seed)
    run = Run(scenario, trace=trace).execute()
    violations = set(run.violations)
    if scenario.main == 'ours' and scenario.rig == 'ours' and scenario.default_settings and run.failed_calls:
        violations.add('no_failure')
    if 'iblutil' not in (scenario.main, scenario.rig):
        if run.stormed:
            violations.add('bounded')
    elif run.iblutil_dead or run.stormed:  # compare with iblutil's own counterpart on the same network
        reference = Run(scenario, main='iblutil', rig='iblutil').execute()
        if run.iblutil_dead and not reference.iblutil_dead and not reference.stormed:
            violations.add('iblutil_alive')
        if run.stormed and not reference.stormed:
            violations.add('bounded')
    return scenario, violations, run


def soak(scenarios: int, seed: int = 0) -> tuple[collections.Counter, dict[str, int]]:
    """Run `scenarios` scenarios from `seed` on; count violations and keep the first seed of each."""
    counts: collections.Counter = collections.Counter()
    first: dict[str, int] = {}
    for s in range(seed, seed + scenarios):
        _, violations, _ = simulate(s)
        for v in violations:
            counts[v] += 1
            first.setdefault(v, s)
    return counts, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Run the protocol cores through seeded faulty networks.')
    parser.add_argument('--scenarios', type=int, default=20000, help='how many scenarios (default 20000)')
    parser.add_argument('--seed', type=int, default=0, help='the first seed (default 0)')
    parser.add_argument('--replay', type=int, metavar='SEED', help='run one scenario and print its trace')
    parser.add_argument('-v', '--verbose', action='store_true', help='with --replay: print every datagram')
    args = parser.parse_args(argv)
    if args.replay is not None:
        scenario, violations, run = simulate(args.replay, trace=print if args.verbose else None)
        print(scenario)
        for n, call, outcome in run.results:
            print(f'  call {n} {call}: {outcome}')
        print('violations:', sorted(violations) or 'none')
        return 1 if violations else 0
    import time
    started = time.perf_counter()
    counts, first = soak(args.scenarios, args.seed)
    elapsed = time.perf_counter() - started
    print(f'{args.scenarios} scenarios from seed {args.seed} in {elapsed:.1f} s')
    for name in INVARIANTS:
        extra = f' (first seed {first[name]})' if name in first else ''
        print(f'  {name:14s} violated in {counts[name]} scenarios{extra}')
    return 1 if counts else 0


if __name__ == '__main__':
    sys.exit(main())
