#!/usr/bin/env python3
"""Run the protocol simulator against the rules of an older checkout (before the sans-I/O core).

The simulator (``tests/simulation.py``) drives two peers through seeded faulty networks on a
virtual clock and checks its invariants after each scenario. Here the peers that the simulator
calls ``ours`` are the old ``Communicator`` (main side) and the old ``RigServer`` (rig side) of
another checkout, loaded as the package ``iblnet_sync_legacy`` so that they never clash with the
current ``iblnet_sync``; the iblutil models and every invariant are the simulator's own.

How the old objects are driven:

- ``Communicator`` gets a socket whose ``send`` records datagrams and a dispatcher whose timers
  run on the virtual clock; ``time.monotonic`` in the old modules reads that clock. Each call is
  one ``submit``; the outcome of its exchange becomes ``Answered`` or ``Failed``, the caller's
  deadline ``Exchange.give_up``, a refused port ``error_received``.
- ``RigServer.__init__`` runs with a recording socket and the same kind of dispatcher. The jobs it
  queues for its callback thread become ``Handle`` events, one at a time as on that single thread;
  the simulator's answer goes to ``_answered`` as the old ``_handle`` did (an error report is sent
  at once, even for an overtaken request), and an EXPINFO answer says ``"resends": true`` as the
  old ``RigServer.info()`` did.
- The simulator's main announces itself in EXPINFO with today's key; the old rules read it as the
  old announcement (``"resends": true``), which the old NetworkSession sent in its place.
- A main is ``tagged`` (its answers are checked for crossing) once the old Communicator knows that
  the rig takes resends: the old counterpart of two iblnet_sync peers knowing each other.

Besides the invariant counts, each violating scenario is sorted into the failures listed in
issue 9 (see :data:`FAILURES`) by what the old code logged and what the run shows; the first
seed of each, and the seed with the mildest network, are printed so that they can be replayed.

Some of those failures need a behaviour that the simulator's draw never makes: a task that calls
start() again at once, an iblutil rig that repeats an answer. ``--probe`` adds one to every drawn
scenario (see :data:`PROBES`); the iblutil reference runs get it too, so the comparison is fair.

Usage::

    git -C /work/main worktree add /work/legacy 55ddea6       # the old checkout, outside the repo
    python tools/sim_legacy.py --legacy /work/legacy --scenarios 20000 --seed 0
    python tools/sim_legacy.py --legacy /work/legacy --scenarios 100000 --jobs 4
    python tools/sim_legacy.py --legacy /work/legacy --scenarios 20000 --probe repeat
    python tools/sim_legacy.py --legacy /work/legacy --replay 1234 -v      # one scenario, with its trace
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import heapq
import importlib.util
import itertools
import logging
import multiprocessing
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))
sys.path.insert(0, str(ROOT))
import simulation  # noqa: E402 (found through the path set just above)
from simulation import core, protocol  # noqa: E402

LEGACY_NAME = 'iblnet_sync_legacy'
RIG_ADDR = ('127.0.0.1', 11001)    # where the old Communicator believes its rig listens
MAIN_ADDR = ('127.0.0.1', 50123)   # the main's address as the old RigServer sees it
FAILURES = {
    'storm': 'an echo storm that never dies (the run stops at the simulator\'s storm limit of datagrams)',
    'late_talk': 'no storm, but datagrams long after the lifecycle (the old rig works through a queue of '
                 'overtaken requests, one handler after the other)',
    'storm_iblutil_main': 'a storm between an iblutil main and our rig',
    'storm_from_duplicate': 'a storm that the same network without duplicated datagrams does not have',
    'storm_handler_repeats': 'a storm in which the rig runs one request\'s handler 10 times or more',
    'storm_alternating': 'a storm of two datagrams taking turns, which the storm guard lets through',
    'status_poll': 'a status poll after the EXPINFO handshake fails "echoed but no response": its answer, the '
                   'same bytes as the last one, was taken for a repeat (echoed, not delivered)',
    'late_start': 'EXPSTART returns the answer made for an earlier start, with another reference',
    'crossed_error': 'a request fails with the error report made for an earlier (overtaken) request',
    'crossed_late_answer': 'another request returns an answer made for an earlier request',
    'crossed_echo': 'a request returns an answer that no handler made (an echo or a copy taken for it)',
    'rig_killed_duplicate': 'an iblutil rig killed: its answer not echoed, taken for a duplicate of the last one',
    'rig_killed_storm_guard': 'an iblutil rig killed: its message not echoed by the storm guard',
    'rig_killed_late_echo': 'an iblutil rig killed: its answer not echoed, taken for a late echo of ours',
    'rig_killed_other': 'an iblutil rig killed otherwise',
    'main_killed': 'an iblutil main killed where an iblutil rig would have kept it alive',
    'handled_twice': 'our rig ran a handler more often than the main asked',
    'failure_first_info': 'no_failure: the first EXPINFO failed (nothing is resent before the handshake)',
    'failure_other': 'no_failure: another call failed',
}
REPEAT = 'repeated response echoed, not delivered again'
_KILLS = {  # what the old main noted when it did not echo a datagram of the rig's
    'duplicate of the last response dropped': 'rig_killed_duplicate',
    'storm guard refused': 'rig_killed_storm_guard',
    'late echo of ours dropped': 'rig_killed_late_echo',
}
SWALLOWED = frozenset({REPEAT, *_KILLS})
PROBES = {  # behaviours that the simulator's draw does not make, added to each drawn scenario
    'retry': 'our main and rig; the task calls start() a second time at once (as after a timeout), '
             'with a new reference',
    'repeat': 'our main, an iblutil rig that sends its answer to the last call once more, 2 to 8 ms later',
    'several': 'our main, an iblutil rig that sends its answer to the last call 3 more times, 30 to 60 ms apart',
}
REPEATS = {'repeat': (1, (0.002, 0.008)), 'several': (3, (0.03, 0.06))}
HANDLER_REPEATS = 10


# --- the virtual clock, seen by the old modules as time.monotonic ---
class VirtualClock:
    """The simulator's time, set by the peers at each input, read by the old code."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        """Return the virtual time in seconds."""
        return self.now


class _TimeModule:
    """Stands in for the ``time`` module inside the old modules: ``monotonic`` is virtual."""

    def __init__(self, clock: VirtualClock):
        self.monotonic = clock.monotonic

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class Notes:
    """What the old code logged during the current scenario, as (virtual time, module, message template)."""

    def __init__(self, clock: VirtualClock):
        self.clock = clock
        self.items: list[tuple[float, str, str]] = []

    def add(self, module: str, text: str) -> None:
        """Record one note at the current virtual time."""
        self.items.append((self.clock.now, module, text))


class _NoteHandler(logging.Handler):
    def __init__(self, notes: Notes):
        super().__init__(logging.DEBUG)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        text = str(record.msg)
        self.notes.add(record.name.rsplit('.', 1)[-1], text.split(': ', 1)[-1] if text.startswith('%s: ') else text)


@dataclasses.dataclass
class Legacy:
    """The old package, loaded under another name, with its clock and its notes."""

    package: ModuleType
    clock: VirtualClock
    notes: Notes

    def module(self, name: str) -> ModuleType:
        """Return the old submodule `name`, e.g. ``'communicator'``."""
        return sys.modules[f'{LEGACY_NAME}.{name}']


def load_legacy(checkout: Path) -> Legacy:
    """Import the ``iblnet_sync`` package of `checkout` as ``iblnet_sync_legacy`` and patch its clock.

    Parameters
    ----------
    checkout : Path
        The root of the old checkout (a git worktree), holding ``iblnet_sync/__init__.py``.

    Returns
    -------
    Legacy
        The loaded package, the virtual clock its modules read and the notes they log.
    """
    if LEGACY_NAME in sys.modules:
        raise RuntimeError(f'{LEGACY_NAME} is loaded already')
    init = Path(checkout) / 'iblnet_sync' / '__init__.py'
    if not init.is_file():
        raise FileNotFoundError(f'no iblnet_sync package in {checkout}')
    spec = importlib.util.spec_from_file_location(LEGACY_NAME, init, submodule_search_locations=[str(init.parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[LEGACY_NAME] = package
    spec.loader.exec_module(package)
    clock = VirtualClock()
    notes = Notes(clock)
    legacy = Legacy(package, clock, notes)
    for name in ('communicator', 'exchange', 'guards', 'rig_server', 'dispatcher'):
        module = sys.modules.get(f'{LEGACY_NAME}.{name}')
        if module is not None and hasattr(module, 'time'):
            module.time = _TimeModule(clock)
    old_protocol = legacy.module('protocol')
    old_announces = old_protocol.announces_resends

    def announces_resends(message: Any) -> bool:
        """The old announcement, or the simulator's (today's) one in its place."""
        return old_announces(message) or protocol.announces_peer(message)

    old_protocol.announces_resends = announces_resends
    communicator = legacy.module('communicator')

    class RecordingGuard(legacy.module('guards').StormGuard):
        """The old storm guard, noting each datagram it refuses to echo."""

        def allow(self, datagram: bytes) -> bool:
            allowed = super().allow(datagram)
            if not allowed:
                notes.add('communicator', 'storm guard refused')
            return allowed

    communicator.StormGuard = RecordingGuard
    rig_server = legacy.module('rig_server')
    rig_server.Dispatcher = lambda name: FakeDispatcher(clock)
    rig_server.socket = _SocketModule()
    logger = logging.getLogger(LEGACY_NAME)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(_NoteHandler(notes))
    return legacy


# --- the old code's I/O, faked ---
class FakeSocket:
    """A datagram socket that records what is sent and never receives."""

    def __init__(self, *args: Any) -> None:
        self.sent: list[bytes] = []
        self._name = MAIN_ADDR

    def send(self, data: bytes) -> int:
        """Record `data` (a connected socket's send)."""
        self.sent.append(bytes(data))
        return len(data)

    def sendto(self, data: bytes, addr: Any) -> int:
        """Record `data` (the simulator has one peer, so `addr` is not kept)."""
        return self.send(data)

    def bind(self, address: tuple) -> None:
        """Pretend to bind; the bound address is the rig's."""
        self._name = RIG_ADDR

    def getsockname(self) -> tuple:
        """Return the address this socket pretends to have."""
        return self._name

    def setblocking(self, flag: bool) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to do."""


class _SocketModule:
    """Stands in for ``socket`` in the old rig_server module: its sockets are :class:`FakeSocket`."""

    socket = FakeSocket

    def __getattr__(self, name: str) -> Any:
        import socket
        return getattr(socket, name)


class FakeTimer:
    """A timer of :class:`FakeDispatcher`; ``cancel()`` stops it."""

    __slots__ = ('args', 'cancelled', 'function', 'when')

    def __init__(self, when: float, function: Callable, args: tuple):
        self.when, self.function, self.args, self.cancelled = when, function, args, False

    def cancel(self) -> None:
        """Do not run it."""
        self.cancelled = True


class FakeDispatcher:
    """The old dispatcher's interface on the virtual clock: timers run at ``run_due``, user
    callbacks are queued for the peer wrapper to run (the old code's callback thread)."""

    def __init__(self, clock: VirtualClock):
        self.clock = clock
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()
        self.callbacks: collections.deque[tuple[Callable, tuple]] = collections.deque()

    def register(self, sock: Any, endpoint: Any) -> None:
        """Nothing to read: the simulator hands datagrams to the endpoint itself."""

    def unregister(self, sock: Any) -> None:
        """Nothing to do."""

    def close(self) -> None:
        """Nothing to do."""

    def call_later(self, delay: float, function: Callable, *args: Any) -> FakeTimer:
        """Run ``function(*args)`` at virtual time now + `delay`."""
        timer = FakeTimer(self.clock.now + delay, function, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def run_callback(self, function: Callable, *args: Any) -> None:
        """Queue a job for the callback thread."""
        self.callbacks.append((function, args))

    @property
    def wakeup(self) -> float | None:
        """float, None: when the next timer is due."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def run_due(self, notes: Notes) -> None:
        """Run every timer due by now (those they make with no delay included)."""
        while (when := self.wakeup) is not None and when <= self.clock.now:
            timer = heapq.heappop(self._timers)[2]
            timer.cancelled = True
            _safely(notes, timer.function, *timer.args)


def _safely(notes: Notes, function: Callable, *args: Any) -> None:
    """Call into the old code as its dispatcher did: an exception is noted, never raised."""
    try:
        function(*args)
    except Exception as ex:  # noqa: BLE001 (the old network thread survived every endpoint bug)
        notes.add('wrapper', f'{getattr(function, "__name__", function)} raised {ex!r}')


# --- the old peers, as simulator peers ---
class LegacyMain:
    """The old ``Communicator`` with one rig, behind the interface of ``core.MainConversation``."""

    def __init__(self, legacy: Legacy):
        self._legacy, self._clock, self._notes = legacy, legacy.clock, legacy.notes
        self._sock = FakeSocket()
        self._dispatcher = FakeDispatcher(self._clock)
        self.communicator = legacy.package.Communicator(
            f'udp://{RIG_ADDR[0]}:{RIG_ADDR[1]}', name='rig', sock=self._sock, dispatcher=self._dispatcher)
        self._rig_error = legacy.module('errors').RigError
        self._token = 0
        self._exchange: Any = None
        self._echo_told = False
        self.calls: list[list[float]] = []                      # [start, end] of each call
        self.swallowed: list[tuple[float, bytes, str]] = []     # the rig's datagrams not echoed or not delivered

    @property
    def tagged(self) -> bool:
        """bool: the old main knows its rig takes resends (the old rules' exact mode)."""
        return self.communicator.takes_resends

    @property
    def wakeup(self) -> float | None:
        """float, None: when ``tick`` is next needed."""
        return self._dispatcher.wakeup

    def request(self, plain: bytes, now: float, expect_answer: bool = True,
                deadline: float | None = None) -> list[core.Event]:
        """Start one exchange, as ``Communicator.request`` did (the deadline is the simulator's)."""
        self._clock.now = now
        self._token += 1
        self.calls.append([now, now])
        try:
            self._exchange = self.communicator.submit(plain, expect_response=expect_answer, timeout=0)
            self._echo_told = False
        except self._rig_error as ex:
            return self._events(now) + [core.Failed(self._token, ex.stage, ex.detail)]
        return self._events(now)

    def receive(self, data: bytes, now: float) -> list[core.Event]:
        """A datagram from the rig."""
        self._clock.now = now
        noted = len(self._notes.items)
        _safely(self._notes, self.communicator.datagram_received, data, RIG_ADDR)
        for _, _, text in self._notes.items[noted:]:
            if text in SWALLOWED:
                self.swallowed.append((now, data, text))
        return self._events(now)

    def tick(self, now: float) -> list[core.Event]:
        """Run the timers due by `now` (resends, echo deadlines)."""
        self._clock.now = now
        return self._events(now)

    def give_up(self, now: float) -> list[core.Event]:
        """The caller's deadline passed: the old ``Exchange.result`` gave up."""
        self._clock.now = now
        if self._exchange is not None and not self._exchange.done:
            self._exchange.give_up()
        return self._events(now)

    def abort(self, stage: str, detail: str) -> list[core.Event]:
        """A socket error (the simulator only reports a refused port)."""
        error = ConnectionRefusedError(detail) if stage == 'refused' else OSError(detail)
        _safely(self._notes, self.communicator.error_received, error)
        return self._events(self._clock.now)

    def _events(self, now: float) -> list[core.Event]:
        self._dispatcher.run_due(self._notes)
        events: list[core.Event] = [core.Send(d) for d in self._sock.sent]
        self._sock.sent.clear()
        exchange = self._exchange
        if exchange is None:
            return events
        if exchange.echoed and not self._echo_told:
            self._echo_told = True
            events.append(core.Echoed(self._token, exchange.echo_at))
        if exchange.done:
            self._exchange = None
            self.calls[-1][1] = now
            error = exchange.outcome.exception()
            if error is None:
                events.append(core.Answered(self._token, exchange.outcome.result(), now))
            else:
                events.append(core.Failed(self._token, getattr(error, 'stage', 'failed'),
                                          getattr(error, 'detail', str(error))))
        return events


class LegacyRig:
    """The old ``RigServer`` with one main, behind the interface of ``core.RigConversation``."""

    def __init__(self, legacy: Legacy):
        self._legacy, self._clock, self._notes = legacy, legacy.clock, legacy.notes
        self._protocol = legacy.module('protocol')
        self.server = legacy.package.RigServer(f'udp://{RIG_ADDR[0]}:{RIG_ADDR[1]}', name='rig')
        self._sock: FakeSocket = self.server._sock
        self._dispatcher: FakeDispatcher = self.server._dispatcher
        self._jobs: dict[int, tuple] = {}
        self._running: int | None = None   # the job on the (one) callback thread
        self._count = itertools.count(1)

    @property
    def wakeup(self) -> float | None:
        """float, None: when ``tick`` is next needed."""
        return self._dispatcher.wakeup

    def is_current(self, request: int) -> bool:
        """The old callback thread ran every job it was given."""
        return True

    def receive(self, data: bytes, now: float) -> list[core.Event]:
        """A datagram from the main."""
        self._clock.now = now
        _safely(self._notes, self.server.datagram_received, data, MAIN_ADDR)
        return self._events()

    def answer(self, request: int, answer: bytes | None, now: float) -> list[core.Event]:
        """The handler of job `request` finished with `answer`: what the old ``_handle`` did next."""
        self._clock.now = now
        _, args = self._jobs.pop(request)
        _, addr, peer, value = args
        if self._running == request:
            self._running = None
        if answer is not None and answer[1:2] == b'0':  # an error report: sent at once, overtaken or not
            self.server._send(answer, addr)
            answer = None
        elif answer is not None:
            answer = self._with_resends(answer)
        _safely(self._notes, self.server._answered, addr, peer, value, answer)
        return self._events()

    def tick(self, now: float) -> list[core.Event]:
        """Run the timers due by `now` (answer resends)."""
        self._clock.now = now
        return self._events()

    def _with_resends(self, answer: bytes) -> bytes:
        """An EXPINFO answer as the old RigServer made it: its info says it takes resends."""
        message = self._protocol.decode(answer)
        if message.event is protocol.ExpMessage.EXPINFO and len(message.data) > 1 and isinstance(message.data[1], dict):
            info = {**message.data[1], self._protocol.RESENDS_KEY: True}
            return self._protocol.encode(message.event, message.data[0], info, *message.data[2:])
        return answer

    def _events(self) -> list[core.Event]:
        self._dispatcher.run_due(self._notes)
        events: list[core.Event] = [core.Send(d) for d in self._sock.sent]
        self._sock.sent.clear()
        if self._running is None and self._dispatcher.callbacks:
            function, args = self._dispatcher.callbacks.popleft()
            if getattr(function, '__name__', '') != '_handle':
                raise RuntimeError(f'unexpected job for the callback thread: {function!r}')
            token = next(self._count)
            self._jobs[token] = (function, args)
            self._running = token
            events.append(core.Handle(token, args[0]))
        return events


# --- the simulator's Run, with the old peers for 'ours' ---
class LegacyRun(simulation.Run):
    """A :class:`simulation.Run` whose ``ours`` peers are the old Communicator and RigServer."""

    legacy: Legacy | None = None
    probe: str | None = None
    WIRE = 200   # datagrams of the end of the run kept to describe a storm

    def __init__(self, scenario: simulation.Scenario, main: str | None = None, rig: str | None = None,
                 trace: Callable[[str], None] | None = None):
        super().__init__(scenario, main, rig, trace)
        legacy = self.legacy
        assert legacy is not None, 'call install() first'
        legacy.clock.now = 0.0
        if 'ours' in (self.kind_main, self.kind_rig):  # (a reference run, iblutil only, keeps the notes it checks)
            legacy.notes.items = []
            self.notes = legacy.notes.items
        if self.kind_main == 'ours':
            self.main = LegacyMain(legacy)
        if self.kind_rig == 'ours':
            self.rig = LegacyRig(legacy)
        elif self.probe in REPEATS:
            self._repeat_answers(*REPEATS[self.probe])
        self.crossed: list[tuple[int, bytes, tuple]] = []
        self.wire: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=self.WIRE)
        transmit = self.net.transmit

        def recorded(link: int, data: bytes, *args: Any, **kwargs: Any) -> None:
            self.wire.append((link, data))
            transmit(link, data, *args, **kwargs)

        self.net.transmit = recorded

    def _repeat_answers(self, copies: int, spacing: tuple[float, float]) -> None:
        """Probe: the iblutil rig sends its answer to the last call `copies` more times, `spacing` seconds apart
        (earlier answers are not repeated: an iblutil main would die of a repeat while it awaits the echo of
        its next request, so iblutil's own pair could not tell whether our main does worse)."""
        rig, r = self.rig, random.Random(self.s.seed * 31 + 7)
        answer = rig.answer

        def repeating(request: int, data: bytes | None, now: float) -> list[core.Event]:
            events = answer(request, data, now)
            if data is not None and data[1:2] != b'0' and len(self.results) == len(self.s.calls) - 1:
                when = now
                for _ in range(copies):
                    when += r.uniform(*spacing)
                    self.net.at(when, lambda: self.rig_events(answer(request, data, self.net.now)))
            return events

        rig.answer = repeating

    def check_answer(self, plain: bytes, started: float, outcome: tuple[str, Any]) -> None:
        """The simulator's check, remembering which call crossed."""
        kept, self.violations = self.violations, set()
        try:
            super().check_answer(plain, started, outcome)
            if self.violations:
                self.crossed.append((len(self.results) - 1, plain, outcome))
        finally:
            self.violations |= kept


def install(checkout: Path, probe: str | None = None) -> Legacy:
    """Load the old package and make the simulator's runs use :class:`LegacyRun`.

    Parameters
    ----------
    checkout : Path
        The root of the old checkout.
    probe : str, optional
        A key of :data:`PROBES`: scenarios drawn as usual, then given that behaviour.
    """
    legacy = load_legacy(checkout)
    LegacyRun.legacy, LegacyRun.probe = legacy, probe
    simulation.Run = LegacyRun  # simulate() builds its runs (and the iblutil reference runs) from this name
    if probe is not None:
        draw = simulation.Scenario.draw.__func__

        def probe_draw(cls: type, seed: int) -> simulation.Scenario:
            s = draw(cls, seed)
            if probe == 'retry':
                calls = [c for call in s.calls for c in ([call, call] if call[0] == 'start' else [call])]
                return dataclasses.replace(s, main='ours', rig='ours', announce=True, calls=calls)
            return dataclasses.replace(s, main='ours', rig='iblutil', announce=True)

        simulation.Scenario.draw = classmethod(probe_draw)
    return legacy


# --- sorting violations into the known failures ---
def classify(scenario: simulation.Scenario, violations: set[str], run: LegacyRun) -> set[str]:
    """Which of the failures of :data:`FAILURES` a violating run shows (several at times)."""
    labels: set[str] = set()
    if 'handled_once' in violations:
        labels.add('handled_twice')
    if 'bounded' in violations:
        labels |= _storm_labels(scenario, run)
    for n, plain, outcome in run.crossed:
        labels.add(_crossing(run, n, plain, outcome))
    if 'no_failure' in violations:
        labels |= _failure_labels(run)
    if 'iblutil_alive' in violations:
        labels |= _kill_labels(run)
    return labels


def _storm_labels(scenario: simulation.Scenario, run: LegacyRun) -> set[str]:
    if run.net.sent < simulation.STORM:
        return {'late_talk'}
    labels = {'storm'}
    if scenario.main == 'iblutil':
        labels.add('storm_iblutil_main')
    if _alternating(run.wire):
        labels.add('storm_alternating')
    if _handler_repeats(run)[1] >= HANDLER_REPEATS:
        labels.add('storm_handler_repeats')
    if scenario.duplicate:
        # the network's fate draws do not depend on the duplication rate: this is the same trace, less the copies
        calm = simulation.Run(dataclasses.replace(scenario, duplicate=0.0)).execute()
        if not calm.stormed:
            labels.add('storm_from_duplicate')
    return labels


def _crossing(run: LegacyRun, n: int, plain: bytes, outcome: tuple[str, Any]) -> str:
    kind, value = outcome
    if kind == 'failed':
        return 'crossed_error'
    k = simulation._handling_number(value)
    if k is None or not 0 <= k < len(run.handlings):
        return 'crossed_echo'
    made_for = run.handlings[k][1]
    event = protocol.decode(plain).event
    if event is protocol.ExpMessage.EXPSTART and made_for != plain and protocol.decode(made_for).event is event:
        return 'late_start'
    return 'crossed_late_answer'


def _failure_labels(run: LegacyRun) -> set[str]:
    labels = set()
    main = run.main
    for n, call, (kind, value) in run.results:
        if kind != 'failed' or (n == 0 and call != 'info'):
            continue
        if n == 0:
            labels.add('failure_first_info')
            continue
        start, end = main.calls[n]
        repeats = [data for t, data, text in main.swallowed if text == REPEAT and start <= t <= end]
        if call == 'status' and value[0] == 'no response' and any(
                protocol.decode(data).event is protocol.ExpMessage.EXPSTATUS for data in repeats):
            labels.add('status_poll')
        else:
            labels.add('failure_other')
    return labels


def _kill_labels(run: LegacyRun) -> set[str]:
    rig = run.rig
    if not isinstance(rig, simulation.IblutilRig) or rig.alive:
        return {'main_killed'}
    # the rig waited 1 s for the echo of a datagram of its own: which did the old main not echo then?
    window = {text for t, _, text in run.main.swallowed if rig.died_at - 1.05 <= t <= rig.died_at}
    found = {_KILLS[text] for text in window if text in _KILLS}
    return found or {'rig_killed_other'}


def _alternating(wire: collections.deque) -> bool:
    """True if the end of the run is two datagrams taking turns (the storm guard counts repeats of one)."""
    tail = [data for _, data in wire]
    turns = sum(1 for a, b in itertools.pairwise(tail) if a != b)
    return len(tail) >= 50 and len(set(tail)) == 2 and turns >= 10


def _handler_repeats(run: LegacyRun) -> tuple[bytes, int, float]:
    """The request whose handler ran most often, how often, and over how many virtual seconds."""
    if not run.handlings:
        return b'', 0, 0.0
    counts = collections.Counter(value for _, value, _ in run.handlings)
    value, count = counts.most_common(1)[0]
    times = [t for t, v, _ in run.handlings if v == value]
    return value, count, times[-1] - times[0]


def storm_details(run: LegacyRun) -> str:
    """How often the rig ran one request's handler during the run, and how fast."""
    value, count, span = _handler_repeats(run)
    rate = f', {count / span:.0f} a second' if span > 0 else ''
    return f'the handler for {value[:70]!r} ran {count} times in {span:.3g} virtual s{rate}'


# --- running many scenarios ---
@dataclasses.dataclass
class Tally:
    """Counts of a range of seeds: per invariant and per known failure, with seeds to replay."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first: dict[str, int] = dataclasses.field(default_factory=dict)
    labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_label: dict[str, int] = dataclasses.field(default_factory=dict)
    mildest: dict[str, tuple] = dataclasses.field(default_factory=dict)  # label -> (faults, seed)

    def add(self, seed: int, scenario: simulation.Scenario, violations: set[str], labels: set[str]) -> None:
        """Count one scenario."""
        faults = (round(max(scenario.loss), 3), scenario.duplicate, scenario.reorder, scenario.junk)
        for v in violations:
            self.counts[v] += 1
            self.first.setdefault(v, seed)
        for label in labels:
            self.labels[label] += 1
            self.first_label.setdefault(label, seed)
            if label not in self.mildest or (faults, seed) < self.mildest[label]:
                self.mildest[label] = (faults, seed)

    def merge(self, other: Tally) -> None:
        """Add the counts of another range of seeds."""
        self.counts.update(other.counts)
        self.labels.update(other.labels)
        for mine, theirs in ((self.first, other.first), (self.first_label, other.first_label),
                             (self.mildest, other.mildest)):
            for key, value in theirs.items():
                mine[key] = min(mine.get(key, value), value)


def _run_range(args: tuple[str, str | None, int, int]) -> Tally:
    checkout, probe, start, count = args
    if LegacyRun.legacy is None:  # a worker process
        install(Path(checkout), probe)
    tally = Tally()
    for seed in range(start, start + count):
        scenario, violations, run = simulation.simulate(seed)
        tally.add(seed, scenario, violations, classify(scenario, violations, run) if violations else set())
    return tally


def soak(checkout: Path, scenarios: int, seed: int, jobs: int, probe: str | None = None) -> Tally:
    """Run `scenarios` seeds from `seed` on, in `jobs` processes, and tally them."""
    chunk = max(1, min(2000, -(-scenarios // max(1, jobs))))
    parts = [(str(checkout), probe, s, min(chunk, seed + scenarios - s))
             for s in range(seed, seed + scenarios, chunk)]
    tally = Tally()
    if jobs <= 1:
        for part in parts:
            tally.merge(_run_range(part))
        return tally
    with multiprocessing.get_context('spawn').Pool(jobs) as pool:
        for part in pool.imap_unordered(_run_range, parts):
            tally.merge(part)
    return tally


def replay(seed: int, verbose: bool) -> int:
    """Run one scenario on the old rules and describe it."""
    scenario, violations, run = simulation.simulate(seed, trace=print if verbose else None)
    print(scenario)
    for n, call, outcome in run.results:
        print(f'  call {n} {call}: {outcome}')
    print('violations:', sorted(violations) or 'none')
    if violations:
        for label in sorted(classify(scenario, violations, run)):
            print(f'  {label}: {FAILURES[label]}')
    if 'bounded' in violations:
        print(' ', storm_details(run))
    notes = collections.Counter(f'{module}: {text}' for _, module, text in getattr(run, 'notes', []))
    if notes:
        print('what the old code noted:')
        for text, count in notes.most_common():
            print(f'  {count:6d} x {text}')
    return 1 if violations else 0


def main(argv: list[str] | None = None) -> int:
    """The command line: a soak (counts per invariant and per known failure) or one replay."""
    parser = argparse.ArgumentParser(description='Run the protocol simulator against an older checkout\'s rules.')
    parser.add_argument('--legacy', type=Path, required=True, help='root of the old checkout (a git worktree)')
    parser.add_argument('--scenarios', type=int, default=20000, help='how many scenarios (default 20000)')
    parser.add_argument('--seed', type=int, default=0, help='the first seed (default 0)')
    parser.add_argument('--jobs', type=int, default=1, help='processes to run the scenarios in (default 1)')
    parser.add_argument('--replay', type=int, metavar='SEED', help='run one scenario and describe it')
    parser.add_argument('-v', '--verbose', action='store_true', help='with --replay: print every datagram')
    parser.add_argument('--probe', choices=sorted(PROBES),
                        help='give every scenario a behaviour the draw does not make: ' +
                             '; '.join(f'{k}: {v}' for k, v in PROBES.items()))
    args = parser.parse_args(argv)
    install(args.legacy, args.probe)
    if args.replay is not None:
        return replay(args.replay, args.verbose)
    started = time.perf_counter()
    tally = soak(args.legacy, args.scenarios, args.seed, args.jobs, args.probe)
    elapsed = time.perf_counter() - started
    probe = f', probe {args.probe!r}' if args.probe else ''
    print(f'{args.scenarios} scenarios from seed {args.seed}{probe} on the rules of {args.legacy} '
          f'in {elapsed:.1f} s ({args.jobs} process{"es" if args.jobs > 1 else ""})')
    for name in simulation.INVARIANTS:
        extra = f' (first seed {tally.first[name]})' if name in tally.first else ''
        print(f'  {name:14s} violated in {tally.counts[name]} scenarios{extra}')
    print('known failures (a scenario may show several):')
    for label, text in FAILURES.items():
        print(f'  {label:24s} {tally.labels[label]:6d}  {text}')
        if label in tally.first_label:
            (loss, duplicate, reorder, junk), mild = tally.mildest[label]
            print(f'  {"":31s} first seed {tally.first_label[label]}; mildest network: seed {mild} '
                  f'(loss <= {loss:.1%}, duplicates {duplicate:.0%}, reordering {reorder:.0%}, junk {junk})')
    return 1 if tally.counts else 0


if __name__ == '__main__':
    sys.exit(main())
