"""NetworkSession on a legacy task class, against real iblutil rigs and RigServers."""
import asyncio
import datetime
import logging
import operator
import os
import signal
import threading
from pathlib import Path

import pytest

import iblnet_sync.session
from iblnet_sync import BroadcastTimeout, ConfigError, ExpMessage, NetworkSession, RigServer, Services
from tests.legacy_task import FolderTask, LegacyTask, Task

TODAY = datetime.date.today()


def events(rig):
    return [event for event, _ in rig.received]


@pytest.fixture
def iblutil_rigs(iblutil_rigs):
    """conftest's iblutil rigs, each transport closed on its loop before the loop stops.

    Closing a transport schedules its socket's closing on the loop; a loop stopped in the
    same turn never runs it, and the transport warns (ResourceWarning) when collected.
    """
    made = []

    def make(*args, **kwargs):
        made.append(iblutil_rigs(*args, **kwargs))
        return made[-1]

    async def close(rig):
        rig.protocol.close()
        await asyncio.sleep(0)  # one loop turn: the transport's scheduled close runs

    yield make
    for rig in made:
        rig.loops.run(close(rig))


@pytest.fixture
def rigs_file(tmp_path):
    def write(content):
        path = tmp_path / 'remote_rigs.yaml'
        path.write_text(content)
        return path
    return write


def test_whole_lifecycle_with_names_from_a_yaml_file(iblutil_rigs, rigs_file, no_leaked_threads):
    cameras = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_2_mouse')
    ephys = iblutil_rigs('neuropixel')
    path = rigs_file(f'cameras: {cameras.uri}\nneuropixel: {ephys.uri}\nunused: udp://127.0.0.1:9\n')
    task = Task(remote_rigs=['cameras', 'neuropixel'], remote_rigs_file=path)
    assert task.remote_rigs.is_connected and list(task.remote_rigs.services) == ['cameras', 'neuropixel']
    assert task.exp_ref == {'subject': 'mouse', 'date': TODAY, 'sequence': 2}
    task.init_mixin_network()  # called again explicitly: nothing more is sent
    assert task.run() == 1
    assert not task.remote_rigs.is_connected
    for rig in (cameras, ephys):
        assert events(rig) == [ExpMessage.EXPINFO, ExpMessage.EXPINIT, ExpMessage.EXPSTART, ExpMessage.EXPEND]
        info = rig.received[0][1][1]
        assert info['subject'] == 'mouse' and info['main_sync'] is False and info['exp_ref'] is None
        assert info['experiment_description'] == {'devices': {'cameras': {'left': {}}}}
        assert rig.received[1][1] == [{'exp_ref': f'{TODAY}_2_mouse'}]
        assert rig.received[2][1] == [f'{TODAY}_2_mouse', None]
        assert rig.errors == []


def test_explicit_init_when_the_host_does_not_run_mixins(iblutil_rigs):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref={'subject': 'mouse', 'date': str(TODAY), 'sequence': 4})
    task = Task(remote_rigs={'cameras': rig.uri}, run_init_mixins=False)
    assert events(rig) == [] and task.exp_ref == {}
    task.init_mixin_network()
    assert task.exp_ref['sequence'] == 4
    task.start_mixin_network()
    task.stop_mixin_network()
    task.cleanup_mixin_network()
    assert events(rig) == [ExpMessage.EXPINFO, ExpMessage.EXPINIT, ExpMessage.EXPSTART, ExpMessage.EXPEND]


def test_subject_mismatch_is_a_value_error_naming_the_rig(iblutil_rigs, no_leaked_threads):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_rat')
    with pytest.raises(ValueError, match="'cameras'.*'rat'.*'mouse'"):
        Task(remote_rigs={'cameras': rig.uri})
    assert events(rig) == [ExpMessage.EXPINFO]


def test_date_mismatch_is_a_runtime_error_naming_the_rig(iblutil_rigs, no_leaked_threads):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref='2020-01-01_1_mouse')
    with pytest.raises(RuntimeError, match="'cameras'.*2020-01-01"):
        Task(remote_rigs={'cameras': rig.uri})


@pytest.mark.parametrize('claims', [0, 2])
def test_exactly_one_main_sync(iblutil_rigs, claims, no_leaked_threads):
    rigs = {name: iblutil_rigs(name, main_sync=i < claims, exp_ref=f'{TODAY}_1_mouse')
            for i, name in enumerate(('cameras', 'neuropixel'))}
    with pytest.raises(RuntimeError, match=f'Exactly one remote rig must be the main sync; {claims} claim'):
        Task(remote_rigs={n: r.uri for n, r in rigs.items()})


def test_this_rig_as_main_sync(iblutil_rigs):
    rig = iblutil_rigs('cameras')
    task = Task(remote_rigs={'cameras': rig.uri}, main_sync=True, session_number=7)
    assert task.exp_ref == {'subject': 'mouse', 'date': TODAY, 'sequence': 7}
    assert rig.received[0][1][1]['main_sync'] is True
    assert rig.received[0][1][1]['exp_ref'] == f'{TODAY}_7_mouse'
    assert rig.received[1][1] == [{'exp_ref': f'{TODAY}_7_mouse'}]
    task.cleanup_mixin_network()


def test_this_rig_as_main_sync_refuses_another_claim(iblutil_rigs):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')
    with pytest.raises(RuntimeError, match='cameras also claim'):
        Task(remote_rigs={'cameras': rig.uri}, main_sync=True, session_number=1)


def test_crash_reaches_every_rig_as_interrupt(iblutil_rigs, no_leaked_threads):
    cameras = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')
    ephys = iblutil_rigs('neuropixel')
    task = Task(remote_rigs={'cameras': cameras.uri, 'neuropixel': ephys.uri},
                crash=RuntimeError('Bpod disconnected'))
    with pytest.raises(RuntimeError, match='Bpod disconnected'):
        task.run()
    for rig in (cameras, ephys):
        assert events(rig)[-1] is ExpMessage.EXPINTERRUPT
        data = rig.received[-1][1][0]
        assert data['error'] == 'RuntimeError' and data['message'] == 'Bpod disconnected'
        assert data['file'].endswith('legacy_task.py') and isinstance(data['line_no'], int)
        assert 'Bpod disconnected' in data['traceback']
    assert not task.remote_rigs.is_connected


def test_raise_on_exception_both_ways(iblutil_rigs, no_leaked_threads):
    good = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')
    task = Task(remote_rigs={'cameras': good.uri}, network_timeout=1.0)
    good.respond = False
    returned = task.communicate('status', 'CONNECTED', raise_on_exception=False)
    assert isinstance(returned, BroadcastTimeout) and 'cameras' in str(returned)
    assert task.remote_rigs.is_connected
    with pytest.raises(TimeoutError):
        task.communicate(ExpMessage.EXPSTATUS, 'CONNECTED')
    assert not task.remote_rigs.is_connected


def test_no_rigs_means_no_network_at_all(no_leaked_threads):
    before = threading.active_count()
    task = Task(remote_rigs=None)
    assert threading.active_count() == before and not task.remote_rigs
    assert task.run() == 1 and task.exp_ref == {} and task.communicate('status', 0) == {}


def test_yaml_errors(rigs_file, tmp_path, monkeypatch):
    path = rigs_file('cameras: udp://127.0.0.1:9\n')
    with pytest.raises(ValueError, match=r"\['ephys'\].*remote_rigs.yaml"):
        Task(remote_rigs=['ephys'], remote_rigs_file=path)
    rigs_file('- just\n- a list\n')
    with pytest.raises(ConfigError, match='must map rig names'):
        Task(remote_rigs=['cameras'], remote_rigs_file=path)
    with pytest.raises(ConfigError, match='No remote rigs file'):
        Task(remote_rigs=['cameras'], remote_rigs_file=tmp_path / 'nowhere')
    (tmp_path / 'env').mkdir()
    (tmp_path / 'env' / 'remote_devices.yaml').write_text('cameras: udp://127.0.0.1:9\n')
    monkeypatch.setenv('IBLNET_SYNC_REMOTE_RIGS', str(tmp_path / 'env'))
    from iblnet_sync.config import resolve_remote_rigs
    assert resolve_remote_rigs(['cameras']) == {'cameras': 'udp://127.0.0.1:9'}


def test_sigterm_cleans_up_and_restores_the_previous_handler(no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', main_sync=True, exp_ref=f'{TODAY}_1_mouse') as server:
        received = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
        try:
            handler = signal.getsignal(signal.SIGTERM)
            task = Task(remote_rigs={'cameras': server.uri})
            assert task.remote_rigs.is_connected
            os.kill(os.getpid(), signal.SIGTERM)
            assert received.wait(5)
            assert not task.remote_rigs.is_connected
            assert signal.getsignal(signal.SIGTERM) is handler
        finally:
            signal.signal(signal.SIGTERM, previous)


def test_alyx_token_from_a_rig_is_installed_without_prompt(iblutil_rigs, fresh_home):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')
    task = Task(remote_rigs={'cameras': rig.uri})
    installed = threading.Event()
    task.remote_rigs.services.assign_callback('ALYX', lambda *_: installed.set())  # runs after ours
    assert task.communicate('alyx') == {'cameras': ['https://alyx.example.org', {'rig-user': {'token': 'rig-token'}}]}
    assert installed.wait(5)
    assert task.one.alyx.is_logged_in and task.one.alyx.user == 'rig-user'
    assert task.one.alyx.base_url == 'https://alyx.example.org'
    import one.params
    assert one.params.get(client='https://alyx.example.org', silent=True).TOKEN == {'rig-user': {'token': 'rig-token'}}
    assert Path.home() == fresh_home, 'ONE must write under the isolated HOME'
    task.cleanup_mixin_network()


def test_a_rig_asking_for_our_token_gets_it(iblutil_rigs):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')
    task = Task(remote_rigs={'cameras': rig.uri})
    task.install_alyx_token('https://alyx.example.org', {'main-user': {'token': 'main-token'}})
    rig.ask(b'[128, null, {}]')
    assert rig.wait_for(lambda r: r.received[-1][0] is ExpMessage.ALYX)
    assert rig.received[-1][1] == ['https://alyx.example.org', {'main-user': {'token': 'main-token'}}]
    task.cleanup_mixin_network()


def test_first_expinfo_is_asked_again_of_the_rig_that_lost_it(no_leaked_threads):
    from tests.relay import LossyRelay

    class LoseFirstRequest(LossyRelay):
        def _forward(self, send, data):
            if send == self.back.send and not self.counts['dropped']:
                self.counts['dropped'] += 1  # the main rig's first datagram never arrives
                return
            super()._forward(send, data)

    with RigServer('udp://127.0.0.1:0', name='cameras') as cameras, \
            RigServer('udp://127.0.0.1:0', name='ephys', main_sync=True) as ephys:
        host, port = cameras.uri[len('udp://'):].rsplit(':', 1)
        relay = LoseFirstRequest((host, int(port)))
        try:
            task = Task(remote_rigs={'cameras': relay.uri, 'ephys': ephys.uri},
                        network_options={'echo_timeout': 0.1})
            assert relay.counts['dropped'] == 1
            # asked again of cameras only: ephys, the main sync, made one reference, not two
            assert task.exp_ref == {'subject': 'mouse', 'date': TODAY, 'sequence': 1}
            assert cameras.status.name == ephys.status.name == 'INITIALIZED'
            task.cleanup_mixin_network()
        finally:
            relay.close()


# --- the drop-in contract: the session number comes from the main sync ---
@pytest.fixture
def data_root(tmp_path):
    """A data folder where sessions 001 to 003 of today exist: the host's own numbering would pick 004."""
    for number in ('001', '002', '003'):
        (tmp_path / 'data' / 'mouse' / str(TODAY) / number).mkdir(parents=True)
    return tmp_path / 'data'


@pytest.mark.parametrize('main_kind', ['iblutil', 'RigServer'])
def test_iblrig_style_task_takes_the_main_syncs_number_and_folder(main_kind, iblutil_rigs, data_root,
                                                                    no_leaked_threads):
    reference = f'{TODAY}_2_mouse'
    with RigServer('udp://127.0.0.1:0', name='ephys', main_sync=main_kind == 'RigServer', exp_ref=reference) as ours:
        theirs = iblutil_rigs('cameras', main_sync=main_kind == 'iblutil', exp_ref=reference)
        task = FolderTask(remote_rigs={'cameras': theirs.uri, 'ephys': ours.uri}, data_root=data_root)
        try:
            assert task.main_sync_rig == ('cameras' if main_kind == 'iblutil' else 'ephys')
            assert task.number_before_paths == 2  # set before the host computed its paths
            assert task.session_info['SESSION_NUMBER'] == 2
            assert task.paths['SESSION_FOLDER'] == data_root / 'mouse' / str(TODAY) / '002'
            assert theirs.received[1][1] == [{'exp_ref': reference}] and ours.status.name == 'INITIALIZED'
            assert task.run() == data_root / 'mouse' / str(TODAY) / '002'
        finally:
            task.cleanup_mixin_network()


def test_iblrig_style_task_without_network_numbers_as_its_host(data_root, no_leaked_threads):
    task = FolderTask(remote_rigs=None, data_root=data_root)
    assert task.main_sync_rig is None and task.session_info['SESSION_NUMBER'] == 4
    assert task.paths['SESSION_FOLDER'].name == '004'


def test_this_rig_as_main_sync_keeps_its_number_and_hears_its_reference(iblutil_rigs):
    seen = []

    class Recording(Task):
        def on_exp_ref(self, exp_ref):
            seen.append((exp_ref, self.session_info['SESSION_NUMBER']))

    rig = iblutil_rigs('cameras')
    task = Recording(remote_rigs={'cameras': rig.uri}, main_sync=True, session_number=7)
    task.cleanup_mixin_network()
    assert seen == [({'subject': 'mouse', 'date': TODAY, 'sequence': 7}, 7)]
    assert task.main_sync_rig is None and task.session_info['SESSION_NUMBER'] == 7


def test_on_exp_ref_is_called_once_after_the_number_and_before_init(iblutil_rigs, no_leaked_threads):
    seen = []

    class Recording(Task):
        def on_exp_ref(self, exp_ref):
            seen.append((exp_ref, self.session_info['SESSION_NUMBER'], events(rig)))

    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_5_mouse')
    task = Recording(remote_rigs={'cameras': rig.uri}, session_number=1)
    task.init_mixin_network()  # again: nothing more happens
    task.cleanup_mixin_network()
    assert seen == [({'subject': 'mouse', 'date': TODAY, 'sequence': 5}, 5, [ExpMessage.EXPINFO])]
    assert task.session_info['SESSION_NUMBER'] == 5 and events(rig)[-1] is ExpMessage.EXPINIT


def test_on_exp_ref_raising_initialises_no_rig(iblutil_rigs, no_leaked_threads):
    class Refusing(Task):
        def on_exp_ref(self, exp_ref):
            raise FileExistsError(f'session {exp_ref["sequence"]} already has data')

    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_3_mouse')
    with pytest.raises(FileExistsError, match='session 3'):
        Refusing(remote_rigs={'cameras': rig.uri})
    assert events(rig) == [ExpMessage.EXPINFO]


def test_positional_arguments_reach_the_host():
    task = Task('rat', remote_rigs=None)
    assert task.session_info['SUBJECT_NAME'] == 'rat'


# --- where the rigs file is ---
def test_nested_names_and_iblrig_settings_find_remote_devices_yaml(iblutil_rigs, tmp_path, data_root):
    cameras = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_2_mouse')
    ephys = iblutil_rigs('neuropixel')
    remote = tmp_path / 'remote'
    remote.mkdir()
    (remote / 'remote_devices.yaml').write_text(f'cameras: {cameras.uri}\nneuropixel: {ephys.uri}\n')
    settings = {'iblrig_remote_data_path': str(remote), 'ALYX_LAB': 'lab'}
    task = FolderTask(remote_rigs=[['cameras'], [None, 'neuropixel', 'cameras']], iblrig_settings=settings,
                      data_root=data_root)
    task.cleanup_mixin_network()
    assert dict(task.remote_rigs) == {'cameras': cameras.uri, 'neuropixel': ephys.uri}
    assert task.iblrig_settings == settings  # the host takes iblrig_settings: it got them too
    assert task.paths['SESSION_FOLDER'].name == '002'
    plain = Task(remote_rigs=['cameras'], iblrig_settings=settings, run_init_mixins=False)  # a host without them
    plain.cleanup_mixin_network()
    assert dict(plain.remote_rigs) == {'cameras': cameras.uri}


def test_unknown_names_are_a_value_error_naming_them(rigs_file):
    path = rigs_file('cameras: udp://127.0.0.1:9\n')
    with pytest.raises(ValueError, match=r"\['ephys', 'widefield'\] not in"):
        Task(remote_rigs=['cameras', ['ephys', ['widefield']]], remote_rigs_file=path)


def test_a_bad_entry_in_the_rigs_file_is_named(rigs_file):
    path = rigs_file('cameras: udp://127.0.0.1:70000\n')
    with pytest.raises(ConfigError, match="entry 'cameras'.*udp://127.0.0.1:70000"):
        Task(remote_rigs=['cameras'], remote_rigs_file=path)


# --- errors before anything opens ---
@pytest.fixture
def opened(monkeypatch):
    """Every connection NetworkSession opens, recorded."""
    made = []

    class Recording(Services):
        def __init__(self, *args, **kwargs):
            made.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(iblnet_sync.session, 'Services', Recording)
    return made


@pytest.mark.parametrize('keywords, error, message', [
    ({'network_timeot': 1}, TypeError, r"'network_timeot' \(did you mean 'network_timeout'\?\)"),
    ({'subjet': 'rat'}, TypeError, r"'subjet' \(did you mean 'subject'\?\).*LegacyTask, which takes"),
    ({'network_timeout': 0}, ValueError, 'network_timeout must be > 0'),
    ({'network_timeout': -1.5}, ValueError, 'network_timeout must be > 0'),
    ({'network_timeout': '10'}, TypeError, 'network_timeout must be a number'),
    ({'network_options': ['echo_timeout']}, TypeError, 'network_options must be a mapping'),
    ({'network_options': {'echo_timeot': 1}}, TypeError, r"'echo_timeot' \(did you mean 'echo_timeout'\?\)"),
])
def test_bad_arguments_fail_before_anything_opens(keywords, error, message, opened, no_leaked_threads):
    with pytest.raises(error, match=message):
        Task(remote_rigs={'cameras': 'udp://127.0.0.1:9'}, **keywords)
    assert opened == []
    Task(remote_rigs={'cameras': 'udp://127.0.0.1:9'}, run_init_mixins=False).cleanup_mixin_network()
    assert len(opened) == 1  # the recording sees a connection that does open


# --- the mapping of rigs is read-only ---
def test_remote_rigs_is_read_only(iblutil_rigs):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')
    task = Task(remote_rigs={'cameras': rig.uri})
    rigs = task.remote_rigs
    try:
        for change in (lambda: rigs.pop('cameras'), lambda: operator.setitem(rigs, 'ephys', 'udp://127.0.0.1:9'),
                       lambda: operator.delitem(rigs, 'cameras'), lambda: rigs.update(ephys='x'), rigs.clear,
                       rigs.popitem, lambda: operator.setitem(rigs.uris, 'ephys', 'udp://127.0.0.1:9')):
            with pytest.raises(TypeError):
                change()
        assert dict(rigs) == {'cameras': rig.uri} and 'cameras' in rigs and rigs['cameras'] == rig.uri
        assert rigs.is_connected
    finally:
        task.cleanup_mixin_network()


# --- a failure is reported once ---
def test_a_failure_is_raised_or_returned_not_also_logged(iblutil_rigs, caplog, no_leaked_threads):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')
    task = Task(remote_rigs={'cameras': rig.uri}, network_timeout=1.0)
    rig.respond = False
    with caplog.at_level(logging.DEBUG, logger='iblnet_sync.session'):
        assert isinstance(task.communicate('status', 'CONNECTED', raise_on_exception=False), BroadcastTimeout)
        with pytest.raises(TimeoutError):
            task.communicate('status', 'CONNECTED')
    assert [r for r in caplog.records if r.name == 'iblnet_sync.session' and r.levelno >= logging.WARNING] == []


def test_a_crash_whose_interrupt_fails_is_raised_and_the_interrupt_logged_once(iblutil_rigs, caplog,
                                                                               no_leaked_threads):
    rig = iblutil_rigs('cameras', main_sync=True, exp_ref=f'{TODAY}_1_mouse')

    class CrashingHost(LegacyTask):
        def run(self):
            rig.respond = False  # the rig still echoes, but will not answer EXPINTERRUPT
            raise RuntimeError('Bpod disconnected')

    class Crashing(NetworkSession, CrashingHost):
        pass

    task = Crashing(remote_rigs={'cameras': rig.uri}, network_timeout=1.0)
    with caplog.at_level(logging.WARNING, logger='iblnet_sync'), pytest.raises(RuntimeError, match='Bpod'):
        task.run()
    reports = [r.getMessage() for r in caplog.records if r.name == 'iblnet_sync.session']
    assert len(reports) == 1 and reports[0].startswith('EXPINTERRUPT did not reach every rig')
    assert events(rig)[-1] is ExpMessage.EXPINTERRUPT and not task.remote_rigs.is_connected


def test_a_host_taking_any_keyword_gets_them_all(tmp_path):
    class AnyKeywords:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class Open(NetworkSession, AnyKeywords):
        pass

    settings = {'iblrig_remote_data_path': str(tmp_path)}
    task = Open('mouse', remote_rigs=None, iblrig_settings=settings, stub='x.yaml')
    assert task.args == ('mouse',) and task.kwargs == {'iblrig_settings': settings, 'stub': 'x.yaml'}
    with pytest.raises(TypeError, match=r"'subject'.*NetworkSession takes remote_rigs.*object, which takes none"):
        type('Bare', (NetworkSession,), {})(remote_rigs=None, subject='mouse')


def test_whole_lifecycles_survive_ten_percent_loss_each_way_with_default_settings(no_leaked_threads):
    """Default settings, a link that drops 10% of the datagrams each way: every lifecycle succeeds,
    the first EXPINFO included (its info tells our rig to tag its answer, sent again until echoed)."""
    from tests.relay import LossyRelay
    with RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True) as rig:
        host, port = rig.uri[len('udp://'):].rsplit(':', 1)
        relay = LossyRelay((host, int(port)), loss=0.1, seed=7)
        try:
            for n in range(12):
                task = Task(remote_rigs={'cameras': relay.uri})
                assert task.exp_ref['sequence'] == n + 1 and task.session_info['SESSION_NUMBER'] == n + 1
                assert task.run() == 1
        finally:
            relay.close()
        assert relay.counts['dropped'] >= 10, relay.counts  # the link did lose datagrams


def _recording_rig(name, main_sync=False, fail_at=None):
    """A RigServer that records the events it handles and raises at `fail_at`."""
    rig = RigServer('udp://127.0.0.1:0', name=name, main_sync=main_sync)
    rig.handled = []

    def handler(event):
        def handle(data):
            rig.handled.append(event)
            if event == fail_at:
                raise RuntimeError(f'{name} cannot {event}')
        return handle
    for event in ('EXPINIT', 'EXPSTART', 'EXPEND', 'EXPINTERRUPT'):
        rig.assign_handler(event, handler(event))
    return rig


@pytest.mark.parametrize('fail_at', ['EXPINIT', 'EXPSTART', 'EXPEND'])
def test_a_rig_failing_after_expinfo_gets_every_rig_interrupted_then_closed_then_raised(fail_at, no_leaked_threads):
    with _recording_rig('cameras', main_sync=True) as cameras, _recording_rig('ephys', fail_at=fail_at) as ephys:
        task = None
        with pytest.raises(Exception, match=f'ephys cannot {fail_at}') as raised:
            task = Task(remote_rigs={'cameras': cameras.uri, 'ephys': ephys.uri})
            task.run()
        assert 'error report' in str(raised.value)
        for rig in (cameras, ephys):
            assert rig.handled[-1] == 'EXPINTERRUPT', (rig.name, rig.handled)  # none left recording
        assert task is None or not task.remote_rigs.is_connected


def test_no_main_sync_says_how_to_make_one(no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='cameras') as cameras:
        with pytest.raises(RuntimeError, match=r"0 claim it.*set main_sync: true.*MAIN_SYNC'\] = True"):
            Task(remote_rigs={'cameras': cameras.uri})


def test_a_main_sync_rig_never_hands_out_a_number_twice_across_restarts(tmp_path, no_leaked_threads):
    numbers = tmp_path / 'numbers.json'
    with RigServer('udp://127.0.0.1:0', name='sync', main_sync=True, session_numbers=numbers) as rig:
        with Services({'sync': rig.uri}) as services:
            asked = [services.info('CONNECTED', {'subject': 'mouse'})['sync'][1]['exp_ref'] for _ in range(3)]
            assert asked == [f'{TODAY}_1_mouse'] * 3  # asked again before EXPINIT: the same offer
            assert services.info('CONNECTED', {'subject': 'rat'})['sync'][1]['exp_ref'] == f'{TODAY}_1_rat'
            services.init({'exp_ref': asked[0]})  # claimed
            services.stop()
            assert services.info('CONNECTED', {'subject': 'mouse'})['sync'][1]['exp_ref'] == f'{TODAY}_2_mouse'
    with RigServer('udp://127.0.0.1:0', name='sync', main_sync=True, session_numbers=numbers) as restarted:
        task = Task(remote_rigs={'sync': restarted.uri})
        assert task.exp_ref['sequence'] == 2  # not 1 again: that folder holds data
        task.run()
    task = None
    with RigServer('udp://127.0.0.1:0', name='sync', main_sync=True, session_numbers=numbers) as again:
        task = Task(remote_rigs={'sync': again.uri})
        assert task.exp_ref['sequence'] == 3
        task.cleanup_mixin_network()


def test_the_default_numbers_file_is_in_the_home_folder(fresh_home, no_leaked_threads):
    with RigServer('udp://127.0.0.1:0', name='sync', main_sync=True) as rig:
        Task(remote_rigs={'sync': rig.uri}).run()
    assert (fresh_home / '.iblnet_sync' / 'session_numbers.json').read_text().count(f'"{TODAY}"') == 1
