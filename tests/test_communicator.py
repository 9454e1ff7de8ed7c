"""One rig over a socketpair: the test plays the rig, byte by byte."""
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from iblnet_sync import ClosedError, Communicator, ExpMessage, RigErrorReport, RigTimeout, dialect, protocol
from iblnet_sync.core import STORM_ECHOES

URI = 'udp://127.0.0.1:11001'  # a label only: the socketpair carries the datagrams


class FakeRig:
    """The rig's end of a socketpair, read with a deadline."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(5)

    def recv(self) -> bytes:
        return self.sock.recv(65535)

    def send(self, data: bytes):
        self.sock.send(data)

    def nothing_within(self, seconds) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(65535)
            return False
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)


@pytest.fixture
def pair(no_leaked_threads):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    com = Communicator(URI, 'cameras', sock=ours, timeout=5, resends=0)
    yield com, FakeRig(theirs)
    com.close()
    theirs.close()


def answer(rig, response: bytes) -> bytes:
    """Play one exchange as an iblutil rig: echo, respond, return the echo we got back."""
    request = rig.recv()
    rig.send(request)
    rig.send(response)
    return rig.recv()


def test_request_echo_response_and_response_echoed(pair):
    com, rig = pair
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(com.start, '2026-11-24_3_mouse')
        assert answer(rig, b'[2, "2026-11-24_3_mouse", {"ok": 1}]') == b'[2, "2026-11-24_3_mouse", {"ok": 1}]'
        assert result.result(5) == ['2026-11-24_3_mouse', {'ok': 1}]


def test_response_with_the_same_bytes_as_the_request_is_delivered(pair):
    com, rig = pair
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(com.request, b'[32, 20]')  # as iblutil's main sends it
        request = rig.recv()
        assert request == b'[32, 20]'
        rig.send(request)      # the echo
        rig.send(b'[32, 20]')  # a RUNNING rig answers with the very same bytes
        assert rig.recv() == b'[32, 20]'  # and our echo of it
        assert result.result(5) == [20]


def test_error_report_fails_the_rig_at_once(pair):
    com, rig = pair
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(com.init, {'exp_ref': 'x'})
        request = rig.recv()
        rig.send(request)
        rig.send(b'[0, "RuntimeError: camera unplugged", 1]')
        with pytest.raises(RigErrorReport, match='cameras .*EXPINIT.*camera unplugged'):
            result.result(2)  # well before the 5 s timeout
        assert rig.nothing_within(0.05), 'an error report must not be echoed'


def test_no_echo_names_the_rig_and_the_stage(pair):
    com, rig = pair
    com.echo_timeout = 0.05
    with pytest.raises(RigTimeout) as caught:
        com.cleanup()
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.stage == 'no echo' and caught.value.rig == 'cameras' and URI in str(caught.value)


def test_echo_but_no_response(pair):
    com, rig = pair
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(com.stop, timeout=1.0)
        rig.send(rig.recv())
        with pytest.raises(RigTimeout, match='echoed but no response'):
            result.result(5)


def test_junk_is_dropped_and_the_rig_still_works(pair):
    com, rig = pair
    for junk in (b'', b'\xff', b'{"a": 1}', b'[2]', b'[999, 1]', b'[' * 50000, b'x' * 65000):
        rig.send(junk)
    assert rig.nothing_within(0.05), 'junk must not be echoed'
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(com.status, 'CONNECTED')
        assert answer(rig, b'[32, 10]') == b'[32, 10]'
        assert result.result(5) == [10]


def test_unsolicited_message_echoed_and_delivered_to_callbacks_off_the_network_thread(pair):
    com, rig = pair
    seen, done = [], threading.Event()

    def on_status(data, addr):
        seen.append((data, threading.current_thread().name))
        done.set()

    com.assign_callback('expstatus', on_status)
    future = com.on_event(ExpMessage.EXPSTATUS)
    rig.send(b'[32, 20]')
    assert rig.recv() == b'[32, 20]'
    assert done.wait(5)
    assert seen[0][0] == [20] and 'network' not in seen[0][1]
    assert future.result(5)[0] == [20]


def test_callbacks_run_in_arrival_order_and_compound_flags_get_the_event(pair):
    com, rig = pair
    seen, done = [], threading.Event()

    def on_any(data, addr, event):
        seen.append(event)
        if event == ExpMessage.EXPEND:
            done.set()

    com.assign_callback(ExpMessage.EXPSTART | ExpMessage.EXPEND, on_any)
    rig.send(b'[2, "ref", null]')
    rig.send(b'[4, null]')
    assert done.wait(5)
    assert seen == [ExpMessage.EXPSTART, ExpMessage.EXPEND]
    assert com.clear_callbacks(ExpMessage.EXPSTART | ExpMessage.EXPEND, on_any) == 2


def test_failing_callback_sends_an_error_report_to_the_rig(pair):
    com, rig = pair

    def broken(data, addr):
        raise ValueError('no disk space')

    com.assign_callback('EXPINIT', broken)
    rig.send(b'[1, null]')
    assert rig.recv() == b'[1, null]'
    assert protocol.decode(rig.recv()).data == ['ValueError: no disk space', 1]


def test_concurrent_callers_are_serialised_per_rig(pair):
    com, rig = pair
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(com.request, b'[32, 0]')  # iblutil's bytes: the answer [32, 0] has the request's
        second = pool.submit(com.request, b'[32, 20]')
        requests = [rig.recv()]
        assert rig.nothing_within(0.05), 'a second request went out while the first was open'
        rig.send(requests[0])
        rig.send(b'[32, 0]')
        rig.recv()  # our echo of that response
        requests.append(rig.recv())
        rig.send(requests[1])
        rig.send(b'[32, 0]')
        rig.recv()
        assert sorted(requests) == [b'[32, 0]', b'[32, 20]']
        assert first.result(5) == second.result(5) == [0]


def test_close_is_idempotent_and_later_calls_raise(pair):
    com, rig = pair
    pending = com.on_event('EXPEND')
    com.close()
    com.close()
    assert pending.cancelled() and not com.is_connected
    with pytest.raises(ClosedError):
        com.status('CONNECTED')


def test_bad_uri_and_bad_event():
    with pytest.raises(ValueError):
        Communicator('udp://127.0.0.1:99999')
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with Communicator(URI, sock=ours) as com, pytest.raises(ValueError):
        com.assign_callback('EXPNOTHING', print)
    theirs.close()


def test_confirmed_send_returns_the_echo_round_trip_and_frees_the_rig(pair):
    com, rig = pair
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(com.confirmed_send, [ExpMessage.ALYX, 'https://alyx.example.org', {'u': {'token': 't'}}])
        request = rig.recv()
        rig.send(request)
        assert sent.result(5) > 0
        result = pool.submit(com.status, 'CONNECTED')  # the rig is free for the next exchange
        assert answer(rig, b'[32, 0]') == b'[32, 0]'
        assert result.result(5) == [0]


def test_resends_to_a_silent_rig_then_tags_once_the_rig_is_known(no_leaked_threads):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rig = FakeRig(theirs)
    with Communicator(URI, 'cameras', sock=ours, timeout=0.3, resend_interval=0.05) as com:
        with pytest.raises(RigTimeout, match='no echo'):
            com.status('CONNECTED')  # nothing came back: resent, spelled so that its echo is known
        assert rig.recv() == b'[32, 0, {}]' and rig.recv() == b'[32, 0, {}]\t'
        while not rig.nothing_within(0.05):
            pass
        assert not com.peer_is_iblnet_sync
        with ThreadPoolExecutor(1) as pool:
            info = pool.submit(com.info, 'CONNECTED')
            request = rig.recv()
            rig.send(request)
            rig.send(b'[64, 0, {"main_sync": false}]\n')  # an iblnet_sync rig ends plain answers so
            assert info.result(5) == [0, {'main_sync': False}]
            assert rig.recv() == b'[64, 0, {"main_sync": false}]\n'  # our echo
        assert com.peer_is_iblnet_sync
        with ThreadPoolExecutor(1) as pool:
            status = pool.submit(com.status, 'CONNECTED')
            tagged = rig.recv()
            parsed = dialect.parse(tagged)
            assert parsed.msg_id.startswith('m') and parsed.message == protocol.decode(b'[32, 0, {}]')
            rig.send(tagged)
            rig.send(dialect.tag(b'[32, 20]', 'r1.1', parsed.msg_id))
            assert status.result(5) == [20]
    theirs.close()


def test_rig_server_answers_plainly_to_a_plain_main_and_tagged_to_an_announced_one(no_leaked_threads):
    from iblnet_sync import RigServer
    with RigServer('udp://127.0.0.1:0', resend_interval=0.02) as server:
        host, port = server.uri[len('udp://'):].rsplit(':', 1)
        for announce in (False, True):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as main:  # never echoes the answer
                main.connect((host, int(port)))
                rig = FakeRig(main)
                request = protocol.info_message('CONNECTED', {dialect.PEER_KEY: 1} if announce else {})
                rig.send(request)
                assert rig.recv() == request  # the echo
                first = rig.recv()  # the answer
                if announce:  # tagged, naming the plain request, and sent again until echoed
                    parsed = dialect.parse(first)
                    assert parsed.msg_id.startswith('r') and parsed.reply_to == dialect.digest(request)
                    assert rig.recv() == first
                else:  # iblutil's bytes plus a newline, never sent again (an iblutil main could choke)
                    assert first.endswith(b'\n') and protocol.decode(first).event == ExpMessage.EXPINFO
                    assert rig.nothing_within(0.1)


def test_iblutils_own_poll_keeps_a_real_iblutil_rig_alive(iblutil_rigs):  # M21
    """``confirmed_send`` of EXPSTATUS, the answer awaited by ``on_event``, over and over: each answer is the
    same message of the rig's own, coming after its request; our main must echo every one (the storm cut
    once took the ninth for a storm, and the rig died awaiting its echo)."""
    rig = iblutil_rigs('cameras')
    with Communicator(rig.uri, 'cameras', timeout=2) as com:
        for poll in range(3 * STORM_ECHOES):
            answer = com.on_event('EXPSTATUS')
            com.confirmed_send(protocol.status_message('CONNECTED'))
            assert answer.result(2)[0] == [int(rig.status)], f'poll {poll}'
    assert rig.errors == [] and rig.is_connected
