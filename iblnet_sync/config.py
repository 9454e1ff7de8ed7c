"""Where the remote rigs are: the YAML file that maps a rig name to its URI.

The file (``remote_rigs.yaml``, or iblrig's ``remote_devices.yaml``) looks like::

    cameras: udp://10.0.0.7:11001
    neuropixel: 10.0.0.8

It is found from, in order: an explicit path, the environment variable
``IBLNET_SYNC_REMOTE_RIGS``, then ``~/.iblnet_sync/``. A path may name the file or a folder
holding it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ['ENV_VARIABLE', 'FILE_NAMES', 'ConfigError', 'default_folder', 'find_remote_rigs_file',
           'load_remote_rigs', 'resolve_remote_rigs']

ENV_VARIABLE = 'IBLNET_SYNC_REMOTE_RIGS'
FILE_NAMES = ('remote_rigs.yaml', 'remote_devices.yaml')


class ConfigError(ValueError):
    """The remote rigs file is missing, unreadable or malformed."""


def default_folder() -> Path:
    """Path: the per-user folder searched last, ``~/.iblnet_sync``."""
    return Path.home() / '.iblnet_sync'


def find_remote_rigs_file(path: str | os.PathLike | None = None) -> Path:
    """Return the remote rigs file to use.

    Parameters
    ----------
    path : str, PathLike, optional
        A file or a folder; when None, the environment variable, then the per-user folder.

    Raises
    ------
    ConfigError
        No such file; the message lists where it looked.
    """
    candidates = [path, os.environ.get(ENV_VARIABLE), default_folder()]
    where = Path(next(c for c in candidates if c))
    tried = [where] if where.is_file() or where.suffix in ('.yaml', '.yml') else [where / n for n in FILE_NAMES]
    for file in tried:
        if file.is_file():
            return file
    raise ConfigError(f'No remote rigs file: looked for {", ".join(map(str, tried))}. Create one '
                      f'mapping rig names to URIs, or set {ENV_VARIABLE} to its path.')


def load_remote_rigs(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Read the remote rigs file: rig name to URI.

    Raises
    ------
    ConfigError
        Missing, not YAML, or not a mapping of names to URI strings.
    """
    import yaml
    file = find_remote_rigs_file(path)
    try:
        content = yaml.safe_load(file.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as ex:
        raise ConfigError(f'Cannot read remote rigs file {file}: {ex}') from None
    if not isinstance(content, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in content.items()):
        raise ConfigError(f'Remote rigs file {file} must map rig names to URIs, e.g. "cameras: udp://10.0.0.7:11001"')
    return content


def resolve_remote_rigs(remote_rigs: Mapping[str, str] | Iterable[str] | None,
                        path: str | os.PathLike | None = None) -> dict[str, str]:
    """Turn what a task was given into rig name to URI.

    Parameters
    ----------
    remote_rigs : dict, list of str, None
        A mapping is used as it is; names are looked up in the remote rigs file; None or
        empty means no rigs.
    path : str, PathLike, optional
        The remote rigs file (see :func:`find_remote_rigs_file`).

    Raises
    ------
    ValueError
        A name is not in the file (the message names it and the file).
    ConfigError
        The file is missing or malformed.
    """
    if not remote_rigs:
        return {}
    if isinstance(remote_rigs, Mapping):
        return dict(remote_rigs)
    if isinstance(remote_rigs, str):
        remote_rigs = [remote_rigs]
    names = list(remote_rigs)
    known = load_remote_rigs(path)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f'Rig(s) {missing} not in {find_remote_rigs_file(path)}; it names {sorted(known)}')
    return {name: known[name] for name in names}
