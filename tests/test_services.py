"""Services against real iblutil rigs (iblutil's EchoProtocol in the server role) on loopback."""
import socket
import threading

import pytest

from iblnet_sync import BroadcastError, BroadcastTimeout, ExpMessage, ExpStatus, RigRefused, Services

REF = '2026-11-24_3_mouse'


def received_events(rig):
    return [event for event, _ in rig.received]


def test_lifecycle_broadcast_to_several_rigs(iblutil_rigs, no_leaked_threads):
    rigs = [iblutil_rigs(name) for name in ('cameras', 'neuropixel', 'widefield')]
    with Services({r.name: r.uri for r in rigs}, timeout=5) as services:
        assert list(services) == ['cameras', 'neuropixel', 'widefield'] and services.is_connected
        assert services['cameras'].port == rigs[0].port
        info = services.info('CONNECTED', {'subject': 'mouse'})
        assert info == {r.name: [0, {'exp_ref': None, 'main_sync': False, 'subject': None}] for r in rigs}
        assert services.init({'exp_ref': REF}) == {r.name: [10, None] for r in rigs}
        assert services.start(REF) == {r.name: [REF, None] for r in rigs}
        assert services.status(ExpStatus.RUNNING) == {r.name: [20] for r in rigs}
        stopped = services.stop()
        assert list(stopped) == ['widefield', 'neuropixel', 'cameras']  # reverse order
        assert list(services.cleanup(concurrent=False)) == ['widefield', 'neuropixel', 'cameras']
    for rig in rigs:
        assert received_events(rig) == [ExpMessage.EXPINFO, ExpMessage.EXPINIT, ExpMessage.EXPSTART,
                                         ExpMessage.EXPSTATUS, ExpMessage.EXPEND, ExpMessage.EXPCLEANUP]
        assert rig.errors == [] and rig.is_connected, 'every response must have been echoed'


def test_alyx_token_request(iblutil_rigs):
    rig = iblutil_rigs('cameras')
    with Services({'cameras': rig.uri}, timeout=5) as services:
        assert services.alyx() == {'cameras': ['https://alyx.example.org', {'rig-user': {'token': 'rig-token'}}]}


def test_callbacks_with_service(iblutil_rigs):
    rig = iblutil_rigs('cameras')
    got, done = [], threading.Event()

    def on_start(data, addr, service):
        got.append((data, service.name))
        done.set()

    with Services({'cameras': rig.uri}, timeout=5) as services:
        services.assign_callback('EXPSTART', on_start, return_service=True)
        services.start(REF)
        assert done.wait(5)
        assert got == [([REF, None], 'cameras')]
        assert services.clear_callbacks('EXPSTART', on_start) == {'cameras': 1}


def test_rig_that_never_answers_is_named_with_its_stage(iblutil_rigs):
    good, mute = iblutil_rigs('cameras'), iblutil_rigs('neuropixel', respond=False)
    with Services({'cameras': good.uri, 'neuropixel': mute.uri}, timeout=1.0) as services:
        with pytest.raises(TimeoutError) as caught:
            services.start(REF)
    error = caught.value
    assert isinstance(error, BroadcastTimeout)
    assert error.responses == {'cameras': [REF, None]}
    assert list(error.failures) == ['neuropixel']
    assert error.failures['neuropixel'].stage == 'no response'
    assert 'neuropixel' in str(error) and mute.uri in str(error) and 'EXPSTART' in str(error)


def test_late_response_is_still_echoed_and_the_rig_keeps_answering(iblutil_rigs):
    slow = iblutil_rigs('cameras', delay=0.4)
    with Services({'cameras': slow.uri}, timeout=0.1) as services:
        with pytest.raises(TimeoutError):
            services.status('CONNECTED')
        # the late response arrives after we gave up; iblutil kills the rig unless it is echoed
        assert slow.wait_for(lambda r: r.answered or r.errors, timeout=3)
        assert slow.answered == [ExpMessage.EXPSTATUS]
        slow.delay = 0
        services.timeout = 5
        assert services.status('CONNECTED') == {'cameras': [0]}
    assert slow.errors == [] and slow.is_connected


def test_refused_port_is_reported_well_before_the_timeout():
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(('127.0.0.1', 0))
    uri = f'udp://127.0.0.1:{closed.getsockname()[1]}'
    closed.close()
    with Services({'ghost': uri}, timeout=30) as services:
        with pytest.raises(BroadcastError) as caught:
            services.status('CONNECTED')
    assert not isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value.failures['ghost'], RigRefused)
    assert 'ghost' in str(caught.value) and uri in str(caught.value) and 'refused' in str(caught.value)


def test_junk_and_strangers_do_not_disturb_the_network_thread(iblutil_rigs):
    rig = iblutil_rigs('cameras')
    with Services({'cameras': rig.uri}, timeout=5) as services:
        local = services['cameras']._sock.getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for junk in (b'\x00' * 65000, b'[2, "x", null]', b'nonsense', b'[1]'):
                stranger.sendto(junk, local)
        assert services.status('CONNECTED') == {'cameras': [0]}
        assert services._dispatcher.is_alive


def test_invalid_uri_names_the_rig(no_leaked_threads):
    with pytest.raises(ValueError, match="'cameras'"):
        Services({'cameras': 'udp://127.0.0.1:0'})


def test_fast_polls_with_identical_bytes_every_round(iblutil_rigs):
    """A CONNECTED rig answers EXPSTATUS [32, 0] with [32, 0]: every round the same bytes, no storm."""
    rig = iblutil_rigs('cameras')
    with Services({'cameras': rig.uri}, timeout=5) as services:
        for _ in range(200):
            assert services.status('CONNECTED') == {'cameras': [0]}
    assert rig.errors == [] and rig.is_connected


class LoggedInAlyx:
    base_url, user, _token, is_logged_in = 'https://alyx.example.org', 'main-user', {'token': 'main-token'}, True


def test_giving_our_alyx_token_waits_for_the_echo_only(iblutil_rigs):
    rig = iblutil_rigs('cameras')
    with Services({'cameras': rig.uri}, timeout=5) as services:
        assert services.alyx(LoggedInAlyx()) == {'cameras': None}
        token = {'main-user': {'token': 'main-token'}}
        assert rig.wait_for(lambda r: r.received)  # iblutil echoes before it runs its callbacks
        assert rig.received[-1] == (ExpMessage.ALYX, ['https://alyx.example.org', token])
        assert services.status('CONNECTED') == {'cameras': [0]}


@pytest.mark.parametrize('arguments, error, message', [
    ({'remote_rigs': {'cameras': '127.0.0.1:9'}, 'echo_timeot': 1}, TypeError, "'echo_timeot'"),
    ({'remote_rigs': ['cameras']}, TypeError, 'must map rig names to URIs'),
    ({'remote_rigs': {'cameras': '127.0.0.1:9'}, 'timeout': 0}, ValueError, 'timeout must be > 0'),
    ({'remote_rigs': {'cameras': '127.0.0.1:9'}, 'resends': -1}, ValueError, 'resends must be'),
    ({'remote_rigs': {'ok': '127.0.0.1:9', 'cameras': 'udp://127.0.0.1:0'}}, ValueError, "Rig 'cameras'.*port 0"),
])
def test_bad_arguments_are_refused_before_anything_opens(arguments, error, message, no_leaked_threads):
    with pytest.raises(error, match=message):
        Services(**arguments)
