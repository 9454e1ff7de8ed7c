"""A small legacy task built the way iblrig builds tasks, with NetworkSession mixed in."""
import datetime

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
