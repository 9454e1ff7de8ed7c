"""The callback registry on its own: a stand-in dispatcher queues its calls, and the test runs them."""
from __future__ import annotations

import gc
import logging
import socket
import sys
import threading
import weakref
from concurrent.futures import Future, wait

import pytest

from iblnet_sync import ClosedError, Communicator, ExpMessage, protocol
from iblnet_sync.callbacks import CallbackRegistry, cancel

ADDR = ('10.0.0.2', 11001)
START, END = ExpMessage.EXPSTART, ExpMessage.EXPEND


class Queue:
    """Stands in for the dispatcher: ``run_callback`` queues a call (or refuses it when `full`)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.full = False

    def run_callback(self, function, *args, cost=0) -> bool:
        if self.full:
            return False
        self.calls.append((function, args, cost))
        return True

    def run(self) -> None:
        """Run the queued calls in order, as the callback thread would."""
        calls, self.calls = self.calls, []
        for function, args, _ in calls:
            function(*args)


@pytest.fixture
def queue():
    return Queue()


@pytest.fixture
def sent():
    return []


@pytest.fixture
def registry(queue, sent):
    return CallbackRegistry(queue, sent.append, name='cameras', uri='udp://10.0.0.2:11001', addr=ADDR)


def message(event, *data) -> protocol.Message:
    return protocol.Message(ExpMessage(event), list(data))


def test_a_function_gets_data_and_addr_and_one_registered_for_several_events_also_the_event(registry, queue):
    seen = []
    registry.add('EXPSTART', lambda data, addr: seen.append(('one', data, addr)))
    registry.add(START | END, lambda data, addr, event: seen.append(('both', data, addr, event)))
    registry.deliver(message(START, 'ref', None))
    registry.deliver(message(END, []))
    assert not seen, 'nothing runs on the delivering thread'
    queue.run()
    assert seen == [('one', ['ref', None], ADDR), ('both', ['ref', None], ADDR, START), ('both', [[]], ADDR, END)]


def test_the_calls_are_queued_futures_first_then_functions_in_order_each_costing_its_datagram(registry, queue):
    first, second = (lambda data, addr: None), (lambda data, addr: None)
    registry.add(START, first)
    future: Future = Future()
    registry.add(START, future)
    registry.add(START, second)
    registry.deliver(message(START, 'ref', None), cost=123)
    assert [args[0] for _, args, _ in queue.calls] == [future, first, second]
    assert [cost for *_, cost in queue.calls] == [123, 123, 123]


def test_a_future_is_resolved_once_then_forgotten(registry, queue):
    future: Future = Future()
    registry.add(START | END, future)
    registry.add(END, future)  # twice for one event: handed on once all the same
    registry.deliver(message(END, []))
    registry.deliver(message(END, ['again']))
    registry.deliver(message(START, 'ref', None))
    assert len(queue.calls) == 1, 'forgotten for every event once a message came'
    queue.run()
    assert future.result(0) == ([[]], ADDR, END)
    assert registry.remove(START | END) == 0


def test_nobody_listening_queues_nothing(registry, queue):
    registry.add(START, lambda data, addr: None)
    registry.deliver(message(END, []))
    assert queue.calls == []


def test_remove_finds_a_callback_or_its_wrapper_and_cancels_the_futures_removed(registry, queue):
    def callback(data, addr):
        pass

    def wrapper(data, addr):
        callback(data, addr)
    wrapper.__wrapped__ = callback  # type: ignore[attr-defined]
    other: Future = Future()
    registry.add(START | END, callback)  # one registration per single event
    registry.add(START, wrapper)
    registry.add(START, other)
    assert registry.remove(START | END, callback) == 3
    assert not other.cancelled()
    registry.deliver(message(START, 'ref', None))
    assert [args[0] for _, args, _ in queue.calls] == [other]
    registry.add(END, (future := Future()))
    registry.add(END, callback)
    assert registry.remove(END) == 2 and future.cancelled()
    assert wait([future], timeout=0).done == {future}, 'whoever waits for it is woken'


def test_a_future_the_queue_cannot_take_is_cancelled_with_a_warning(registry, queue, caplog):
    future: Future = Future()
    registry.add(END, future)
    registry.add(END, lambda data, addr: None)
    queue.full = True
    with caplog.at_level(logging.WARNING, logger='iblnet_sync'):
        registry.deliver(message(END, []))
    assert not future.done(), 'cancelled only by cancel_dropped(), once its owner holds no lock'
    registry.cancel_dropped()
    assert future.cancelled() and wait([future], 0).done, 'cancelled, and its waiters woken'
    assert [r.getMessage() for r in caplog.records] == [
        'cameras: on_event(EXPEND) cancelled: the callbacks are too slow and its message was dropped']
    queue.full = False
    registry.deliver(message(END, []))
    assert len(queue.calls) == 1, 'the function stays registered; the Future is forgotten'


def test_a_future_dropped_for_one_event_is_cancelled_once_and_forgotten_for_the_others(registry, queue, caplog):
    future: Future = Future()
    registry.add(START | END, future)
    registry.add(END, future)
    queue.full = True
    with caplog.at_level(logging.WARNING):
        registry.deliver(message(END, []))
        registry.cancel_dropped()
    assert future.cancelled() and len(caplog.records) == 1, 'one warning, and no complaint from the Future'
    assert registry.close('closed') == []


def test_a_communicator_with_a_future_for_several_events_closes(no_leaked_threads):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        com = Communicator('udp://127.0.0.1:11001', 'cameras', sock=ours)
        future = com.on_event(ExpMessage.any())
        com.close()
        assert future.cancelled() and wait([future], 0).done and ours.fileno() < 0
    finally:
        theirs.close()


def test_close_returns_the_pending_futures_and_refuses_new_callbacks(registry, queue):
    queued: Future = Future()
    registered: Future = Future()
    registry.add(START, queued)
    registry.add(END | ExpMessage.EXPCLEANUP, registered)
    registry.add(END, lambda data, addr: None)
    registry.deliver(message(START, 'ref', None))
    assert registry.close('cameras is closed') == [registered, queued], 'each once'
    assert not queued.cancelled(), 'the caller cancels them, once it holds no lock'
    assert registry.close('again') == []
    with pytest.raises(ClosedError, match='^cameras is closed$'):
        registry.add(START, lambda data, addr: None)
    registry.deliver(message(END, []))
    assert len(queue.calls) == 1, 'nothing is queued once closed'
    cancel([queued])
    queue.run()  # the queued call comes after all: the Future stays cancelled
    assert queued.cancelled()


def test_a_failing_callback_is_reported_to_the_rig_unless_for_a_report_or_once_closed(registry, queue, sent, caplog):
    def broken(data, addr):
        raise ValueError('no disk space')
    registry.add(START, broken)
    registry.add(0, broken)
    with caplog.at_level(logging.ERROR, logger='iblnet_sync'):
        registry.deliver(message(START, 'ref', None))
        registry.deliver(message(0, 'KeyError: 1', 2), log_report=False)
        queue.run()
    assert sent == [protocol.error_report(ValueError('no disk space'), START)], 'a report is never reported'
    assert [r.getMessage() for r in caplog.records] == [f"cameras: callback {broken!r} for {name} raised "
                                                        "ValueError('no disk space')"
                                                        for name in ('EXPSTART', ExpMessage(0).name)]
    registry.deliver(message(START, 'ref', None))
    registry.close('closed')
    queue.run()
    assert len(sent) == 1


def test_error_reports_are_logged_escaped_a_few_a_minute_unless_they_fail_a_call(queue, caplog):
    owner = logging.getLogger('iblnet_sync.test_owner')
    registry = CallbackRegistry(queue, print, name='cameras', uri='udp://10.0.0.2:11001', addr=ADDR, logger=owner)
    with caplog.at_level(logging.ERROR, logger='iblnet_sync'):
        registry.deliver(message(0, 'Boom: x\r\x1b[2J' + 'y' * 1000, 2), log_report=False)
        assert caplog.records == []
        for _ in range(50):
            registry.deliver(message(0, 'Boom: x\r\x1b[2J' + 'y' * 1000, 2))
        registry.deliver(message(0, 'odd', 'not an event'))
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= len(lines) <= 10 and {r.name for r in caplog.records} == {'iblnet_sync.test_owner'}
    assert lines[0].startswith('cameras (udp://10.0.0.2:11001) reported an error for EXPSTART: Boom: x\\r\\x1b[2J')
    assert all(len(line) < 500 and '\r' not in line and '\x1b' not in line for line in lines)


@pytest.mark.parametrize('event, callback, error', [
    ('EXPNOTHING', print, ValueError), (3.5, print, TypeError), ('EXPSTART', 'print', TypeError)])
def test_a_bad_event_or_callback_is_refused(registry, event, callback, error):
    with pytest.raises(error):
        registry.add(event, callback)
    assert registry.remove(START | END) == 0


def test_registrations_made_while_messages_arrive_are_neither_lost_nor_doubled(registry, queue):
    """Threads add Futures and functions while another thread delivers: each Future is queued once
    or still registered, and each function still registered."""
    functions = [lambda data, addr: None for _ in range(4)]
    futures: list[list[Future]] = [[] for _ in functions]
    stop = threading.Event()

    def add(n: int) -> None:
        for _ in range(2000):
            future: Future = Future()
            futures[n].append(future)
            registry.add(START, future)
        registry.add(START, functions[n])

    def deliver() -> None:
        while not stop.is_set():
            registry.deliver(message(START, 'ref', None))

    adders = [threading.Thread(target=add, args=(n,)) for n in range(len(functions))]
    deliverer = threading.Thread(target=deliver)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can
    try:
        deliverer.start()
        for adder in adders:
            adder.start()
        for adder in adders:
            adder.join(30)
    finally:
        stop.set()
        deliverer.join(30)
        sys.setswitchinterval(interval)
    registry.deliver(message(START, 'ref', None))  # and the Futures still registered
    queued = [args[0] for _, args, _ in queue.calls if isinstance(args[0], Future)]
    assert len(queued) == len(set(queued)), 'a Future was queued twice'
    assert set(queued) == {future for mine in futures for future in mine}, 'a Future was lost'
    for function in functions:
        assert registry.remove(START, function) == 1, 'a function was lost'


def test_cancel_wakes_whoever_waits():
    future: Future = Future()
    waiter = threading.Thread(target=wait, args=([future], 30))
    waiter.start()
    cancel([future])
    waiter.join(10)
    assert not waiter.is_alive() and future.cancelled()


def test_the_registry_keeps_its_communicator_alive_no_longer_than_its_last_reference():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        com = Communicator('udp://127.0.0.1:11001', 'cameras', sock=ours)
        com.assign_callback('EXPSTART', print)
        future = com.on_event('EXPEND')
        reference = weakref.ref(com)
        gc.disable()  # reclaimed by its reference count: no cycle through the registry
        try:
            del com
            assert reference() is None
        finally:
            gc.enable()
        assert future.cancelled() and wait([future], 0).done, 'nobody will resolve it: cancelled, waiters woken'
    finally:
        theirs.close()
