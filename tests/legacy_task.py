"""Small legacy tasks built the way iblrig builds tasks, with NetworkSession mixed in."""
import datetime
from pathlib import Path

from iblnet_sync import NetworkSession


class LegacyTask:
    """Stands in for iblrig's BaseSession: sets the host attributes, then runs every init_mixin_*."""

    def __init__(self, subject='mouse', main_sync=False, session_number=None, start=None,
                 run_init_mixins=True, crash=None):
        self.hardware_settings = {'MAIN_SYNC': main_sync}
        self.session_info = {
            'SUBJECT_NAME': subject,
            'SESSION_START_TIME': (start or datetime.datetime.now()).isoformat(),
            'SESSION_NUMBER': session_number,
        }
        self.experiment_description = {'devices': {'cameras': {'left': {}}}}
        self.crash = crash
        self.trials = 0
        if run_init_mixins:
            for name in sorted(dir(self)):
                if name.startswith('init_mixin'):
                    getattr(self, name)()

    def run(self):
        self.trials += 1
        if self.crash:
            raise self.crash
        return self.trials


class Task(NetworkSession, LegacyTask):
    """The task a lab would write: one more base class, nothing else."""


class FolderSession:
    """Stands in for iblrig's BaseSession with its own path logic.

    As iblrig does: the host attributes, every init_mixin_*, then ``_init_paths``, which
    numbers the session folder ``data_root/subject/date/NNN`` with the next number free on
    disk and sets ``SESSION_NUMBER`` to it. It takes ``iblrig_settings``, as iblrig's does.
    """

    def __init__(self, subject='mouse', data_root='.', main_sync=False, iblrig_settings=None):
        self.iblrig_settings = dict(iblrig_settings or {})
        self.data_root = Path(data_root)
        self.hardware_settings = {'MAIN_SYNC': main_sync}
        self.session_info = {'SUBJECT_NAME': subject, 'SESSION_NUMBER': 0,
                             'SESSION_START_TIME': datetime.datetime.now().isoformat()}
        self.experiment_description = {}
        for name in sorted(dir(self)):
            if name.startswith('init_mixin'):
                getattr(self, name)()
        self.number_before_paths = self.session_info['SESSION_NUMBER']
        self.paths = self._init_paths()

    def _date_folder(self):
        return self.data_root / self.session_info['SUBJECT_NAME'] / self.session_info['SESSION_START_TIME'][:10]

    def _init_paths(self):
        numbers = [int(f.name) for f in self._date_folder().glob('[0-9][0-9][0-9]')]
        self.session_info['SESSION_NUMBER'] = max(numbers, default=0) + 1
        return {'SESSION_FOLDER': self._date_folder() / f'{self.session_info["SESSION_NUMBER"]:03d}'}

    def run(self):
        return self.paths['SESSION_FOLDER']


class FolderTask(NetworkSession, FolderSession):
    """The iblrig pattern: with a remote main sync, the session folder is numbered from its reference."""

    def _init_paths(self):
        if self.main_sync_rig is None:  # this rig decides, or no network: number as the host does
            return super()._init_paths()
        return {'SESSION_FOLDER': self._date_folder() / f'{self.exp_ref["sequence"]:03d}'}
