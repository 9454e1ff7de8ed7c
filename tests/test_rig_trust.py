"""The library's side of a rig's trust boundary: what a stranger's datagrams can make it keep or log.

Each test is an attack from issue 15 on the library (the agent's own are in test_rig_agent.py):
a token in the logs, floods of error reports, long tag ids, large requests behind a slow handler,
many subjects, many senders, large messages behind a slow callback.
"""
import datetime
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from iblnet_sync import Communicator, RigServer, Services, dialect, protocol, session_numbers
from iblnet_sync.core import SEEN_IDS
from iblnet_sync.dispatcher import CALLBACK_BYTES, COMPACT_TIMERS
from iblnet_sync.rig_server import MAX_MAIN_RIGS

TOKEN = 'c2VjcmV0LXRva2VuLTEyMzQ1'
DEADLINE = 10


@pytest.fixture
def rig(no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='cameras') as server:
        yield server


def address(rig):
    return '127.0.0.1', int(rig.uri.rsplit(':', 1)[1])


def test_an_alyx_token_is_in_no_log_line_at_any_level(rig, caplog):
    rig.assign_handler('ALYX', lambda data: ('https://alyx.example.org', {'technician': TOKEN}))
    with caplog.at_level(logging.DEBUG, logger='iblnet_sync'):
        with Services({'cameras': rig.uri}, timeout=DEADLINE) as services:
            answer = services.alyx()
            assert answer == {'cameras': ['https://alyx.example.org', {'technician': TOKEN}]}
            services['cameras'].confirmed_send([128, 'https://alyx.example.org', {'technician': {'token': TOKEN}}])
    lines = [record.getMessage() for record in caplog.records]
    assert any("'technician': '***'" in line for line in lines), 'the datagrams are logged, masked'
    assert not [line for line in lines if TOKEN in line]


def test_a_flood_of_large_error_reports_writes_a_few_short_lines(rig, caplog):
    report = protocol.encode(0, 'x\r\x1b[2J' + 'y' * 60000, 2)
    with caplog.at_level(logging.WARNING, logger='iblnet_sync'), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as main:
        main.connect(address(rig))
        main.settimeout(DEADLINE)
        main.send(protocol.status_message('CONNECTED'))  # a real main first: a conversation exists
        main.recv(65535)
        main.recv(65535)
        for _ in range(300):
            main.send(report)
        main.send(protocol.status_message('CONNECTED'))  # the reports were handled before this echo
        main.recv(65535)
    lines = [r.getMessage() for r in caplog.records if 'reported an error' in r.getMessage()]
    assert 1 <= len(lines) <= 11
    assert all(len(line) < 500 and '\r' not in line and '\x1b' not in line for line in lines)


def test_tag_ids_longer_than_a_small_bound_are_junk():
    for field in ('id', 're'):
        tagged = {'id': 'm1.1', 're': None, 'msg': [32, 0]} | {field: 'i' * 65}
        with pytest.raises(protocol.DecodeError, match='longer than 64'):
            dialect.parse(protocol.json.dumps(tagged).encode())
    assert dialect.parse(b'{"id": "m1.1", "re": null, "msg": [32, 0]}').msg_id == 'm1.1'


def test_large_requests_behind_a_slow_handler_wait_one_per_main_as_bytes(rig):
    release, started = threading.Event(), threading.Event()
    rig.assign_handler('EXPINIT', lambda data: started.set() or release.wait(DEADLINE))
    heavy = protocol.encode(1, [{}] * 15000)  # 60 KB, 20,000 objects once parsed
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as main:
            main.connect(address(rig))
            main.settimeout(DEADLINE)
            main.send(protocol.encode(1, {'exp_ref': None}))
            main.recv(65535)
            assert started.wait(DEADLINE)
            for n in range(200):
                main.send(heavy[:-1] + b', %d]' % n)  # each a new request: it supersedes the one before
                main.recv(65535)  # its echo
            main.send(heavy[:-1] + b', 199]')  # the newest again: echoed only, once the one before was ruled on
            main.recv(65535)
            waiting = dict(rig._waiting)
            queued = rig._dispatcher._callbacks._queue.qsize()
    finally:
        release.set()
    assert len(waiting) == 1 and queued <= 1
    (_, _, received), = waiting.values()
    assert isinstance(received, bytes) and received.endswith(b', 199]')  # the newest, not yet parsed


def test_a_main_sync_rig_keeps_a_bounded_number_of_offered_subjects(tmp_path):
    numbers = session_numbers.SessionNumbers(tmp_path / 'numbers.json')
    today = datetime.date(2026, 11, 30)
    for n in range(1000):
        numbers.offer(f'mouse{n}' + 'x' * 1000, today)
    assert len(numbers._offers) == session_numbers.OFFERS_KEPT
    assert not (tmp_path / 'numbers.json').exists(), 'offers write nothing: only EXPINIT claims'


def test_many_senders_leave_no_timers_behind(rig):
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
    try:
        for round_ in range(20):  # 1,000 mains, each with an answer awaiting its echo (a timer)
            for sender in senders:
                sender.close()
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
            for n, sender in enumerate(senders):  # (a port may come again: the bytes differ, a new request)
                sender.settimeout(DEADLINE)
                sender.sendto(protocol.info_message('CONNECTED', {'n': round_ * 50 + n}), address(rig))
            for sender in senders:
                sender.recv(65535)
                sender.recv(65535)  # echo and answer: its timer is set
        timers = len(rig._dispatcher._timers)
        alarms = set(rig._alarms)
    finally:
        for sender in senders:
            sender.close()
    assert len(rig._peers) == MAX_MAIN_RIGS
    assert timers <= max(COMPACT_TIMERS, 2 * MAX_MAIN_RIGS) + 1
    assert alarms <= set(rig._peers) | set(rig._waiting), 'an alarm of a forgotten main'


def test_large_messages_behind_a_slow_callback_are_bounded_in_bytes():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.settimeout(DEADLINE)
    release, started = threading.Event(), threading.Event()
    with Communicator('udp://127.0.0.1:11001', 'cameras', sock=ours) as com:
        com.assign_callback('EXPINFO', lambda data, addr: started.set() or release.wait(DEADLINE))
        theirs.send(b'[64, 0, {"n": -1}]')
        assert started.wait(DEADLINE)
        try:
            for n in range(SEEN_IDS):  # 3.8 MB, each different (the same bytes again and again, or more
                theirs.send(protocol.encode(64, n, [{}] * 15000))  # different ones a second, are a storm: M21)
                theirs.recv(65535)  # the echo
            waiting = com._dispatcher._callbacks._bytes
        finally:
            release.set()
    theirs.close()
    assert waiting <= CALLBACK_BYTES


def test_an_on_event_future_is_cancelled_when_its_message_is_dropped_or_the_communicator_closes(caplog):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.settimeout(DEADLINE)
    release, started = threading.Event(), threading.Event()
    com = Communicator('udp://127.0.0.1:11001', 'cameras', sock=ours)
    try:
        com.assign_callback('EXPINFO', lambda data, addr: started.set() or release.wait(DEADLINE))
        theirs.send(b'[64, 0, {"n": -1}]')
        theirs.recv(100)
        assert started.wait(DEADLINE)
        queued = com.on_event('EXPEND')
        theirs.send(b'[4, {"n": 1}]')  # queued behind the slow callback
        theirs.recv(100)
        for n in range(CALLBACK_BYTES // 60000 + 1):  # the queue's bytes are spent
            theirs.send(protocol.encode(64, n, 'z' * 60000))
            theirs.recv(65535)
        dropped = com.on_event('EXPEND')
        locked: list[bool] = []
        dropped.add_done_callback(lambda future: locked.append(com._lock.locked()))
        with caplog.at_level(logging.WARNING, logger='iblnet_sync'):
            theirs.send(protocol.encode(4, 'z' * 60000))
            theirs.recv(65535)
            wait([dropped], DEADLINE)  # (the echo goes out before the message is handed on)
        assert dropped.cancelled() and 'on_event(EXPEND) cancelled' in caplog.text
        assert locked == [False], 'its done-callbacks run with no lock of the communicator held'
        assert not queued.done()
        with ThreadPoolExecutor(1) as pool:
            closing = pool.submit(com.close)  # (it waits for the slow callback to return)
            wait([queued], DEADLINE)
            assert queued.cancelled(), 'close() cancels a Future whose message waits in the queue'
            release.set()
            closing.result(DEADLINE)
    finally:
        release.set()
        com.close()
        theirs.close()


def test_no_reference_can_push_the_days_of_real_sessions_out_of_the_numbers_file(tmp_path):
    numbers = session_numbers.SessionNumbers(tmp_path / 'numbers.json')
    today = datetime.date(2026, 11, 30)
    numbers.claim(numbers.offer('mouse', today), today)
    for far in ('9999-12-29', '9999-12-30', '9999-12-31', '2020-01-01'):  # another host's EXPINITs
        with pytest.raises(ValueError, match='not of the last'):
            numbers.claim({'subject': 'x', 'date': datetime.date.fromisoformat(far), 'sequence': 1}, today)
    with pytest.raises(ValueError, match='out of range'):
        numbers.claim({'subject': 'q', 'date': today, 'sequence': 10 ** 250}, today)
    assert numbers.offer('mouse', today)['sequence'] == 2  # the real session is still written down
    for n in range(session_numbers.MAX_SUBJECTS - 1):
        numbers._offers.clear()
        numbers.claim({'subject': f's{n}', 'date': today, 'sequence': 1}, today)
    with pytest.raises(ValueError, match='subjects already have a session'):
        numbers.claim({'subject': 'one-too-many', 'date': today, 'sequence': 1}, today)


@pytest.mark.parametrize('data', [['https://x', {'u': TOKEN}], [['https://x', {'u': TOKEN}]], [TOKEN],
                                  [{'u': TOKEN}], [None, TOKEN]])
def test_an_alyx_token_is_masked_whatever_the_shape_of_the_message(data):
    from iblnet_sync.logtext import datagram_text
    assert TOKEN not in datagram_text(protocol.encode(128, *data))
