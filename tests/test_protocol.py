"""The wire format: PROTOCOL.md's test vectors byte for byte, decoding, references, fuzzing."""
import datetime
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iblutil.io.net.app import EchoProtocol
from iblutil.io.net.base import ExpMessage, ExpStatus, Service

from iblnet_sync import dialect, protocol

REF = '2026-11-24_3_mouse'
REF_DICT = {'subject': 'mouse', 'date': datetime.date(2026, 11, 24), 'sequence': 3}


class LoggedInAlyx:
    base_url = 'https://alyx.example.org'
    user = 'user'
    _token = '...'
    is_logged_in = True


VECTORS = [  # (our call, iblutil's call, the datagram PROTOCOL.md gives)
    (lambda: protocol.init_message({'exp_ref': REF}), lambda: Service.init(None, {'exp_ref': REF}),
     b'[1, {"exp_ref": "2026-11-24_3_mouse"}]'),
    (lambda: protocol.start_message(REF_DICT), lambda: Service.start(None, REF_DICT),
     b'[2, "2026-11-24_3_mouse", null]'),
    (lambda: protocol.start_message(REF, {'a': 1}), lambda: Service.start(None, REF, {'a': 1}),
     b'[2, "2026-11-24_3_mouse", {"a": 1}]'),
    (lambda: protocol.stop_message({'error': 'X'}, immediately=True),
     lambda: Service.stop(None, {'error': 'X'}, immediately=True), b'[16, {"error": "X"}]'),
    (lambda: protocol.info_message('CONNECTED', {'subject': 'mouse'}),
     lambda: Service.info(None, 'CONNECTED', {'subject': 'mouse'}), b'[64, 0, {"subject": "mouse"}]'),
    (lambda: protocol.alyx_message(), lambda: Service.alyx(None, None), b'[128, null, {}]'),
    (lambda: protocol.alyx_message(LoggedInAlyx()), lambda: Service.alyx(None, LoggedInAlyx()),
     b'[128, "https://alyx.example.org", {"user": "..."}]'),
]


@pytest.mark.parametrize('ours, theirs, expected', VECTORS)
def test_vectors_match_protocol_md_and_iblutil(ours, theirs, expected):
    assert ours() == expected
    assert EchoProtocol.encode(list(theirs())) == expected


MATLAB_SAFE = [  # (our call, iblutil's call, iblutil's bytes, ours): an object or array where iblutil has none
    (lambda: protocol.stop_message(), lambda: Service.stop(None), b'[4, null]', b'[4, []]'),
    (lambda: protocol.cleanup_message(), lambda: Service.cleanup(None), b'[8, null]', b'[8, []]'),
    (lambda: protocol.status_message('RUNNING'), lambda: Service.status(None, 'RUNNING'), b'[32, 20]', b'[32, 20, {}]'),
    (lambda: protocol.stop_message(immediately=True), lambda: Service.stop(None, immediately=True),
     b'[16, null]', b'[16, []]'),
]


@pytest.mark.parametrize('ours, theirs, iblutils, expected', MATLAB_SAFE)
def test_bytes_that_matlab_cannot_index_are_sent_with_an_array_or_object(ours, theirs, iblutils, expected):
    """MATLAB's jsondecode makes a numeric array of a list of numbers and nulls, which Timeline cannot index."""
    assert EchoProtocol.encode(list(theirs())) == iblutils
    assert ours() == expected
    value = json.loads(expected)
    assert not all(v is None or isinstance(v, (int, float)) for v in value)  # not all numbers and nulls
    assert protocol.decode(expected).event == protocol.decode(iblutils).event


@pytest.mark.parametrize('report, about', [
    (b'[0, "KeyError: k"]', None),
    (b'[0, "KeyError: k", 2]', 2),
    (b'[0,"parse failure","[4, null]"]', b'[4, null]'),
    (b'[0,"parse failure","[4,null]\\t"]', b'[4, null]'),  # any spelling names the same request
    (b'[0,"parse failure","not json"]', 'not json'),
])
def test_an_error_report_names_its_request_in_any_shape(report, about):
    assert protocol.reported_request(protocol.decode(report)) == about


def test_iblrigs_interrupt_details_in_a_list_are_the_details():
    assert protocol.details(protocol.decode(b'[16, [{"error": "X"}]]').data) == {'error': 'X'}
    assert protocol.details(protocol.decode(b'[16, {"error": "X"}]').data) == {'error': 'X'}
    assert protocol.details(protocol.decode(b'[4, []]').data) == []


def test_decode_message_and_error_report():
    assert protocol.decode(b'[64, 0, {"a": 1}]') == (ExpMessage.EXPINFO, [0, {'a': 1}])
    assert protocol.decode(b'[0, "ValueError: bad", 2]') == (ExpMessage(0), ['ValueError: bad', 2])
    assert protocol.decode(protocol.error_report(ValueError('bad'), ExpMessage.EXPSTART)).data == ['ValueError: bad', 2]
    assert protocol.decode(b'[32,20]') == protocol.decode(b'[32, 20]')


@pytest.mark.parametrize('datagram', [
    b'', b'not json', b'\xff\xfe', b'{"a": 1}', b'[2]', b'"text"', b'[3, null]', b'[256, null]',
    b'[-1, null]', b'["EXPSTART", null]', b'[true, null]', b'[2.0, null]', b'[' * 100000,
])
def test_decode_rejects_non_messages(datagram):
    with pytest.raises(protocol.DecodeError):
        protocol.decode(datagram)


def test_tagged_datagrams_round_trip_and_plain_ones_parse_untagged():
    for datagram in (b'[32, 20]', b'[2, "x", {"a": [1, 2]}]', b'[0, "KeyError: k", 2]'):
        tagged = dialect.tag(datagram, 'm1a2b3.7', 'r9.1')
        assert dialect.parse(tagged) == (protocol.decode(datagram), 'm1a2b3.7', 'r9.1')
        assert dialect.parse(datagram) == (protocol.decode(datagram), None, None)
        assert dialect.parse(datagram + dialect.PEER_SUFFIX).message == protocol.decode(datagram)
    assert protocol.canonical(protocol.decode(b'[2,"x" ,null]\t')) == b'[2, "x", null]'
    assert dialect.digest(b'[32, 0]') == dialect.digest(b'[32, 0]\t') != dialect.digest(b'[32, 20]')
    for junk in (b'{"id": 3, "msg": [32, 0]}', b'{"id": "m1.1", "msg": 5}', b'{"id": "m1.1"}'):
        with pytest.raises(protocol.DecodeError):
            dialect.parse(junk)


def test_experiment_reference_round_trip():
    assert protocol.exp_ref_to_str(REF_DICT) == REF
    assert protocol.exp_ref_to_str({'subject': 'mouse', 'date': '2026-11-24', 'sequence': '003'}) == REF
    assert protocol.exp_ref_to_dict(REF) == REF_DICT
    assert protocol.exp_ref_to_dict('2026-11-24_1_sub_ject')['subject'] == 'sub_ject'
    assert protocol.exp_ref_to_str(None) is None
    with pytest.raises(ValueError, match='YYYY-MM-DD_N_SUBJECT'):
        protocol.exp_ref_to_dict('mouse')
    with pytest.raises(ValueError):
        protocol.exp_ref_to_dict('2026-13-40_1_mouse')


def test_events_and_statuses_by_enum_int_or_name():
    assert protocol.as_event('expstart') is ExpMessage.EXPSTART
    assert protocol.as_event(64) is ExpMessage.EXPINFO
    assert protocol.as_event(ExpMessage.EXPEND | ExpMessage.EXPINTERRUPT, allow_compound=True) == 20
    assert protocol.as_status('running') is ExpStatus.RUNNING
    for bad in ('nope', 3, 0, ExpMessage.EXPEND | ExpMessage.EXPINTERRUPT):
        with pytest.raises(ValueError):
            protocol.as_event(bad)
    with pytest.raises(TypeError):
        protocol.as_event(2.0)
    with pytest.raises(ValueError):
        protocol.as_status(5)


def test_unserialisable_or_oversized_data_raises_before_sending():
    with pytest.raises(TypeError, match='JSON'):
        protocol.init_message({'when': datetime.datetime.now()})
    with pytest.raises(protocol.TooLarge, match='65,507'):
        protocol.init_message('x' * 65501)  # 65,508 bytes: no UDP datagram over IPv4 carries it
    assert len(protocol.init_message('x' * 65500)) == 65507


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                 st.lists(json_values, max_size=4).map(lambda v: json.dumps(v).encode())))
def test_decode_fuzz_gives_a_message_or_a_decode_error(datagram):
    try:
        message = protocol.decode(datagram)
    except protocol.DecodeError:
        return
    assert isinstance(message.event, ExpMessage) and isinstance(message.data, list)
    assert message.event == 0 or message.event in list(ExpMessage)


@pytest.mark.parametrize('uri, message', [
    ('udp://127.0.0.1:0', "port 0 is not a rig's port"),
    ('udp://[::1]:11001', 'IPv6 addresses are not supported'),
    ('::1', 'IPv6 addresses are not supported'),
    ('127.0.0.1:70000', 'the port must be a number from 1 to 65535'),
    ('tcp://127.0.0.1:11001', 'only udp:// is supported'),
])
def test_rig_addresses_that_cannot_work_say_why(uri, message):
    with pytest.raises(ValueError, match=message):
        protocol.rig_address(uri)
    assert protocol.rig_address('udp://127.0.0.1:0', allow_any_port=True) == ('127.0.0.1', 0)
