"""RigExperiment, the rig's experiment without a network: answers, status, owner and session numbers."""
import datetime
import json

import pytest

from iblnet_sync import ExpMessage, ExpStatus, dialect, protocol
from iblnet_sync.experiment import OWNED_EVENTS, RigExperiment
from iblnet_sync.session_numbers import SessionNumbers
from iblnet_sync.version import __version__

DAY = datetime.date(2026, 11, 30)
NOON = datetime.datetime(2026, 11, 30, 12).timestamp()  # (local time: its date is DAY wherever the tests run)
REF = '2026-11-30_1_mouse'
MAIN, OTHER = '10.0.0.5', '10.0.0.6'


def make(**options) -> RigExperiment:
    options.setdefault('clock', lambda: NOON)
    return RigExperiment('cameras', **options)


def answer(experiment: RigExperiment, event: ExpMessage, *data, host: str = MAIN, handler=None) -> list | None:
    """The decoded answer to `event` with `data` (the event code first), or None."""
    datagram = experiment.answer(event, list(data), host, handler)
    return None if datagram is None else json.loads(datagram)


def run_to(experiment: RigExperiment, status: ExpStatus, host: str = MAIN) -> None:
    """Drive a fresh experiment from CONNECTED to `status`, as the main at `host`."""
    steps = [(ExpMessage.EXPINIT, [{'exp_ref': REF}]), (ExpMessage.EXPSTART, [REF, None]),
             (ExpMessage.EXPEND, [[]])]
    for event, data in steps[:[ExpStatus.INITIALIZED, ExpStatus.RUNNING, ExpStatus.STOPPED].index(status) + 1]:
        experiment.answer(event, data, host, None)
    assert experiment.status is status


# --- the answer to each event ---
def test_info_answers_status_and_the_info_iblrig_reads_with_the_handlers_dict_merged():
    experiment = make(experiment_description={'devices': {'cameras': {}}})
    got = answer(experiment, ExpMessage.EXPINFO, 0, {'subject': 'mouse'}, handler=lambda data: {'cameras': 2})
    assert got == [64, 0, {'exp_ref': None, 'main_sync': False, 'master': False,
                           'experiment_description': {'devices': {'cameras': {}}}, 'name': 'cameras',
                           'rig_version': __version__, 'spec_version': got[2]['spec_version'],
                           dialect.PEER_KEY: dialect.PEER_VERSION, 'clock': NOON, 'cameras': 2}]
    assert experiment.info() == {k: v for k, v in got[2].items() if k != 'cameras'}


def test_info_keeps_its_own_fields_when_the_handler_returns_no_dict():
    got = answer(make(), ExpMessage.EXPINFO, 0, None, handler=lambda data: ['not', 'a', 'dict'])
    assert got[:2] == [64, 0] and 'not' not in json.dumps(got[2]) and got[2]['name'] == 'cameras'


def test_status_answers_the_status_only_whatever_the_handler_returns():
    experiment, seen = make(), []
    assert answer(experiment, ExpMessage.EXPSTATUS, 0, {}, handler=lambda data: seen.append(data) or 'x') == [32, 0]
    assert seen == [[0, {}]]
    run_to(experiment, ExpStatus.RUNNING)
    assert answer(experiment, ExpMessage.EXPSTATUS, 20, {}) == [32, 20]


@pytest.mark.parametrize('event, data, returned, expected', [
    (ExpMessage.EXPINIT, [{'exp_ref': REF}], {'ok': 1}, [1, 10, {'ok': 1}]),
    (ExpMessage.EXPINIT, [], None, [1, 10, None]),
    (ExpMessage.EXPSTART, [REF, {'x': 1}], 'go', [2, REF, 'go']),
    (ExpMessage.EXPSTART, [], None, [2, None, None]),
    (ExpMessage.EXPEND, [[]], [1, 2], [4, [1, 2]]),
    (ExpMessage.EXPINTERRUPT, [{'error': 'Bpod'}], None, [16, None]),
    (ExpMessage.EXPCLEANUP, [[]], 'clean', [8, 'clean']),
])
def test_each_lifecycle_event_answers_its_shape_with_what_the_handler_returned(event, data, returned, expected):
    seen = []
    got = answer(make(), event, *data, handler=lambda d: seen.append(d) or returned)
    assert got == expected and seen == [data]


def test_alyx_sends_the_handlers_token_when_asked_and_only_an_echo_when_given_one():
    experiment, seen = make(), []
    url, token = 'https://alyx.example.org', {'user': 'secret'}
    assert answer(experiment, ExpMessage.ALYX, None, {}, handler=lambda d: (url, token)) == [128, url, token]
    assert answer(experiment, ExpMessage.ALYX, None, {}) == [128, None, {}]
    assert answer(experiment, ExpMessage.ALYX, url, {}, handler=lambda d: (url, token)) == [128, url, token]
    assert answer(experiment, ExpMessage.ALYX, url, token, handler=seen.append) is None
    assert seen == [[url, token]]


# --- status ---
def test_the_status_follows_the_lifecycle_and_info_and_status_leave_it():
    experiment = make()
    assert experiment.status is ExpStatus.CONNECTED
    for event, data, status in [(ExpMessage.EXPINFO, [0, {}], ExpStatus.CONNECTED),
                                (ExpMessage.EXPINIT, [{'exp_ref': REF}], ExpStatus.INITIALIZED),
                                (ExpMessage.EXPSTATUS, [10, {}], ExpStatus.INITIALIZED),
                                (ExpMessage.EXPSTART, [REF, None], ExpStatus.RUNNING),
                                (ExpMessage.EXPINTERRUPT, [[]], ExpStatus.STOPPED),
                                (ExpMessage.EXPCLEANUP, [[]], ExpStatus.STOPPED),
                                (ExpMessage.EXPINIT, [{}], ExpStatus.INITIALIZED)]:
        experiment.answer(event, data, MAIN, None)
        assert experiment.status is status, event


def test_init_and_start_take_the_reference_the_main_sends():
    experiment = make()
    experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': REF}], MAIN, None)
    assert experiment.exp_ref == {'subject': 'mouse', 'date': DAY, 'sequence': 1}
    experiment.answer(ExpMessage.EXPSTART, ['2026-11-30_2_rat', None], MAIN, None)
    assert experiment.exp_ref == {'subject': 'rat', 'date': DAY, 'sequence': 2}
    experiment.answer(ExpMessage.EXPSTART, [None, None], MAIN, None)
    assert protocol.exp_ref_to_str(experiment.exp_ref) == '2026-11-30_2_rat'
    assert answer(experiment, ExpMessage.EXPINFO, 0, {})[2]['exp_ref'] == '2026-11-30_2_rat'


@pytest.mark.parametrize('event', [ExpMessage.EXPINIT, ExpMessage.EXPSTART, ExpMessage.EXPEND])
def test_a_failing_handler_or_an_unsendable_answer_changes_nothing(event):
    experiment = make()
    run_to(experiment, ExpStatus.INITIALIZED)
    before = (experiment.status, experiment.exp_ref, experiment.owner)

    def fails(data):
        raise RuntimeError('camera unplugged')
    with pytest.raises(RuntimeError, match='camera unplugged'):
        experiment.answer(event, ['2026-11-30_9_rat', {'exp_ref': '2026-11-30_9_rat'}], MAIN, fails)
    with pytest.raises(TypeError, match='JSON'):
        experiment.answer(event, ['2026-11-30_9_rat', {'exp_ref': '2026-11-30_9_rat'}], MAIN, lambda d: object())
    assert (experiment.status, experiment.exp_ref, experiment.owner) == before


# --- ownership ---
def test_another_hosts_lifecycle_event_is_refused_naming_experiment_and_owner():
    experiment = make()
    experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': REF}], MAIN, None)
    assert experiment.owner == (MAIN, REF)
    for event in OWNED_EVENTS:
        with pytest.raises(PermissionError) as refused:
            experiment.answer(event, [REF, {'exp_ref': '2026-11-30_5_rat'}], OTHER, None)
        assert str(refused.value) == (f'cameras runs experiment {REF} of {MAIN}; {event.name} from {OTHER} '
                                      'refused (that host ends it, or restart this rig)')
    assert experiment.status is ExpStatus.INITIALIZED and experiment.owner == (MAIN, REF)
    assert protocol.exp_ref_to_str(experiment.exp_ref) == REF


def test_anyone_may_ask_info_status_and_alyx_of_an_owned_experiment():
    experiment = make()
    run_to(experiment, ExpStatus.RUNNING)
    assert answer(experiment, ExpMessage.EXPINFO, 20, {}, host=OTHER)[:2] == [64, 20]
    assert answer(experiment, ExpMessage.EXPSTATUS, 20, {}, host=OTHER) == [32, 20]
    assert answer(experiment, ExpMessage.ALYX, None, {}, host=OTHER) == [128, None, {}]
    assert experiment.owner == (MAIN, REF)


@pytest.mark.parametrize('end', [ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT, ExpMessage.EXPCLEANUP])
def test_the_owners_end_frees_the_rig_for_another_host(end):
    experiment = make()
    run_to(experiment, ExpStatus.RUNNING)
    experiment.answer(end, [[]], MAIN, None)
    assert experiment.owner is None
    experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': '2026-11-30_2_mouse'}], OTHER, None)
    assert experiment.owner == (OTHER, '2026-11-30_2_mouse')


def test_the_owner_may_initialise_again_without_ending():
    experiment = make()
    run_to(experiment, ExpStatus.RUNNING)
    experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': '2026-11-30_2_mouse'}], MAIN, None)
    assert experiment.owner == (MAIN, '2026-11-30_2_mouse') and experiment.status is ExpStatus.INITIALIZED


def test_a_failed_init_takes_no_owner():
    experiment = make()
    with pytest.raises(ZeroDivisionError):
        experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': REF}], MAIN, lambda d: 1 / 0)
    assert experiment.owner is None and experiment.status is ExpStatus.CONNECTED
    experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': REF}], OTHER, None)
    assert experiment.owner == (OTHER, REF)


# --- session numbers ---
def test_a_main_sync_rig_offers_the_next_number_and_a_claim_writes_it_down(tmp_path):
    path = tmp_path / 'numbers.json'
    experiment = make(main_sync=True, numbers=SessionNumbers(path))
    offered = answer(experiment, ExpMessage.EXPINFO, 0, {'subject': 'mouse'})[2]
    assert offered['exp_ref'] == REF and offered['main_sync'] is True and offered['master'] is True
    assert answer(experiment, ExpMessage.EXPINFO, 0, {'subject': 'mouse'})[2]['exp_ref'] == REF  # asked again
    assert not path.exists()  # an offer writes nothing
    run_to(experiment, ExpStatus.STOPPED)
    assert json.loads(path.read_text()) == {DAY.isoformat(): {'mouse': 1}}
    assert answer(experiment, ExpMessage.EXPINFO, 30, {'subject': 'mouse'})[2]['exp_ref'] == '2026-11-30_2_mouse'
    restarted = make(main_sync=True, numbers=SessionNumbers(path))
    assert answer(restarted, ExpMessage.EXPINFO, 0, {'subject': 'mouse'})[2]['exp_ref'] == '2026-11-30_2_mouse'


def test_a_reference_is_offered_only_between_experiments_and_for_a_named_subject(tmp_path):
    experiment = make(main_sync=True, numbers=SessionNumbers(tmp_path / 'numbers.json'))
    assert answer(experiment, ExpMessage.EXPINFO, 0, {})[2]['exp_ref'] is None  # a ping names no subject
    run_to(experiment, ExpStatus.RUNNING)
    assert answer(experiment, ExpMessage.EXPINFO, 20, {'subject': 'rat'})[2]['exp_ref'] == REF


def test_the_offer_is_dated_by_the_clock_passed_in(tmp_path):
    tomorrow = (datetime.datetime(2026, 11, 30, 12) + datetime.timedelta(days=1)).timestamp()
    experiment = make(main_sync=True, numbers=SessionNumbers(tmp_path / 'numbers.json'), clock=lambda: tomorrow)
    assert answer(experiment, ExpMessage.EXPINFO, 0, {'subject': 'mouse'})[2]['exp_ref'] == '2026-12-01_1_mouse'


def test_a_claim_that_cannot_be_written_down_changes_nothing(tmp_path):
    path = tmp_path / 'numbers.json'
    experiment = make(main_sync=True, numbers=SessionNumbers(path))
    with pytest.raises(ValueError, match='not of the last'):
        experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': '2020-01-01_1_mouse'}], MAIN, None)
    assert experiment.status is ExpStatus.CONNECTED and experiment.exp_ref is None and experiment.owner is None
    assert not path.exists()


@pytest.mark.parametrize('options', [{'main_sync': False}, {'main_sync': True, 'exp_ref': '2026-11-24_2_mouse'}])
def test_a_rig_that_does_not_number_offers_and_claims_nothing(tmp_path, options):
    path = tmp_path / 'numbers.json'
    experiment = make(numbers=SessionNumbers(path), **options)
    assert experiment.numbers_sessions is False
    expected = options.get('exp_ref')
    assert answer(experiment, ExpMessage.EXPINFO, 0, {'subject': 'rat'})[2]['exp_ref'] == expected
    run_to(experiment, ExpStatus.STOPPED)
    assert not path.exists() and protocol.exp_ref_to_str(experiment.exp_ref) == REF
