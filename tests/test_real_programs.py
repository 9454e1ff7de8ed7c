"""The programs that labs already run at the other end of the protocol, against our library on loopback.

Rigbox's Timeline listener (the main sync of mesoscope rigs), iblrig's video program and iblrig's own
main (see PROTOCOL.md, "Rigs that labs already run"; models in ``real_programs.py``, loopback peers in
``program_peers.py``). First the sans-I/O models' rules, then whole lifecycles of a NetworkSession task
and of iblrig's main, with and without loss.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import threading
from collections.abc import Iterator

import pytest

from iblnet_sync import BroadcastError, ExpMessage, ExpStatus, RigServer, Services, core, ping, protocol
from iblnet_sync.core import Send
from tests.events import events_of
from tests.iblutil_models import IblutilMain
from tests.legacy_task import Task
from tests.measure_video_loss import count_lost
from tests.program_peers import IblrigMainPeer, TimelinePeer, VideoPeer
from tests.real_programs import REARM, IblrigMain, Timeline, VideoProgram, compact, iblrig_stop
from tests.relay import LossyRelay

TODAY = datetime.date.today()
REF = f'{TODAY}_2_mouse'


def sent(events: list) -> list[bytes]:
    return [e.datagram for e in events_of(events, Send)]


# --- the models' rules ---
@pytest.mark.parametrize('request_, answer', [
    (b'[1, {"exp_ref": "X"}]', b'[1,{"status":20}]'),
    (b'[2, "2026-11-24_3_mouse", null]', f'[2,"{REF}",{{"status":20}}]'.encode()),  # its own reference
    (b'[4, []]', b'[4,20]'),
    (b'[8, []]', b'[8,20]'),
    (b'[16, {"error": "X"}]', b'[16,20]'),
    (b'[32, 20, {}]', b'[32,20]'),
    (b'[64, 0, {"subject": ""}]', compact(64, 20, {'main_sync': True, 'api_version': '1.0.0', 'status': 20,
                                                   'exp_ref': REF})),
])
def test_timeline_echoes_and_answers_what_it_can_read_in_compact_json(request_, answer):
    timeline = Timeline(REF)
    assert sent(timeline.receive(request_)) == [request_, answer]
    assert timeline.receive(answer) == []  # the echo of its answer: taken as the confirmation, not echoed
    assert sent(timeline.receive(answer)) == []  # (a copy of it too: equal to the last message it sent)


@pytest.mark.parametrize('request_', [b'[4, null]', b'[8, null]', b'[32, 0]', b'[32, 20]', b'[999, "x"]',
                                      b'[4]', b'hello', b'{"id": 3}', b'[true, false]'])
def test_timeline_answers_what_it_cannot_read_with_an_error_report_naming_the_text(request_):
    timeline = Timeline(REF)
    echo, report = sent(timeline.receive(request_))
    assert echo == request_
    code, message, original = json.loads(report)
    assert code == 0 and message and original == request_.decode()
    assert report == compact(0, message, original)  # compact JSON, as MATLAB writes it


@pytest.mark.parametrize('request_', [b'[64, 0, {"exp_ref": null}]', b'[64, "CONNECTED"]', b'[64, 0, "x"]',
                                      b'[128, null, {}]'])
def test_timeline_echoes_but_never_answers_alyx_nor_info_without_a_subject(request_):
    timeline = Timeline(REF)
    assert sent(timeline.receive(request_)) == [request_]
    assert Timeline(None).respond(b'[32, 0, {}]') == b'[32,0]'  # no reference set: CONNECTED


def test_video_model_loses_a_request_that_comes_before_it_waits_again():
    video = VideoProgram()
    status = protocol.status_message('CONNECTED')
    (echo, handle) = video.receive(status, 0.0)
    assert echo == Send(status)
    answer = video.respond(handle.message)
    assert sent(video.answer(handle.request, answer, 0.001)) == [b'[32, 0]']
    assert video.receive(b'[32, 0]', 0.002) == []  # the echo of its answer: the handler is done
    assert video.receive(status, 0.002 + REARM / 2) == [Send(status)]  # echoed, never handled
    assert video.lost == [status] and video.alive
    assert events_of(video.receive(status, 0.002 + REARM), core.Handle)  # waiting again


def test_video_model_answers_cleanup_with_an_interrupt_and_never_answers_alyx():
    video = VideoProgram()
    assert video.respond(protocol.Message(ExpMessage.EXPCLEANUP, [[]]))[:4] == b'[16,'
    assert video.respond(protocol.Message(ExpMessage.ALYX, [None, {}])) is None
    assert video.respond(protocol.Message(ExpMessage.EXPINIT, [{'exp_ref': REF}]))[:8] == b'[1, 10, '
    assert video.respond(protocol.Message(ExpMessage.EXPINIT, [{'exp_ref': f'{TODAY}_9_mouse'}])) is None
    assert not video.alive and video.cause[0] == 'crashed'  # another experiment while one is under way


def test_iblrig_main_sends_its_own_bytes_one_poll_apart():
    assert iblrig_stop() == b'[4, []]'
    assert iblrig_stop({'error': 'X'}, immediately=True) == b'[16, [{"error": "X"}]]'
    main = IblrigMain()
    assert main.request(b'[32, 0]', 0.05) == [] and main.wakeup == pytest.approx(0.2)  # the queue's first poll
    assert main.tick(0.2) == [Send(b'[32, 0]')]
    main.receive(b'[32, 0]', 0.201)
    assert events_of(main.receive(b'[32, 20]', 0.202), core.Answered)
    assert main.request(b'[32, 0]', 0.203) == [] and main.wakeup == pytest.approx(0.402)
    plain = IblutilMain()
    assert plain.request(b'[32, 0]', 0.05) == [Send(b'[32, 0]')]  # iblutil's own main sends at once


# --- loopback: helpers ---
@pytest.fixture
def timeline() -> Iterator[TimelinePeer]:
    peer = TimelinePeer(REF)
    yield peer
    peer.close()


@pytest.fixture
def video() -> Iterator[VideoPeer]:
    peer = VideoPeer()
    yield peer
    peer.close()


class DropFirstCopies(LossyRelay):
    """A relay that loses, deterministically, what our library can make up for: the first copy of each
    request (the main resends it, spelled with a tab), and the rig's first echo of each request (its
    answer stands for the echo). A main's echo of an answer is never lost: an iblutil rig awaiting it dies."""

    def __init__(self, rig_uri: str):
        host, port = rig_uri[len('udp://'):].rsplit(':', 1)
        super().__init__((host, int(port)))
        self.requests: set[bytes] = set()
        self.from_rig: set[bytes] = set()
        self.echoes: set[bytes] = set()

    def _forward(self, send, data):
        if send == self.back.send:  # main -> rig
            key = data.rstrip()
            if key not in self.from_rig and key not in self.requests:
                self.requests.add(key)
                self.counts['dropped'] += 1
                return
        else:  # rig -> main
            key = data.rstrip()
            if key in self.requests and key not in self.echoes:
                self.echoes.add(key)
                self.counts['dropped'] += 1
                return
            self.from_rig.add(key)
        super()._forward(send, data)


def events(codes: list) -> list[ExpMessage]:
    return [ExpMessage(code) for code in codes]


# --- Timeline as the main sync ---
def test_timeline_as_main_sync_beside_our_rig_through_a_whole_lifecycle(timeline, no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='ephys') as ephys:
        task = Task(remote_rigs={'timeline': timeline.uri, 'ephys': ephys.uri})
        assert task.main_sync_rig == 'timeline'
        assert task.exp_ref == {'subject': 'mouse', 'date': TODAY, 'sequence': 2}
        assert task.session_info['SESSION_NUMBER'] == 2 and ephys.status is ExpStatus.INITIALIZED
        assert task.run() == 1
        assert ephys.status is ExpStatus.STOPPED and not task.remote_rigs.is_connected
    assert events(timeline.received) == [ExpMessage.EXPINFO, ExpMessage.EXPINIT, ExpMessage.EXPSTART,
                                         ExpMessage.EXPEND]
    assert all(answer[1:2] != b'0' for answer in timeline.model.answered), timeline.model.answered  # no report
    assert timeline.model.received[1] == (1, [{'exp_ref': REF}])
    assert timeline.model.received[2] == (2, [REF, None])


def test_a_crash_reaches_timeline_as_an_interrupt(timeline, no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='ephys') as ephys:
        task = Task(remote_rigs={'timeline': timeline.uri, 'ephys': ephys.uri}, crash=RuntimeError('Bpod lost'))
        with pytest.raises(RuntimeError, match='Bpod lost'):
            task.run()
        assert ephys.status is ExpStatus.STOPPED
    code, data = timeline.model.received[-1]
    assert code == ExpMessage.EXPINTERRUPT and data[0]['error'] == 'RuntimeError'
    assert data[0]['message'] == 'Bpod lost'
    assert timeline.model.answered[-1] == b'[16,20]'


def test_timeline_through_a_link_that_loses_requests_and_echoes(timeline, no_leaked_threads):
    relay = DropFirstCopies(timeline.uri)
    try:
        with RigServer('udp://127.0.0.1:0', name='ephys') as ephys:
            task = Task(remote_rigs={'timeline': relay.uri, 'ephys': ephys.uri})
            assert task.exp_ref['sequence'] == 2 and task.run() == 1
    finally:
        relay.close()
    assert relay.counts['dropped'] >= 8, relay.counts  # four requests and four echoes at least
    assert events(timeline.received)[-4:] == [ExpMessage.EXPINFO, ExpMessage.EXPINIT, ExpMessage.EXPSTART,
                                              ExpMessage.EXPEND]


def test_timeline_never_answering_alyx_fails_fast_by_name(timeline, no_leaked_threads):
    with Services({'timeline': timeline.uri}) as rigs, concurrent.futures.ThreadPoolExecutor(1) as pool:
        asked = pool.submit(rigs.alyx)
        with pytest.raises(BroadcastError) as caught:
            asked.result(timeout=5)  # well before the 10 s default
        error = caught.value.failures['timeline']
        assert error.stage == 'no response' and 'timeline' in str(caught.value)
        assert rigs.status('CONNECTED') == {'timeline': [20]}  # the connection is fine after it
    assert timeline.received == [ExpMessage.ALYX, ExpMessage.EXPSTATUS]


def test_iblnet_ping_shows_timelines_info(timeline, capsys):
    exit_code = ping.main(['--rig', f'timeline={timeline.uri}', '--json', '--count', '2'])
    out = capsys.readouterr().out
    (report,) = json.loads(out)
    assert exit_code == 0, out
    assert report['name'] == 'timeline' and report['status'] == 'RUNNING' and report['answered'] == 2
    assert 'no answer to EXPINFO' not in (report['clock_note'] or ''), report  # Timeline answered EXPINFO
    assert report['clock_offset_s'] is None  # (it sends no clock)
    code, data = timeline.model.received[0]
    assert code == ExpMessage.EXPINFO and 'subject' in data[1]
    assert timeline.model.answered[0].startswith(b'[64,20,{"main_sync":true')


# --- the video program beside our main-sync rig ---
def test_video_program_beside_our_main_sync_rig_through_a_whole_lifecycle(video, no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='ephys', main_sync=True) as ephys:
        task = Task(remote_rigs={'cameras': video.uri, 'ephys': ephys.uri})  # EXPINFO, then EXPINIT at once
        assert task.main_sync_rig == 'ephys' and video.model.status is ExpStatus.INITIALIZED
        assert video.model.exp_ref == protocol.exp_ref_to_str(task.exp_ref)
        assert task.run() == 1
        assert ephys.status is ExpStatus.STOPPED
    assert video.handled == [ExpMessage.EXPINFO, ExpMessage.EXPINIT, ExpMessage.EXPSTART, ExpMessage.EXPEND]
    assert video.model.status is ExpStatus.RUNNING  # (STOPPED only when its operator closes the acquisition)
    assert video.is_connected and video.errors == []


def test_a_crash_reaches_the_video_program_as_an_interrupt(video, no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='ephys', main_sync=True) as ephys:
        task = Task(remote_rigs={'cameras': video.uri, 'ephys': ephys.uri}, crash=RuntimeError('Bpod lost'))
        with pytest.raises(RuntimeError, match='Bpod lost'):
            task.run()
    assert video.handled[-1] is ExpMessage.EXPINTERRUPT
    assert video.model.handled[-1][1][0]['message'] == 'Bpod lost'
    assert video.is_connected and video.errors == []


def test_video_program_through_a_link_that_loses_requests_and_echoes(video, no_leaked_threads):
    relay = DropFirstCopies(video.uri)
    try:
        with RigServer('udp://127.0.0.1:0', name='ephys', main_sync=True) as ephys:
            task = Task(remote_rigs={'cameras': relay.uri, 'ephys': ephys.uri})
            assert task.run() == 1
    finally:
        relay.close()
    assert relay.counts['dropped'] >= 8, relay.counts
    assert video.handled == [ExpMessage.EXPINFO, ExpMessage.EXPINIT, ExpMessage.EXPSTART, ExpMessage.EXPEND]
    assert video.is_connected and video.errors == []


def test_a_video_program_that_waits_again_late_takes_requests_sent_after_the_pause_only():
    """The program waits for its next request 0.2 s after the echo of its answer (the real one a few
    loop steps after, where who wins is up to the machine's scheduler: ``python -m tests.measure_video_loss``).
    The simulator shows the library's 5 ms against the real timing (switching M22 off fails it)."""
    without = count_lost(6, pause=0.0, timeout=0.5, rearm=0.2)
    longer = count_lost(6, pause=0.4, timeout=2.0, rearm=0.2)
    # without: each request that follows an answer at once is lost; the one after its 0.5 s timeout is taken
    assert without['no response'] >= 2 and without['answered'] >= 3, without
    assert longer == {'answered': 6, 'program ended': 0}, longer


# --- iblrig's main driving our rig ---
def test_iblrig_main_drives_our_rig_through_a_whole_lifecycle(no_leaked_threads):
    seen: list[tuple[str, list]] = []
    lock = threading.Lock()

    def recorder(name):
        def handler(data):
            with lock:
                seen.append((name, data))
        return handler

    with RigServer('udp://127.0.0.1:0', name='ephys') as ephys:
        for name in ('EXPEND', 'EXPINTERRUPT'):
            ephys.assign_handler(name, recorder(name))
        main = IblrigMainPeer({'ephys': ephys.uri}, timeout=5)
        try:
            info = main.push('EXPINFO', 'CONNECTED', {'subject': 'mouse'})
            assert info['ephys'][0] == ExpStatus.CONNECTED and info['ephys'][1]['main_sync'] is False
            assert main.push('EXPINIT', {'exp_ref': REF})['ephys'][0] == ExpStatus.INITIALIZED
            assert main.push('EXPSTART', REF)['ephys'][0] == REF and ephys.status is ExpStatus.RUNNING
            assert main.push('EXPSTATUS', 'RUNNING') == {'ephys': [ExpStatus.RUNNING]}
            main.push('EXPEND')                                      # [4, []]
            assert ephys.status is ExpStatus.STOPPED
            main.push('EXPINTERRUPT', {'error': 'RuntimeError'})     # [16, [{"error": "RuntimeError"}]]
        finally:
            main.close()
    assert [name for name, _ in seen] == ['EXPEND', 'EXPINTERRUPT']
    assert seen[0][1] in ([[]], [], [None])
    assert seen[1][1] in ([{'error': 'RuntimeError'}], [[{'error': 'RuntimeError'}]])


def test_iblrig_main_keeps_our_rig_alive_when_its_echoes_are_lost(no_leaked_threads):
    """An iblutil rig dies when the main's echo of its answer is lost; our rig gives up on it and serves on."""
    class LoseMainEchoes(LossyRelay):
        def _forward(self, send, data):
            if send == self.back.send and data.rstrip() in self.answers:
                self.counts['dropped'] += 1
                return
            if send != self.back.send:
                self.answers.add(data.rstrip())
            super()._forward(send, data)

    with RigServer('udp://127.0.0.1:0', name='ephys') as ephys:
        host, port = ephys.uri[len('udp://'):].rsplit(':', 1)
        relay = LoseMainEchoes((host, int(port)))
        relay.answers = set()
        main = IblrigMainPeer({'ephys': relay.uri}, timeout=5)
        try:
            assert main.push('EXPINIT', {'exp_ref': REF})['ephys'][0] == ExpStatus.INITIALIZED
            assert main.push('EXPSTART', REF)['ephys'][0] == REF
            main.push('EXPEND')
            assert ephys.status is ExpStatus.STOPPED
        finally:
            main.close()
            relay.close()
    assert relay.counts['dropped'] >= 3, relay.counts
