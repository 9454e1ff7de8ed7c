"""The remote rigs file: where it is found, nested names, and errors that name what is wrong."""
import pytest

import iblnet_sync
from iblnet_sync.config import ConfigError, find_remote_rigs_file, flatten_names, load_remote_rigs, resolve_remote_rigs

RIGS = 'cameras: udp://127.0.0.1:9\nneuropixel: 127.0.0.1\nwidefield: udp://127.0.0.1:11002\n'


@pytest.fixture
def folder(tmp_path):
    """A folder holding iblrig's remote_devices.yaml."""
    (tmp_path / 'remote').mkdir()
    (tmp_path / 'remote' / 'remote_devices.yaml').write_text(RIGS)
    return tmp_path / 'remote'


def test_config_error_is_exported_and_a_value_error():
    assert iblnet_sync.ConfigError is ConfigError and issubclass(ConfigError, ValueError)


def test_nested_names_are_flattened_in_order_once_each(folder):
    assert flatten_names(['cameras', ['widefield', None, ('cameras', ['']), 'neuropixel']]) == [
        'cameras', 'widefield', 'neuropixel']
    assert list(resolve_remote_rigs([['widefield'], ['cameras']], folder)) == ['widefield', 'cameras']
    assert resolve_remote_rigs('cameras', folder) == {'cameras': 'udp://127.0.0.1:9'}
    assert resolve_remote_rigs([[None], []], folder) == {}


@pytest.mark.parametrize('names', [['cameras', 3], [{'cameras': 'udp://127.0.0.1:9'}], [b'cameras']])
def test_a_name_that_is_not_text_is_a_type_error(names, folder):
    with pytest.raises(TypeError, match='Rig names must be text'):
        resolve_remote_rigs(names, folder)


def test_remote_rigs_of_another_kind_is_a_type_error(folder):
    with pytest.raises(TypeError, match='remote_rigs must map rig names to URIs, list rig names, or be None'):
        resolve_remote_rigs(11001, folder)


def test_unknown_names_are_all_named_with_the_file(folder):
    with pytest.raises(ValueError, match=r"\['ephys', 'sound'\] not in .*remote_devices.yaml; it names "
                                         r"\['cameras', 'neuropixel', 'widefield'\]"):
        resolve_remote_rigs(['cameras', ['ephys'], 'sound'], folder)


def test_iblrig_settings_find_remote_devices_yaml_in_the_remote_data_folder(folder, tmp_path, monkeypatch):
    other = tmp_path / 'env'
    other.mkdir()
    (other / 'remote_rigs.yaml').write_text('cameras: udp://127.0.0.1:1234\n')
    monkeypatch.setenv('IBLNET_SYNC_REMOTE_RIGS', str(other))
    settings = {'iblrig_remote_data_path': folder}
    assert find_remote_rigs_file(iblrig_settings=settings) == folder / 'remote_devices.yaml'  # before the variable
    assert resolve_remote_rigs(['cameras'], iblrig_settings=settings) == {'cameras': 'udp://127.0.0.1:9'}
    assert find_remote_rigs_file(other, iblrig_settings=settings) == other / 'remote_rigs.yaml'  # a path first
    unset = {'iblrig_remote_data_path': None, 'iblrig_local_data_path': str(tmp_path)}  # iblrig: no remote folder
    assert find_remote_rigs_file(iblrig_settings=unset) == other / 'remote_rigs.yaml'


def test_iblrig_settings_without_the_file_say_where_they_looked(tmp_path):
    with pytest.raises(ConfigError, match=r'No remote rigs file: .*empty.remote_devices\.yaml'):
        find_remote_rigs_file(iblrig_settings={'iblrig_remote_data_path': str(tmp_path / 'empty')})


def test_iblrig_settings_that_are_not_a_mapping_are_a_type_error():
    with pytest.raises(TypeError, match='iblrig_settings must be a mapping'):
        find_remote_rigs_file(iblrig_settings=['iblrig_remote_data_path', '/mnt/remote'])


@pytest.mark.parametrize('entry, message', [
    ('udp://127.0.0.1:70000', "entry 'ephys': 'udp://127.0.0.1:70000' is not a rig URI"),
    ('tcp://127.0.0.1:11001', "entry 'ephys': 'tcp://127.0.0.1:11001' is not a rig URI .*udp://"),
    ('11001', "entry 'ephys' is 11001, not a URI"),
    ('{host: 127.0.0.1}', "entry 'ephys' is {'host': '127.0.0.1'}, not a URI"),
    ('[127.0.0.1, 11001]', r"entry 'ephys' is \['127.0.0.1', 11001\], not a URI"),
])
def test_an_entry_that_is_not_a_uri_is_named(entry, message, tmp_path):
    path = tmp_path / 'remote_rigs.yaml'
    path.write_text(f'cameras: udp://127.0.0.1:9\nephys: {entry}\n')
    with pytest.raises(ConfigError, match=message):
        load_remote_rigs(path)
    with pytest.raises(ConfigError, match=message):
        resolve_remote_rigs(['ephys'], path)
    assert resolve_remote_rigs(['cameras'], path) == {'cameras': 'udp://127.0.0.1:9'}  # only the rigs in use


@pytest.mark.parametrize('content, message', [
    ('- cameras\n- neuropixel\n', 'must map rig names to URIs.*it holds a list'),
    ('just text\n', 'must map rig names to URIs.*it holds a str'),
    ('1: udp://127.0.0.1:9\n', r'rig names must be text, not \[1\]'),
])
def test_a_file_that_is_not_a_mapping_of_names_says_so(content, message, tmp_path):
    path = tmp_path / 'remote_rigs.yaml'
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_remote_rigs(path)


def test_a_good_file_loads_every_entry(folder):
    assert load_remote_rigs(folder) == {'cameras': 'udp://127.0.0.1:9', 'neuropixel': '127.0.0.1',
                                        'widefield': 'udp://127.0.0.1:11002'}
