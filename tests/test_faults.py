"""Faults and misuse: a lossy link, echo storms, dead and returning rigs, threads, leaks, Ctrl-C."""
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from iblnet_sync import BroadcastError, ClosedError, Communicator, ExpMessage, RigRefused, RigServer, Services, protocol
from iblnet_sync.core import STORM_ECHOES
from tests.relay import CopyOnce, soak
from tests.resources import open_fds, our_threads


def test_ten_percent_loss_each_way_fails_no_exchange():
    # resends every 20 ms instead of 200 ms only to keep the test short; the logic is the same
    result = soak(loss=0.1, rounds=300, seed=11, resend_interval=0.02)
    assert result['dropped'] > 50, 'the relay must actually lose datagrams'
    assert result['failed'] == 0, result['failures']


def test_duplicates_and_reordering_give_no_wrong_answer():
    result = soak(loss=0.05, rounds=200, seed=5, duplicate=0.05, reorder=0.05, resend_interval=0.02)
    assert result['duplicated'] > 3 and result['reordered'] > 3
    assert not [f for f in result['failures'] if 'wrong answer' in f[1]], result['failures']
    assert result['failed'] <= 2, result['failures']


def test_echo_storm_dies_out(no_leaked_threads):
    """A naive peer that echoes everything, even our echoes: the bounces must stop by themselves."""
    ours, naive = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    naive.settimeout(2)
    bounces = 0
    with Communicator('udp://127.0.0.1:11001', 'naive', sock=ours):
        naive.send(b'[32, 20]')  # an unsolicited message: we echo it, it echoes that back, ...
        try:
            while bounces < 1000:
                naive.send(naive.recv(100))
                bounces += 1
                naive.settimeout(0.2)
        except TimeoutError:
            pass
    naive.close()
    assert 1 <= bounces <= STORM_ECHOES + 1, f'{bounces} bounces'  # cut after 8 echoes in a row


@pytest.mark.parametrize('to_rig', [True, False], ids=['our echo copied', 'the answer copied'])
def test_a_network_copy_of_an_answer_or_its_echo_bounces_no_further_with_an_iblutil_rig(
        to_rig, iblutil_rigs, no_leaked_threads, monkeypatch):
    """iblutil's rig takes a network duplicate of our echo of its answer for a request: it echoes it and handles
    it once more, which no main can prevent, and answers it with the same bytes. We leave its echo of our echo
    unechoed, and echo that answer: the bounce ends there and the rig lives (we used to echo the bounce up to 8
    times, each one handled again, and the rig closed at the end). A network duplicate of its answer is left
    unechoed too: the rig handles nothing more."""
    monkeypatch.setattr('iblnet_sync.core.BOUNCE_WINDOW', 1.0)  # (a busy machine's delays stay inside the bounce's run)
    monkeypatch.setattr('iblnet_sync.core.BOUNCE_FLOOR', 1.0)
    rig = iblutil_rigs('rig')
    answer = b'[1, 10, null]'
    host, port = rig.uri[len('udp://'):].rsplit(':', 1)
    relay = CopyOnce((host, int(port)), answer, to_rig=to_rig)
    try:
        with Services({'rig': relay.uri}, timeout=3) as services:
            assert services['rig'].init({'exp_ref': '2026-11-30_1_mouse'}) == [10, None]
            assert relay.released.wait(5) and relay.wait_quiet(), f'still bouncing: {relay.counts}'
            handled = 2 if to_rig else 1  # (the copy of its answer, left unechoed, draws nothing)
            assert rig.wait_for(lambda r: len(r.answered) == handled), f'answers not echoed: {rig.errors}'
            assert [event for event, _ in rig.received] == [ExpMessage.EXPINIT] * handled and not rig.errors
            assert relay.from_rig[answer] == 2 * handled - 1  # its answers, and its echo of the copy
    finally:
        relay.close()


def test_rig_that_dies_mid_session_is_refused_then_answers_again(no_leaked_threads):
    rig = RigServer('udp://127.0.0.1:0', name='cameras')
    uri = rig.uri
    with Services({'cameras': uri}, timeout=30) as services:
        assert services.status('CONNECTED') == {'cameras': [0]}
        rig.close()
        with pytest.raises(BroadcastError) as caught:
            services.status('CONNECTED')  # refused, long before the 30 s timeout
        assert isinstance(caught.value.failures['cameras'], RigRefused)
        assert not isinstance(caught.value, TimeoutError)
        with RigServer(uri, name='cameras'):
            assert services.status('CONNECTED') == {'cameras': [0]}


def test_four_threads_calling_at_once(no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='a') as a, RigServer('udp://127.0.0.1:0', name='b') as b:
        with Services({'a': a.uri, 'b': b.uri}, timeout=10) as services:
            def poll(thread):
                return [services.start(f'2026-11-24_{thread * 100 + i}_mouse') for i in range(25)]

            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(poll, range(4)))
    for thread, answers in enumerate(results):
        for i, answer in enumerate(answers):
            ref = f'2026-11-24_{thread * 100 + i}_mouse'
            assert answer == {'a': [ref, None], 'b': [ref, None]}


def test_hundreds_of_connect_close_cycles_leak_nothing():
    with RigServer('udp://127.0.0.1:0', name='cameras') as rig:
        with Services({'cameras': rig.uri}) as services:  # warm up imports and the rig's state
            services.status(0)
        fds, threads = open_fds(), threading.active_count()
        for cycle in range(300):  # (other bytes each time: a new socket may get a port just closed, and the
            #                        very same request again at once from there is a bounce to the rig, R14)
            with Services({'cameras': rig.uri, 'again': rig.uri}, timeout=5) as services:
                services.info(0, {'cycle': cycle})
        assert open_fds() == fds
        assert threading.active_count() == threads and not [t for t in our_threads() if 'cameras' not in t]


def test_ctrl_c_during_a_blocking_call_leaves_nothing_behind(no_leaked_threads):
    mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mute.bind(('127.0.0.1', 0))
    fds = open_fds()

    def interrupt_when_asked():
        mute.recv(100)  # the request arrived: the main thread is now blocked waiting
        os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt_when_asked)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        with Services({'mute': f'udp://127.0.0.1:{mute.getsockname()[1]}'}, timeout=30, resends=0) as services:
            services.status(0)
    helper.join(5)
    mute.close()
    assert open_fds() == fds - 1


def test_misuse_gets_clear_errors(no_leaked_threads):
    with pytest.raises(ValueError, match="'cameras'"):
        Services({'cameras': 'udp://127.0.0.1:port'})
    with pytest.raises(ValueError, match='compound'):
        protocol.encode(ExpMessage.EXPEND | ExpMessage.EXPINTERRUPT, None)
    with RigServer('udp://127.0.0.1:0') as rig:
        services = Services({'cameras': rig.uri})
        with pytest.raises(TypeError, match='JSON'):
            services.init({'when': object()})
        with pytest.raises(ValueError):
            services.status('SLEEPING')
        with pytest.raises(ValueError):
            services.assign_callback('EXPNOTHING', print)
        services.close()
        with pytest.raises(ClosedError):
            services.status(0)


def test_ctrl_c_during_a_broadcast_frees_every_rig_for_the_interrupt_message(no_leaked_threads):
    """Ctrl-C while rigs are still working: EXPINTERRUPT must then reach them all at once."""
    release, mute_busy = threading.Event(), threading.Event()
    with RigServer('udp://127.0.0.1:0', name='slow') as slow, RigServer('udp://127.0.0.1:0', name='mute') as mute:
        calls = []

        def interrupt_then_wait(data):
            calls.append((data, threading.get_ident()))
            if len(calls) == 1 and mute_busy.wait(10):  # both handlers at work (else EXPSTART is superseded)
                os.kill(os.getpid(), signal.SIGINT)  # the main thread is waiting for both rigs
            release.wait(10)

        mute.assign_handler('EXPSTART', lambda data: mute_busy.set() or release.wait(10))
        slow.assign_handler('EXPSTART', interrupt_then_wait)
        with Services({'mute': mute.uri, 'slow': slow.uri}, timeout=30) as services:  # slow gets it last
            with pytest.raises(KeyboardInterrupt):
                services.start('2026-11-24_1_mouse')
            services.timeout = 2.0  # the rigs' handlers are still busy: they echo, but cannot answer yet
            # (2 s, not less: on a loaded machine an echo can take longer than half a second)
            with pytest.raises(BroadcastError) as caught:
                services.stop({'error': 'KeyboardInterrupt'}, immediately=True)
            release.set()
        stages = {name: error.stage for name, error in caught.value.failures.items()}
        assert stages == {'mute': 'no response', 'slow': 'no response'}, 'EXPINTERRUPT must reach both rigs'
        assert len(calls) == 1, calls
