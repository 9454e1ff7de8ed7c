"""What is declared once is used as declared: the options, the verbs and the failure stages."""
import dataclasses
import inspect
import json

import pytest
from iblutil.io.net.base import ExpMessage

from iblnet_sync import Communicator, RigError, RigServer, RigTimeout, Services, core
from iblnet_sync.errors import Stage
from iblnet_sync.options import IGNORED_OPTIONS, Options
from iblnet_sync.ping import ADVICE
from iblnet_sync.verbs import METHODS, VERBS, verb_of


def keyword_only(function) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY}


def test_options_default_to_the_cores_constants_and_are_frozen():
    options = Options()
    assert (options.echo_timeout, options.resend_interval, options.resends, options.pause) == (
        core.ECHO_TIMEOUT, core.RESEND_INTERVAL, core.RESENDS, core.PAUSE)
    assert Options.names() == ('echo_timeout', 'resend_interval', 'resends', 'pause')
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.resends = 3  # type: ignore[misc]


@pytest.mark.parametrize('name, value, error', [
    ('echo_timeout', 0, ValueError), ('echo_timeout', 'soon', TypeError), ('echo_timeout', float('nan'), ValueError),
    ('resend_interval', -1, ValueError), ('resend_interval', True, TypeError), ('resends', -1, ValueError),
    ('resends', 1.5, ValueError), ('pause', 1, ValueError), ('pause', None, ValueError),
])
def test_options_refuse_a_value_naming_the_option(name, value, error):
    with pytest.raises(error, match=f'^{name} must be'):
        Options(**{name: value})


def test_every_adapter_takes_the_options_by_keyword_with_its_defaults():
    for function in (Communicator.__init__, Services.__init__):
        keywords = keyword_only(function)
        for name in (*Options.names(), *IGNORED_OPTIONS):
            assert name in keywords, (function, name)
        for name in Options.names():
            assert keywords[name].default == getattr(Options(), name), (function, name)
    rig = keyword_only(RigServer.__init__)
    assert {'echo_timeout', 'resend_interval', 'resends'} <= set(rig) and rig['resends'].default == core.ANSWER_RESENDS


def test_every_event_has_one_verb_and_both_classes_a_real_method_for_it():
    assert set(verb.event for verb in VERBS) == set(ExpMessage) and len(VERBS) == len(ExpMessage)
    assert METHODS == ('info', 'init', 'start', 'stop', 'cleanup', 'status', 'alyx')
    for verb in VERBS:
        for cls in (Communicator, Services):
            method = vars(cls)[verb.method]
            assert inspect.isfunction(method) and method.__doc__, (cls, verb)
            assert f'protocol.{verb.build.__name__}(' in inspect.getsource(method), (cls, verb)
            assert set(verb.keywords) <= set(inspect.signature(method).parameters), (cls, verb)


def test_a_verb_is_found_by_event_code_name_or_method():
    assert verb_of('stop').event is ExpMessage.EXPEND and verb_of('STOP').keywords == {}
    assert verb_of(ExpMessage.EXPINTERRUPT).keywords == {'immediately': True}
    assert verb_of(64).method == 'info' and verb_of('EXPCLEANUP').method == 'cleanup'
    for message in ('nothing', ExpMessage.EXPINIT | ExpMessage.EXPSTART):
        with pytest.raises(ValueError):
            verb_of(message)


def test_a_stage_is_its_text():
    assert Stage.NO_ECHO == 'no echo' and str(Stage.NO_ECHO) == f'{Stage.NO_ECHO}' == 'no echo'
    assert {'no echo': 1}[Stage.NO_ECHO] == 1 and {Stage.BUSY: 2}['busy'] == 2
    assert json.dumps({'stage': Stage.REFUSED}) == '{"stage": "refused"}'
    error = RigError('cameras', 'udp://127.0.0.1:9', 'EXPSTART', 'late', stage='no echo')
    assert error.stage is Stage.NO_ECHO and str(error) == 'cameras (udp://127.0.0.1:9) EXPSTART: no echo: late'
    assert RigTimeout('cameras', 'udp://127.0.0.1:9', 'EXPSTART', 'late').stage is Stage.NO_RESPONSE
    assert RigError('cameras', 'u', 'EXPSTART', 'odd', stage='something new').stage == 'something new'
    assert all(isinstance(stage, Stage) for stage in ADVICE)
