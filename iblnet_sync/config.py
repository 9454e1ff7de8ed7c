"""Where the remote rigs are: the YAML file that maps a rig name to its URI.

The file (``remote_rigs.yaml``, or iblrig's ``remote_devices.yaml``) looks like::

    cameras: udp://10.0.0.7:11001
    neuropixel: 10.0.0.8

It is found from, in order: an explicit path, iblrig's settings (the folder
``iblrig_settings['iblrig_remote_data_path']``), the environment variable
``IBLNET_SYNC_REMOTE_RIGS``, then ``~/.iblnet_sync/``. The first of these that is given is
the one used. A path may name the file or a folder holding it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import protocol

__all__ = ['ENV_VARIABLE', 'FILE_NAMES', 'IBLRIG_REMOTE_PATH_KEY', 'ConfigError', 'default_folder',
           'find_remote_rigs_file', 'flatten_names', 'load_remote_rigs', 'resolve_remote_rigs']

ENV_VARIABLE = 'IBLNET_SYNC_REMOTE_RIGS'
FILE_NAMES = ('remote_rigs.yaml', 'remote_devices.yaml')
IBLRIG_REMOTE_PATH_KEY = 'iblrig_remote_data_path'
"""str: the key of iblrig's settings naming the remote data folder, where iblrig keeps ``remote_devices.yaml``."""


class ConfigError(ValueError):
    """The remote rigs file is missing, unreadable or malformed."""


def default_folder() -> Path:
    """Path: the per-user folder searched last, ``~/.iblnet_sync``."""
    return Path.home() / '.iblnet_sync'


def _iblrig_folder(iblrig_settings: Mapping[str, Any] | None) -> str | os.PathLike | None:
    """The remote data folder named in iblrig's settings, or None when there is none."""
    if iblrig_settings is None:
        return None
    if not isinstance(iblrig_settings, Mapping):
        raise TypeError(f'iblrig_settings must be a mapping such as {{{IBLRIG_REMOTE_PATH_KEY!r}: '
                        f'"/mnt/remote"}}, not {type(iblrig_settings).__name__}')
    return iblrig_settings.get(IBLRIG_REMOTE_PATH_KEY) or None


def find_remote_rigs_file(path: str | os.PathLike | None = None,
                          iblrig_settings: Mapping[str, Any] | None = None) -> Path:
    """Return the remote rigs file to use.

    Parameters
    ----------
    path : str, PathLike, optional
        A file or a folder. When None: iblrig's remote data folder, then the environment
        variable, then the per-user folder.
    iblrig_settings : mapping, optional
        iblrig's settings; its ``iblrig_remote_data_path`` (when set) is the folder to look in.

    Raises
    ------
    ConfigError
        No such file; the message lists where it looked.
    TypeError
        `iblrig_settings` is not a mapping.
    """
    candidates = [path, _iblrig_folder(iblrig_settings), os.environ.get(ENV_VARIABLE), default_folder()]
    where = Path(next(c for c in candidates if c))
    tried = [where] if where.is_file() or where.suffix in ('.yaml', '.yml') else [where / n for n in FILE_NAMES]
    for file in tried:
        if file.is_file():
            return file
    raise ConfigError(f'No remote rigs file: looked for {", ".join(map(str, tried))}. Create one '
                      f'mapping rig names to URIs, or set {ENV_VARIABLE} to its path.')


def _read(file: Path) -> dict[str, Any]:
    """The file's mapping, its keys checked to be names (the values are checked by :func:`_check_uris`)."""
    import yaml
    try:
        content = yaml.safe_load(file.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as ex:
        raise ConfigError(f'Cannot read remote rigs file {file}: {ex}') from None
    if not isinstance(content, dict):
        raise ConfigError(f'Remote rigs file {file} must map rig names to URIs, e.g. "cameras: udp://10.0.0.7:11001"; '
                          f'it holds a {type(content).__name__}')
    bad_names = [name for name in content if not isinstance(name, str) or not name]
    if bad_names:
        raise ConfigError(f'Remote rigs file {file}: rig names must be text, not {bad_names}')
    return content


def _check_uris(rigs: Mapping[str, Any], file: Path) -> dict[str, str]:
    """`rigs` unchanged once every value is a rig URI; else a ConfigError naming the first bad entry."""
    for name, uri in rigs.items():
        if not isinstance(uri, str):
            raise ConfigError(f'Remote rigs file {file}: entry {name!r} is {uri!r}, not a URI such as '
                              f'"udp://10.0.0.7:11001" or "10.0.0.7"')
        try:
            protocol.rig_address(uri)
        except (ValueError, TypeError) as ex:
            raise ConfigError(f'Remote rigs file {file}: entry {name!r}: {uri!r} is not a rig URI ({ex})') from None
    return dict(rigs)


def load_remote_rigs(path: str | os.PathLike | None = None,
                     iblrig_settings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Read the remote rigs file: rig name to URI, every entry checked.

    Parameters
    ----------
    path, iblrig_settings
        Where the file is (see :func:`find_remote_rigs_file`).

    Raises
    ------
    ConfigError
        Missing, not YAML, not a mapping, or an entry that is not a rig URI (the message
        names the entry and the file).
    """
    file = find_remote_rigs_file(path, iblrig_settings)
    return _check_uris(_read(file), file)


def flatten_names(names: Iterable[Any]) -> list[str]:
    """The rig names in a list that may nest lists or tuples, in order, once each; None and '' are skipped.

    Raises
    ------
    TypeError
        An element is neither text, None, nor a nested list.
    """
    flat: dict[str, None] = {}
    for name in names:
        if isinstance(name, str):
            if name:
                flat[name] = None
        elif isinstance(name, (list, tuple, set, frozenset)):
            flat.update(dict.fromkeys(flatten_names(name)))
        elif name is not None:
            raise TypeError(f'Rig names must be text, not {name!r}')
    return list(flat)


def resolve_remote_rigs(remote_rigs: Mapping[str, str] | Iterable[Any] | None,
                        path: str | os.PathLike | None = None,
                        iblrig_settings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Turn what a task was given into rig name to URI.

    Parameters
    ----------
    remote_rigs : dict, list of str, None
        A mapping is used as it is; names (a list that may nest lists, as iblrig accepts)
        are looked up in the remote rigs file; None or empty means no rigs.
    path : str, PathLike, optional
        The remote rigs file or its folder (see :func:`find_remote_rigs_file`).
    iblrig_settings : mapping, optional
        iblrig's settings: the file is looked for in its ``iblrig_remote_data_path``.

    Raises
    ------
    ValueError
        A name is not in the file (the message names it and the file).
    ConfigError
        The file is missing or malformed, or the entry of a named rig is not a URI.
    TypeError
        `remote_rigs` is neither a mapping nor names; a name is not text; `iblrig_settings`
        is not a mapping.
    """
    if not remote_rigs:
        return {}
    if isinstance(remote_rigs, Mapping):
        return dict(remote_rigs)
    if not isinstance(remote_rigs, Iterable):
        raise TypeError(f'remote_rigs must map rig names to URIs, list rig names, or be None; '
                        f'not {type(remote_rigs).__name__}')
    names = flatten_names([remote_rigs] if isinstance(remote_rigs, str) else remote_rigs)
    if not names:
        return {}
    file = find_remote_rigs_file(path, iblrig_settings)
    known = _read(file)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f'Rig(s) {missing} not in {file}; it names {sorted(known)}')
    # only the entries in use are checked: a rig this task does not use may have a name that does not resolve here
    return _check_uris({name: known[name] for name in names}, file)
