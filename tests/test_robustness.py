"""Threads and resources by construction: close(), reclaimed objects, floods, junk (interrupts at every
point where a signal can land: test_interrupts.py)."""
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from iblnet_sync import ClosedError, Communicator, RigErrorReport, RigServer, Services, core, protocol
from iblnet_sync.dispatcher import CALLBACK_QUEUE
from iblnet_sync.rig_server import MAX_MAIN_RIGS
from tests.resources import open_fds, our_threads, wait_until

URI = 'udp://127.0.0.1:11001'








@pytest.fixture
def rig():
    with RigServer('udp://127.0.0.1:0', name='cameras') as server:
        yield server


def test_close_fails_the_exchange_in_flight_and_every_waiting_caller_at_once(no_leaked_threads):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    com = Communicator(URI, 'cameras', sock=ours, timeout=30)
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(com.status, 'CONNECTED') for _ in range(3)]  # one in flight, two waiting
        assert theirs.recv(100) == protocol.status_message('CONNECTED')
        com.close()
        for call in calls:
            with pytest.raises(ClosedError):
                call.result(5)  # (not their own 30 s timeout: a call still waiting raises TimeoutError here)
    with pytest.raises(ClosedError):
        com.status('CONNECTED')
    with pytest.raises(ClosedError):
        com.assign_callback('EXPSTART', print)
    theirs.close()


def test_objects_dropped_without_close_are_reclaimed(rig):
    with Communicator(rig.uri, 'warm-up', timeout=5) as first:
        first.status('CONNECTED')  # the rig's callback thread now runs: not part of what is counted
    threads, fds = len(our_threads()), open_fds()
    com = Communicator(rig.uri, 'cameras', timeout=5)
    assert com.status('CONNECTED') == [0]
    server = RigServer('udp://127.0.0.1:0')
    assert len(our_threads()) > threads
    del com, server
    assert wait_until(lambda: len(our_threads()) == threads and open_fds() == fds)


def test_rig_server_close_is_idempotent_and_refuses_new_handlers():
    server = RigServer('udp://127.0.0.1:0')
    server.close()
    server.close()
    with pytest.raises(ClosedError):
        server.assign_handler('EXPSTART', print)


def test_a_flood_with_a_slow_callback_drops_the_excess_with_a_warning(caplog, monkeypatch):
    # (more than 64 different messages of the rig's own in a second are a storm to the core, M21: here the
    # callback queue's own bound is under test, for a flood slow enough to pass the core, which this one fakes)
    monkeypatch.setattr(core, 'SEEN_IDS', 10 ** 6)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    release, started = threading.Event(), threading.Event()
    flood = CALLBACK_QUEUE + 500
    with Communicator(URI, 'cameras', sock=ours) as com:
        com.assign_callback('EXPINFO', lambda data, addr: started.set() or release.wait(10))
        with caplog.at_level(logging.WARNING, logger='iblnet_sync.dispatcher'):
            theirs.send(b'[64, 0, {"n": -1}]')
            assert started.wait(5)
            for n in range(flood):
                theirs.send(b'[64, 0, {"n": %d}]' % n)
                theirs.recv(100)  # the echo: each was handled on the network thread
            queued = com._dispatcher._callbacks._queue.qsize()
            release.set()
        assert queued <= CALLBACK_QUEUE
        assert 'dropped' in caplog.text
    theirs.close()


def test_junk_makes_no_entry_and_inactive_main_rigs_are_forgotten_first(rig):
    host, port = rig.uri[len('udp://'):].rsplit(':', 1)
    address = (host, int(port))
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(MAX_MAIN_RIGS + 10)]
    try:
        with Services({'cameras': rig.uri}, timeout=5) as services:
            services.info('CONNECTED', {})
            for sender in senders:
                sender.sendto(b'\xff junk', address)
            assert services.status('CONNECTED') == {'cameras': [0]}
            assert len(rig._peers) == 1  # junk made no entry
            for sender in senders:  # more real main rigs than are remembered
                sender.settimeout(5)
                sender.sendto(b'[32, 0]', address)
                assert sender.recv(100) == b'[32, 0]'
                assert services.status('CONNECTED') == {'cameras': [0]}  # ours stays active
            assert len(rig._peers) == MAX_MAIN_RIGS
            assert services['cameras'].local_address in rig._peers
            assert services['cameras'].peer_is_iblnet_sync
    finally:
        for sender in senders:
            sender.close()


def test_an_answer_too_large_for_a_datagram_reaches_the_main_as_an_error_report(rig):
    rig.assign_handler('EXPINIT', lambda data: 'x' * 65500)
    with Services({'cameras': rig.uri}, timeout=5) as services:
        with pytest.raises(Exception) as caught:
            services.init({'exp_ref': '2026-11-25_1_mouse'})
        error = caught.value.failures['cameras']
        assert isinstance(error, RigErrorReport) and 'TooLarge' in str(error) and '65,507' in str(error)
        assert services.status('INITIALIZED') == {'cameras': [0]}  # the rig serves on, its status unchanged


def test_a_main_forgotten_by_the_rig_is_answered_with_fresh_ids(rig):
    """A rig that forgot a main (64 others came since) must not answer it with ids it already saw."""
    host, port = rig.uri[len('udp://'):].rsplit(':', 1)
    with Services({'cameras': rig.uri}, timeout=5) as services:
        services.info('CONNECTED', {})
        for _ in range(3):
            assert services.status('CONNECTED') == {'cameras': [0]}
        for n in range(4 * MAX_MAIN_RIGS):  # one-shot mains push ours out of the rig's table (a port may come
            with Communicator(rig.uri, 'ping', timeout=5) as other:  # again: then more are needed; other
                other.info('CONNECTED', {'n': n})                    # bytes each, R14)
            if n >= MAX_MAIN_RIGS and services['cameras'].local_address not in rig._peers:
                break
        assert services['cameras'].local_address not in rig._peers
        for _ in range(5):
            assert services.status('CONNECTED') == {'cameras': [0]}


def test_a_handler_call_the_queue_cannot_take_is_answered_with_an_error_report(rig, monkeypatch):
    monkeypatch.setattr(rig._dispatcher, 'run_callback', lambda *args: False)  # as when the queue is full
    with Services({'cameras': rig.uri}, timeout=5) as services:
        with pytest.raises(Exception) as caught:
            services.start('2026-11-25_1_mouse')
        assert isinstance(caught.value.failures['cameras'], RigErrorReport)
        assert 'rig busy' in str(caught.value)


def test_an_error_report_is_never_too_large_to_send(rig):
    def fail(data):
        raise ValueError('x' * 70000)
    rig.assign_handler('EXPSTART', fail)
    with Services({'cameras': rig.uri}, timeout=5) as services:
        with pytest.raises(Exception) as caught:
            services.start('2026-11-25_1_mouse')
        error = caught.value.failures['cameras']
        assert isinstance(error, RigErrorReport) and str(error).endswith('...')
