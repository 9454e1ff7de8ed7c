"""Ctrl-C at any point where CPython can run a signal handler: the entry of every Python function and
the return of every C call, in our frames and in the standard library's that our calls run (threading,
concurrent.futures, queue, socket, selectors, weakref), for each public call and constructor; and real
SIGINTs at random moments. Afterwards the next call succeeds, the network thread is alive, no rig is
busy, and once the objects are closed or dropped no thread or descriptor is left."""
from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import iblnet_sync
from iblnet_sync import Communicator, ExpMessage, RigServer, Services
from tests.resources import open_fds, our_threads, wait_until

STDLIB = str(Path(threading.__file__).parent)
WATCHED = [str(Path(iblnet_sync.__file__).parent)] + [
    str(Path(STDLIB) / name) for name in ('threading.py', 'queue.py', 'socket.py', 'selectors.py', 'weakref.py',
                                         'concurrent')]
REF = '2026-11-25_1_mouse'


def watched(frame) -> bool:
    return frame.f_code.co_filename.startswith(tuple(WATCHED))


class SignalPoints:
    """Raise KeyboardInterrupt at the n-th signal point of the calling thread (sys.setprofile): a Python
    function's entry, or a C call's return, in a watched frame. n = -1 counts them only."""

    def __init__(self, at: int = -1):
        self.at, self.count, self.where = at, 0, ''

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc_info):
        sys.setprofile(None)

    def _profile(self, frame, event, arg):
        if event in ('call', 'c_return') and watched(frame):
            self.count += 1
            if self.count == self.at:
                sys.setprofile(None)
                self.where = f'{event} {Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name}'
                raise KeyboardInterrupt


def points_of(call) -> int:
    with SignalPoints() as counter:
        call()
    return counter.count


def settled(threads: int, fds: int) -> bool:
    return wait_until(lambda: (len(our_threads()), open_fds()) == (threads, fds))


@pytest.fixture
def rig():
    with RigServer('udp://127.0.0.1:0', name='cameras') as server:
        server.assign_handler('EXPSTART', lambda data: None)
        yield server


def _ignore(*args) -> None:
    pass


def _callbacks(rig: Communicator) -> None:
    """Register a function and a Future, and remove them (the next status answer is delivered to those left)."""
    rig.assign_callback('EXPSTATUS', _ignore)
    rig.on_event(ExpMessage.EXPSTATUS | ExpMessage.EXPINFO)
    rig.clear_callbacks('EXPSTATUS', _ignore)
    rig.clear_callbacks(ExpMessage.EXPSTATUS | ExpMessage.EXPINFO)


CALLS = {
    'start': lambda services: services.start(REF),
    'status': lambda services: services.status('RUNNING'),
    'stop': lambda services: services.stop({'error': 'KeyboardInterrupt'}, immediately=True),
    'request': lambda services: services['cameras'].request(b'[32, 20, {}]'),
    'callbacks': lambda services: _callbacks(services['cameras']),
}


@pytest.mark.filterwarnings('ignore::ResourceWarning', 'ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('name', CALLS)
def test_ctrl_c_at_any_signal_point_of_a_call(rig, name):
    call = CALLS[name]
    with Services({'cameras': rig.uri}, timeout=5) as services:
        call(services)
        total = points_of(lambda: call(services))
        assert total > 50
        for at in range(1, total + 1):  # every point
            interrupt = SignalPoints(at)
            try:
                with interrupt:
                    call(services)
            except KeyboardInterrupt:
                pass
            except Exception as ex:  # (the rig's answer to an interrupted call may be late for the next)
                pytest.fail(f'{type(ex).__name__} after an interrupt at {interrupt.where}: {ex}')
            try:
                assert services.status('RUNNING')['cameras'] == [rig.status]  # answered, by a rig not busy
            except Exception as ex:
                pytest.fail(f'the next call failed after an interrupt at {interrupt.where}: {ex!r}')
            assert services._dispatcher is not None and services._dispatcher.is_alive, interrupt.where


MAKERS = {
    'Communicator': lambda uri: Communicator(uri, 'cameras'),
    'Services': lambda uri: Services({'cameras': uri, 'ephys': uri}),
    'RigServer': lambda uri: RigServer('udp://127.0.0.1:0'),
    'with Services': lambda uri: Services({'cameras': uri}).__enter__(),
}


@pytest.mark.filterwarnings('ignore::ResourceWarning', 'ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('name', MAKERS)
def test_a_constructor_interrupted_at_any_signal_point_leaves_nothing(rig, name):
    make = MAKERS[name]
    make(rig.uri).close()
    threads, fds = len(our_threads()), open_fds()
    total = points_of(lambda: make(rig.uri).close())
    for at in range(1, total + 1):  # every point
        made, interrupt = None, SignalPoints(at)
        try:
            with interrupt:
                made = make(rig.uri)
        except KeyboardInterrupt:
            pass
        except RuntimeError as ex:  # threading's own Condition, interrupted inside Thread.start()
            assert 'release unlocked lock' in str(ex), ex
        if made is not None:
            made.close()
        made = None
        assert settled(threads, fds), f'left behind after an interrupt at {interrupt.where}: {our_threads()}'


@pytest.mark.skipif(sys.platform == 'win32', reason='SIGINT is a console event on Windows')
def test_real_sigints_at_random_moments(rig):
    with Services({'cameras': rig.uri}, timeout=5) as services:  # the rig's callback thread starts
        services.start(REF)
    threads, fds = len(our_threads()), open_fds()
    stop, generator = threading.Event(), random.Random(7)

    def fire():
        while not stop.wait(generator.uniform(0.002, 0.02)):
            os.kill(os.getpid(), signal.SIGINT)

    with Services({'cameras': rig.uri}, timeout=5) as services:
        interrupted = calls = 0
        sender = threading.Thread(target=fire)
        sender.start()
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    CALLS[('start', 'status', 'stop')[calls % 3]](services)
                    calls += 1
                except KeyboardInterrupt:
                    interrupted += 1
        finally:
            stop.set()
            while sender.is_alive():  # its last signal may still come: take it here
                try:
                    sender.join()
                except KeyboardInterrupt:
                    interrupted += 1
        assert interrupted > 10 and calls > 10, (interrupted, calls)
        assert services.status('RUNNING')['cameras'] == [rig.status]
        assert services._dispatcher is not None and services._dispatcher.is_alive
    assert settled(threads, fds), (our_threads(), threads)
