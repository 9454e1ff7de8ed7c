"""NetworkSession: the mix-in that gives a legacy behaviour task the whole multi-rig lifecycle.

Examples
--------
>>> class MyTask(NetworkSession, LegacyTask):
...     pass
>>> task = MyTask(remote_rigs=['cameras', 'neuropixel'], subject='mouse')
>>> task.init_mixin_network()   # EXPINFO, agree on the reference, EXPINIT
>>> task.run()                  # EXPSTART, the task, EXPEND (or EXPINTERRUPT on a crash)
"""
from __future__ import annotations

import datetime
import logging
import os
import signal
import threading
import traceback
import warnings
from typing import Any, Iterable, Mapping

from iblutil.io.net.base import PROTOCOL_VERSION, ExpMessage, ExpStatus

from . import protocol
from .config import resolve_remote_rigs
from .communicator import DEFAULT_TIMEOUT
from .errors import BroadcastError, BroadcastTimeout, RigError
from .services import Services
from .version import __version__

__all__ = ['NetworkSession', 'RemoteRigs']
log = logging.getLogger(__name__)

SIGTERM_CLOSE_TIMEOUT = 5.0
"""float: seconds a SIGTERM waits for the connections to close before the previous handler runs."""
_METHODS = {  # event -> (Services method, extra keywords)
    ExpMessage.EXPINIT: ('init', {}), ExpMessage.EXPSTART: ('start', {}), ExpMessage.EXPEND: ('stop', {}),
    ExpMessage.EXPINTERRUPT: ('stop', {'immediately': True}), ExpMessage.EXPCLEANUP: ('cleanup', {}),
    ExpMessage.EXPSTATUS: ('status', {}), ExpMessage.EXPINFO: ('info', {}), ExpMessage.ALYX: ('alyx', {}),
}


class RemoteRigs:
    """The task's remote rigs: their URIs and, once connected, the :class:`Services`.

    Attributes
    ----------
    uris : dict of str to str
        Rig name to URI.
    services : Services, None
        The connection (iblutil's ``Services`` calls); None when there are no rigs.
    """

    def __init__(self, uris: Mapping[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 **options: Any):
        self.uris = dict(uris or {})
        self.services = Services(self.uris, timeout=timeout, **options) if self.uris else None

    @property
    def is_connected(self) -> bool:
        """bool: True while there are rigs and their connections are open."""
        return self.services is not None and self.services.is_connected

    def __bool__(self) -> bool:
        return bool(self.uris)

    def __len__(self) -> int:
        return len(self.uris)

    def __repr__(self) -> str:
        return f'<RemoteRigs {self.uris} {"connected" if self.is_connected else "closed"}>'

    def close(self) -> None:
        """Close the connections; idempotent."""
        if self.services is not None:
            self.services.close()


class NetworkSession:
    """Cooperative mix-in: connect a legacy task to its remote rigs and drive their lifecycle.

    The host class provides (iblrig's names) ``hardware_settings`` (``MAIN_SYNC``: this rig
    decides the reference), ``session_info`` (``SUBJECT_NAME``, ``SESSION_START_TIME`` as ISO
    text, ``SESSION_NUMBER``) and ``experiment_description``. With no remote rigs every step
    is a no-op and no thread is started.

    Parameters
    ----------
    remote_rigs : dict, list of str, None
        Rig name to URI, or names looked up in the remote rigs file.
    remote_rigs_file : str, PathLike, optional
        The remote rigs file (default: ``$IBLNET_SYNC_REMOTE_RIGS``, then ``~/.iblnet_sync``).
    network_timeout : float
        Seconds each broadcast may take.
    network_options : dict, optional
        Passed to :class:`Services`: ``echo_timeout``, ``resend_interval``, ``resends``.
    **kwargs
        Passed on to the host class.
    """

    def __init__(self, *_, remote_rigs: Mapping[str, str] | Iterable[str] | None = None,
                 remote_rigs_file: str | os.PathLike | None = None, network_timeout: float = DEFAULT_TIMEOUT,
                 network_options: Mapping[str, Any] | None = None, **kwargs):
        self.exp_ref: dict = {}
        self.remote_rigs = RemoteRigs()
        self._one = None
        self._network_stage: ExpStatus | None = None
        self._previous_sigterm = None
        self._remote_rigs_file = remote_rigs_file
        self.connect(remote_rigs, timeout=network_timeout, **(network_options or {}))
        try:
            super().__init__(**kwargs)
        except BaseException:
            self.cleanup_mixin_network()
            raise

    # --- connection ---
    def connect(self, remote_rigs: Mapping[str, str] | Iterable[str] | None, timeout: float = DEFAULT_TIMEOUT,
                **options: Any) -> RemoteRigs:
        """Connect to `remote_rigs` (closing any earlier connection) and listen for Alyx tokens.

        Names are looked up in the remote rigs file given at construction (or the default one);
        `options` go to :class:`Services` (``echo_timeout``, ``resend_interval``, ``resends``).
        """
        uris = resolve_remote_rigs(remote_rigs, self._remote_rigs_file)
        self.cleanup_mixin_network()
        self.remote_rigs = RemoteRigs(uris, timeout=timeout, **options)
        self._network_stage = ExpStatus.CONNECTED
        if self.remote_rigs:
            self.remote_rigs.services.assign_callback(ExpMessage.ALYX, self._on_alyx, return_service=True)
            self._catch_sigterm()
            log.info('Connected to %s', ', '.join(f'{n} ({u})' for n, u in self.remote_rigs.uris.items()))
        return self.remote_rigs

    def communicate(self, message: ExpMessage | int | str, *args: Any, raise_on_exception: bool = True) -> Any:
        """Broadcast one message to every remote rig and return ``{rig: response data}``.

        Parameters
        ----------
        message : ExpMessage, int, str
            The event, or a ``Services`` method name ('init', 'start', 'stop', 'cleanup',
            'status', 'info', 'alyx').
        *args
            The method's arguments.
        raise_on_exception : bool
            On failure, clean up the network and re-raise; otherwise return the exception.
        """
        if not self.remote_rigs.is_connected:
            return {}
        if isinstance(message, str) and message.lower() in {m for m, _ in _METHODS.values()}:
            method, options = message.lower(), {}
        else:
            method, options = _METHODS[protocol.as_event(message)]
        try:
            return getattr(self.remote_rigs.services, method)(*args, **options)
        except Exception as ex:
            log.error('Network %s failed: %s', method, ex)
            if raise_on_exception:
                self.cleanup_mixin_network()
                raise
            return ex

    # --- the lifecycle ---
    def init_mixin_network(self) -> None:
        """EXPINFO to every rig, agree on the experiment reference, then EXPINIT (once)."""
        if not self.remote_rigs or self._network_stage is not ExpStatus.CONNECTED:
            return
        main_sync = bool(self._host('hardware_settings').get('MAIN_SYNC', False))
        own_ref = self._own_reference() if main_sync else None
        info = {
            'subject': self._subject(), 'main_sync': main_sync, 'master': main_sync,
            'exp_ref': protocol.exp_ref_to_str(own_ref),
            'experiment_description': dict(getattr(self, 'experiment_description', None) or {}),
            'rig_version': __version__, 'spec_version': PROTOCOL_VERSION,
            protocol.RESENDS_KEY: True,  # this side tells resends and repeats apart
        }
        answers = self._ask_info(info)
        try:
            self.exp_ref = own_ref if main_sync else self._reference_from(answers)
            if main_sync and (claims := _main_sync_claims(answers)):
                raise RuntimeError(f'This rig is the main sync, but {", ".join(claims)} also claim(s) to be')
        except Exception:
            self.cleanup_mixin_network()
            raise
        self.communicate('init', {'exp_ref': protocol.exp_ref_to_str(self.exp_ref)})
        self._network_stage = ExpStatus.INITIALIZED
        log.info('Experiment %s initialised on %s', protocol.exp_ref_to_str(self.exp_ref), list(answers))

    def _ask_info(self, info: dict) -> dict:
        """EXPINFO to every rig; the rigs that only failed to echo are asked once more.

        Nothing is resent before the rigs' EXPINFO answers say they take resends, so one lost
        datagram would fail this first exchange. The second request is spelled as a resend
        (see :func:`protocol.respell`), so that a late echo of the first is never taken for
        it, and a RigServer that did get the first repeats its answer instead of making a new
        one. EXPINFO changes nothing on an iblutil rig, and its answers were echoed at once.
        """
        answers = self.communicate('info', ExpStatus.CONNECTED, info, raise_on_exception=False)
        if isinstance(answers, BroadcastError) and all(e.stage == 'no echo' for e in answers.failures.values()):
            log.warning('No echo from %s: asking once more', ', '.join(answers.failures))
            services, retry = self.remote_rigs.services, protocol.respell(protocol.info_message('CONNECTED', info))
            failures, responses = dict(answers.failures), dict(answers.responses)
            for name in list(failures):
                try:
                    responses[name] = services[name].request(retry, services.timeout)
                    del failures[name]
                except RigError as ex:
                    failures[name] = ex
            answers = BroadcastTimeout('EXPINFO', failures, responses) if failures else {
                name: responses[name] for name in services if name in responses}
        if isinstance(answers, Exception):
            self.cleanup_mixin_network()
            raise answers
        return answers

    def start_mixin_network(self) -> None:
        """EXPSTART with the experiment reference to every rig (once, after init)."""
        if not self.remote_rigs:
            return
        if self._network_stage is ExpStatus.CONNECTED:
            self.init_mixin_network()
        if self._network_stage is ExpStatus.INITIALIZED:
            self.communicate('start', protocol.exp_ref_to_str(self.exp_ref))
            self._network_stage = ExpStatus.RUNNING

    def stop_mixin_network(self) -> None:
        """EXPEND to every rig, in reverse order (once, if started)."""
        if self.remote_rigs and self._network_stage is ExpStatus.RUNNING:
            self.communicate('stop')
            self._network_stage = ExpStatus.STOPPED

    def cleanup_mixin_network(self) -> None:
        """Close the connections and restore the SIGTERM handler; idempotent."""
        self.remote_rigs.close()
        self._network_stage = None
        self._restore_sigterm()

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """EXPSTART, the host's ``run``, EXPEND; on a crash EXPINTERRUPT, then re-raise.

        The connections are closed at the end either way.
        """
        self.start_mixin_network()
        try:
            host_run = getattr(super(), 'run', None)
            result = host_run(*args, **kwargs) if host_run else None
        except BaseException as ex:
            if self.remote_rigs.is_connected and self._network_stage is ExpStatus.RUNNING:
                self.communicate('stop', _interrupt_data(ex), True, raise_on_exception=False)
            self.cleanup_mixin_network()
            raise
        self.stop_mixin_network()
        self.cleanup_mixin_network()
        return result

    # --- ONE and Alyx tokens ---
    @property
    def one(self):
        """one.api.One: a local-mode, silent ONE instance, made on first use."""
        if self._one is None:
            self._one = _local_one()
        return self._one

    def install_alyx_token(self, base_url: str, token: Mapping[str, Any]) -> None:
        """Save ``{user: token}`` in ONE's parameters for `base_url` and log `one` in with it.

        No prompt and no network request: the token is cached as ONE caches its own.
        """
        import one.params
        user = next(iter(token))
        params = one.params.get(client=base_url, silent=True)
        tokens = {**(getattr(params, 'TOKEN', None) or {}), **token}
        params = params.set('TOKEN', tokens)
        if not getattr(params, 'ALYX_LOGIN', None):
            params = params.set('ALYX_LOGIN', user)
        one.params.save(params, base_url)
        self._one = _local_one(base_url)  # a new instance reads the parameters just saved
        if user in (getattr(self._one.alyx._par, 'TOKEN', None) or {}):
            self._one.alyx.authenticate(username=user)  # finds the cached token: no request, no prompt
        log.info('Alyx token for %s on %s installed', user, base_url)
        log.debug('Token: %s', token)

    def _on_alyx(self, data: list, addr: Any, rig) -> None:
        """A rig gave us its Alyx token, or asked for ours."""
        base_url, token = (list(data) + [None, None])[:2]
        if base_url and isinstance(token, dict) and token:
            self.install_alyx_token(base_url, token)
        elif self._one is not None and self._one.alyx.is_logged_in:
            rig.alyx(self._one.alyx)
        else:
            log.warning('%s asked for an Alyx token, but this rig is not logged in to Alyx', rig.name)

    # --- helpers ---
    def _host(self, name: str) -> Mapping:
        return getattr(self, name, None) or {}

    def _subject(self) -> str | None:
        return self._host('session_info').get('SUBJECT_NAME')

    def _start_date(self) -> datetime.date:
        start = self._host('session_info').get('SESSION_START_TIME')
        return datetime.datetime.fromisoformat(start).date() if start else datetime.date.today()

    def _own_reference(self) -> dict:
        number = self._host('session_info').get('SESSION_NUMBER')
        if number is None:
            log.warning('session_info has no SESSION_NUMBER; using sequence 1')
        return {'subject': self._subject(), 'date': self._start_date(), 'sequence': int(number or 1)}

    def _reference_from(self, answers: Mapping[str, Any]) -> dict:
        """The main sync rig's reference, checked against this task's subject and date."""
        from one.converters import ConversionMixin
        claims = _main_sync_claims(answers)
        if len(claims) != 1:
            raise RuntimeError(f'Exactly one remote rig must be the main sync; {len(claims)} claim it'
                               f'{": " + ", ".join(claims) if claims else ""} (of {", ".join(answers)})')
        rig = claims[0]
        ref = answers[rig][1].get('exp_ref')
        try:
            ref = ConversionMixin.ref2dict(ref)
            ref = {'subject': str(ref['subject']), 'date': ref['date'], 'sequence': int(ref['sequence'])}
        except (AttributeError, KeyError, TypeError, ValueError):
            raise RuntimeError(f'Main sync rig {rig!r} sent an invalid experiment reference {ref!r}') from None
        if self._subject() and ref['subject'] != self._subject():
            raise ValueError(f'Main sync rig {rig!r} has subject {ref["subject"]!r}, this task {self._subject()!r}')
        if ref['date'] != self._start_date():
            raise RuntimeError(f'Main sync rig {rig!r} has date {ref["date"]}, this task started {self._start_date()}')
        return ref

    def _catch_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous_sigterm is not None:
            return
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """Close the network, then do what the previous handler did.

        The closing runs on a thread of its own: this handler interrupts the main thread
        wherever it was, possibly holding a lock that closing needs.
        """
        previous = self._previous_sigterm
        log.warning('SIGTERM: closing the network connections')
        self._restore_sigterm()
        closer = threading.Thread(target=self.cleanup_mixin_network, name='iblnet_sync-sigterm')
        closer.start()
        closer.join(SIGTERM_CLOSE_TIMEOUT)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signum)


def _local_one(base_url: str | None = None):
    """A new silent local-mode ONE, never a cached instance (no cache tables on a rig: not warned).

    ``one.api.ONE`` returns its last instance for the same arguments, which would not see a
    token saved since; ``OneAlyx`` builds a fresh one from the saved parameters.
    """
    from one.api import OneAlyx
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='No cache tables found')
        return OneAlyx(base_url=base_url, mode='local', silent=True)


def _main_sync_claims(answers: Mapping[str, Any]) -> list[str]:
    """Names of the rigs whose EXPINFO answer says ``main_sync: true``."""
    return [name for name, answer in answers.items()
            if isinstance(answer, list) and len(answer) > 1 and isinstance(answer[1], dict)
            and answer[1].get('main_sync') is True]


def _interrupt_data(error: BaseException) -> dict:
    """The EXPINTERRUPT data iblrig sends when a task crashes."""
    frames = traceback.extract_tb(error.__traceback__)
    last = frames[-1] if frames else None
    return {
        'error': type(error).__name__, 'message': str(error),
        'traceback': ''.join(traceback.format_exception(type(error), error, error.__traceback__)),
        'file': last.filename if last else None, 'line_no': last.lineno if last else None,
    }
