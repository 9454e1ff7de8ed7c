"""RigServer driven through the whole lifecycle by our Services and by iblutil's asyncio Services."""
import datetime
import logging
import signal
import subprocess
import sys
import threading

import pytest

from iblnet_sync import BroadcastError, ExpMessage, ExpStatus, RigServer, Services, core
from tests.peers import IblutilMain
from tests.relay import CopyOnce

TODAY = datetime.date.today()


@pytest.fixture
def servers(no_leaked_threads):
    made = []

    def make(name, **options):
        server = RigServer('udp://127.0.0.1:0', name=name, **options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def test_lifecycle_driven_by_our_services(servers):
    started = threading.Event()
    cameras = servers('cameras', main_sync=True)
    ephys = servers('neuropixel')
    cameras.assign_handler('EXPSTART', lambda data: started.set() or {'frames': 0})
    with Services({'cameras': cameras.uri, 'neuropixel': ephys.uri}, timeout=5) as services:
        info = services.info('CONNECTED', {'subject': 'mouse', 'main_sync': False})
        ref = f'{TODAY}_1_mouse'
        assert info['cameras'][0] == 0 and info['cameras'][1]['main_sync'] is True
        assert info['cameras'][1]['exp_ref'] == ref
        assert info['neuropixel'][1]['main_sync'] is False and info['neuropixel'][1]['exp_ref'] is None
        assert services.init({'exp_ref': ref}) == {'cameras': [10, None], 'neuropixel': [10, None]}
        assert ephys.exp_ref == {'subject': 'mouse', 'date': TODAY, 'sequence': 1}
        assert services.start(ref) == {'cameras': [ref, {'frames': 0}], 'neuropixel': [ref, None]}
        assert started.is_set()
        assert services.status('RUNNING') == {'cameras': [20], 'neuropixel': [20]}
        assert services.stop() == {'neuropixel': [None], 'cameras': [None]}
        assert cameras.status is ExpStatus.STOPPED and ephys.status is ExpStatus.STOPPED
        assert services.cleanup() == {'neuropixel': [None], 'cameras': [None]}


def test_lifecycle_driven_by_iblutil_services(servers):
    cameras = servers('cameras', exp_ref='2026-11-24_2_mouse', main_sync=True)
    main = IblutilMain({'cameras': cameras.uri})
    try:
        info = main.call('info', ExpStatus.CONNECTED, {'subject': 'mouse'})
        assert info['cameras'][1]['exp_ref'] == '2026-11-24_2_mouse'
        assert main.call('init', {'exp_ref': '2026-11-24_2_mouse'}) == {'cameras': [10, None]}
        assert main.call('start', '2026-11-24_2_mouse') == {'cameras': ['2026-11-24_2_mouse', None]}
        assert main.call('status', ExpStatus.RUNNING) == {'cameras': [20]}
        assert main.call('stop', immediately=True, data={'error': 'X'}) == {'cameras': [None]}
        assert main.call('cleanup') == {'cameras': [None]}
        assert main.services['cameras'].is_connected, 'iblutil closes its socket on any protocol error'
    finally:
        main.close()


def test_failing_handler_reports_the_error_and_keeps_serving(servers):
    rig = servers('cameras')
    rig.assign_handler('EXPINIT', lambda data: 1 / 0)
    with Services({'cameras': rig.uri}, timeout=5) as services:
        with pytest.raises(BroadcastError, match='ZeroDivisionError') as caught:
            services.init({'exp_ref': '2026-11-24_1_mouse'})
        assert caught.value.failures['cameras'].stage == 'error report'
        assert rig.status is ExpStatus.CONNECTED
        assert services.status('CONNECTED') == {'cameras': [0]}


def test_alyx_token_exchange(servers):
    rig = servers('cameras')
    given = []
    rig.assign_handler('ALYX', lambda data: given.append(data) or ('https://alyx.example.org', {'u': 't'}))
    with Services({'cameras': rig.uri}, timeout=5) as services:
        assert services.alyx() == {'cameras': ['https://alyx.example.org', {'u': 't'}]}
        assert given == [[None, {}]]


def test_repeated_request_is_echoed_but_handled_once(servers):
    import socket
    rig = servers('cameras')
    calls = []
    release = threading.Event()
    rig.assign_handler('EXPSTART', lambda data: calls.append(data) or release.wait(5))
    host, port = rig.uri[len('udp://'):].rsplit(':', 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as main:
        main.settimeout(5)
        main.sendto(b'[2, "2026-11-24_1_mouse", null]', (host, int(port)))
        assert main.recv(100) == b'[2, "2026-11-24_1_mouse", null]'
        main.sendto(b'[2,"2026-11-24_1_mouse",null]', (host, int(port)))  # a resend, other spelling
        assert main.recv(100) == b'[2,"2026-11-24_1_mouse",null]'
        release.set()
        response = main.recv(100)
        assert response == b'[2, "2026-11-24_1_mouse", true]\n'  # the newline: this rig runs iblnet_sync
        main.sendto(response, (host, int(port)))
    assert len(calls) == 1


def test_port_in_use_is_a_clear_error(servers):
    rig = servers('cameras')
    with pytest.raises(OSError, match='Cannot listen on'):
        RigServer(rig.uri)


def test_token_given_by_the_main_rig_reaches_the_handler_without_an_answer(servers):
    rig = servers('cameras')
    given = threading.Event()
    rig.assign_handler('ALYX', lambda data: given.set())

    class LoggedIn:
        base_url, user, _token, is_logged_in = 'https://alyx.example.org', 'u', {'token': 't'}, True

    with Services({'cameras': rig.uri}, timeout=5) as services:
        assert services.alyx(LoggedIn()) == {'cameras': None}
        assert given.wait(5)
        assert services.status('CONNECTED') == {'cameras': [0]}


def test_error_reports_reach_event_0_callbacks_and_a_failure_is_raised_not_logged(servers, caplog):
    rig = servers('cameras')
    rig.assign_handler('EXPINIT', lambda data: {}['missing'])
    with Services({'cameras': rig.uri}, timeout=5) as services:
        report = services['cameras'].on_event(0)
        with caplog.at_level(logging.ERROR, logger='iblnet_sync.communicator'):
            with pytest.raises(BroadcastError, match="KeyError: 'missing'"):
                services.init({'exp_ref': '2026-11-25_1_mouse'})
        data, _ = report.result(5)
        assert data == ["KeyError: 'missing'", int(ExpMessage.EXPINIT)]
        main_side = [r.getMessage() for r in caplog.records if r.name == 'iblnet_sync.communicator']
        assert not [m for m in main_side if 'KeyError' in m]  # raised to the caller: not logged as well


def test_serve_forever_ends_on_ctrl_c_with_one_line_and_no_traceback():
    code = ('import logging; from iblnet_sync import RigServer; logging.basicConfig(level=logging.INFO); '
            'RigServer("udp://127.0.0.1:0", name="cameras").serve_forever()')
    with subprocess.Popen([sys.executable, '-c', code], stderr=subprocess.PIPE, text=True) as process:
        try:
            assert 'cameras listening on udp://127.0.0.1:' in process.stderr.readline()
            assert 'serving until Ctrl-C' in process.stderr.readline()
            process.send_signal(signal.SIGINT)
            assert process.wait(10) == 0
            rest = process.stderr.read()
        finally:  # (whatever failed, or if the test run itself is stopped: no rig left serving)
            if process.poll() is None:
                process.kill()
    assert 'Traceback' not in rest and rest.count('\n') == 1 and 'interrupted' in rest


def _from_host(rig, host, name):
    """A Communicator whose datagrams come from `host` (another address of the loopback network)."""
    import socket

    from iblnet_sync import Communicator
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.connect(('127.0.0.1', int(rig.uri.rsplit(':', 1)[1])))
    return Communicator(rig.uri, name, sock=sock, timeout=2)


def test_only_allowed_hosts_drive_a_rig_and_each_other_host_is_logged_once(servers, caplog):
    rig = servers('cameras', allow=['127.0.0.1/32'])
    with Services({'cameras': rig.uri}, timeout=2) as services, _from_host(rig, '127.0.0.2', 'stranger') as stranger:
        assert services.status('CONNECTED') == {'cameras': [0]}
        for _ in range(2):
            with pytest.raises(TimeoutError, match='no echo'):
                stranger.request(b'[1, {"exp_ref": "2026-11-24_1_x"}]', timeout=0.3)
        assert rig.status is ExpStatus.CONNECTED and rig.exp_ref is None
    assert [r.getMessage() for r in caplog.records].count(
        "cameras: ignoring 127.0.0.2, which is not in allow (127.0.0.1/32)") == 1
    with pytest.raises(ValueError, match="allow: 'rig.example.org' is not an IP address"):
        RigServer('udp://127.0.0.1:0', allow=['rig.example.org'])


def test_an_experiment_belongs_to_the_host_that_initialised_it(servers):
    rig = servers('cameras')
    ref = f'{TODAY}_1_mouse'
    with Services({'cameras': rig.uri}, timeout=2) as owner, _from_host(rig, '127.0.0.2', 'intruder') as intruder:
        owner.init({'exp_ref': ref})
        owner.start(ref)
        for call in (lambda: intruder.init({'exp_ref': f'{TODAY}_9_other'}), lambda: intruder.start(f'{TODAY}_9_other'),
                     lambda: intruder.stop(), lambda: intruder.stop({'error': 'x'}, immediately=True),
                     lambda: intruder.cleanup()):
            with pytest.raises(Exception, match=f'runs experiment {ref} of 127.0.0.1') as refused:
                call()
            assert 'error report' in str(refused.value)
        assert rig.status is ExpStatus.RUNNING and rig.exp_ref['sequence'] == 1  # nothing changed
        assert intruder.status('CONNECTED') == [int(ExpStatus.RUNNING)]  # anyone allowed may ask
        with Services({'cameras': rig.uri}, timeout=2) as restarted:  # the owner's task again, from a new port
            assert restarted.init({'exp_ref': f'{TODAY}_2_mouse'}) == {'cameras': [10, None]}
            restarted.stop()
        assert intruder.init({'exp_ref': f'{TODAY}_9_other'}) == [10, None]  # free once it ended


def _relay_to(rig, late: bytes, after: float) -> CopyOnce:
    """A relay to `rig` that sends its datagram `late` to the main once more, `after` seconds later."""
    host, port = rig.uri[len('udp://'):].rsplit(':', 1)
    return CopyOnce((host, int(port)), late, to_rig=False, after=after)


@pytest.fixture
def wide_windows(monkeypatch):
    """The rig's windows for a bounce, 0.5 s (not 0.1 and 0.2 s): a copy that a busy machine delays by
    a tenth of a second still counts as part of the bounce."""
    monkeypatch.setattr(core, 'REPEAT_WINDOW', 0.5)
    monkeypatch.setattr(core, 'BOUNCE_WINDOW', 0.5)


def test_a_late_copy_of_an_echo_starts_no_storm_with_an_iblutil_main(servers, wide_windows):
    """iblutil's main takes a late copy of our echo for a new message and echoes it: without R14 the rig took
    that for the request asked again, handled it, echoed it, and the two bounced it for ever."""
    rig = servers('cameras')
    handled = []
    rig.assign_handler('EXPINIT', handled.append)
    init = {'exp_ref': f'{TODAY}_1_mouse'}
    # (the copy comes after the answer, which takes a millisecond, and well within the window)
    relay = _relay_to(rig, late=b'[1, {"exp_ref": "%s_1_mouse"}]' % str(TODAY).encode(), after=0.2)
    main = IblutilMain({'cameras': relay.uri})
    try:
        assert main.call('init', init) == {'cameras': [10, None]}
        assert relay.released.wait(5)
        assert relay.wait_quiet(), f'still bouncing after 5 s: {relay.counts}, handled {len(handled)} times'
        assert relay.counts['forwarded'] <= 6 + 2 * 9 + 4 and len(handled) <= 2  # (+4: handled once more)
        assert main.call('status', ExpStatus.INITIALIZED) == {'cameras': [10]}  # the main lives on
    finally:
        main.close()
        relay.close()


def test_an_iblutil_main_that_asks_again_after_a_bounce_gets_its_echo(servers, wide_windows):
    """While the rig's EXPSTART handler runs, a late copy of our echo reaches iblutil's main, which takes it for
    the answer and echoes it; the two bounce it until the rig leaves the 9th copy unechoed. When the main then
    asks the same again, the rig echoes it (it used to stay silent for good: iblutil's main closed, as iblrig's
    main did in the simulator) and answers once its one handler run ends."""
    rig = servers('cameras')
    release, handled = threading.Event(), []
    rig.assign_handler('EXPSTART', lambda data: handled.append(data) or release.wait(10) and {'frames': 0})
    ref = f'{TODAY}_1_mouse'
    request = b'[2, "%s", null]' % ref.encode()
    relay = _relay_to(rig, late=request, after=0.05)
    main = IblutilMain({'cameras': relay.uri})
    asked_again: dict = {}
    try:
        assert main.call('init', {'exp_ref': ref}) == {'cameras': [10, None]}
        assert main.call('start', ref) == {'cameras': [ref, None]}  # (iblutil's main took the late copy for it)
        # (quiet for longer than the window: asked again, not a bounce)
        assert relay.released.wait(5) and relay.wait_quiet(quiet=0.8), f'still bouncing: {relay.counts}'
        echoes = relay.from_rig[request]
        assert echoes == 1 + 8, relay.counts  # our echo of the request, then 8 echoes of the bounce, the 9th not

        thread = threading.Thread(target=lambda: asked_again.update(main.call('start', ref)))
        thread.start()  # the main asks the same again, while the rig's one handler still runs
        with relay.from_rig_changed:
            assert relay.from_rig_changed.wait_for(lambda: relay.from_rig[request] > echoes, 5), 'no echo'
        release.set()
        thread.join(10)
        assert asked_again == {'cameras': [ref, {'frames': 0}]} and len(handled) == 1
        assert main.call('status', ExpStatus.RUNNING) == {'cameras': [20]}  # the main lives on
    finally:
        release.set()
        main.close()
        relay.close()
