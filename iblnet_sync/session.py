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
import difflib
import inspect
import logging
import os
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any, NoReturn

from iblutil.io.net.base import PROTOCOL_VERSION, ExpMessage, ExpStatus

from . import protocol
from .clock import clock_offset
from .communicator import DEFAULT_TIMEOUT
from .config import resolve_remote_rigs
from .logtext import mask_alyx
from .options import IGNORED_OPTIONS, Options, check_seconds
from .services import Services
from .verbs import verb_of
from .version import __version__

__all__ = ['NetworkSession', 'RemoteRigs']
log = logging.getLogger(__name__)

SIGTERM_CLOSE_TIMEOUT = 5.0
"""float: seconds a SIGTERM waits for the connections to close before the previous handler runs."""
_OWN_KEYWORDS = ('remote_rigs', 'remote_rigs_file', 'iblrig_settings', 'network_timeout', 'network_options')


class RemoteRigs(Mapping):
    """The task's remote rigs: a read-only mapping of rig name to URI and, once connected, the :class:`Services`.

    Read-only as iblutil's ``Services`` is: item assignment, ``del``, ``pop``, ``popitem``,
    ``clear``, ``update`` and ``setdefault`` raise ``TypeError``. To change the rigs, call
    :meth:`NetworkSession.connect` again.

    Attributes
    ----------
    uris : mapping of str to str
        Rig name to URI (read-only).
    services : Services, None
        The connection (iblutil's ``Services`` calls); None when there are no rigs.
    """

    def __init__(self, uris: Mapping[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 **options: Any):
        self.uris: Mapping[str, str] = MappingProxyType(dict(uris or {}))
        self.services = Services(self.uris, timeout=timeout, **options) if self.uris else None

    @property
    def is_connected(self) -> bool:
        """bool: True while there are rigs and their connections are open."""
        return self.services is not None and self.services.is_connected

    def __getitem__(self, name: str) -> str:
        return self.uris[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.uris)

    def __len__(self) -> int:
        return len(self.uris)

    def __bool__(self) -> bool:
        return bool(self.uris)

    def __repr__(self) -> str:
        return f'<RemoteRigs {dict(self.uris)} {"connected" if self.is_connected else "closed"}>'

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError('RemoteRigs is read-only; connect() again to change the rigs')

    __setitem__ = __delitem__ = pop = popitem = clear = update = setdefault = _read_only

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

    **The session number comes from the main sync.** :meth:`init_mixin_network` (run by the
    host's ``init_mixin_*`` loop, as iblrig's ``BaseSession`` does before it computes its
    paths, or called by hand) agrees on the experiment reference ``exp_ref``. When a remote
    rig is the main sync, it then sets ``session_info['SESSION_NUMBER']`` to
    ``exp_ref['sequence']`` and names that rig in ``main_sync_rig``; when this rig is the main
    sync, its own number stands. Either way it then calls :meth:`on_exp_ref` with the
    reference, before any rig is initialised. So:

    - a host whose path logic reads ``SESSION_NUMBER`` needs nothing more;
    - a host that numbers its session folder itself (iblrig's ``_init_paths`` takes the next
      free number on disk) is overridden in the task, as iblrig's own ``NetworkSession`` does:

      >>> class Task(NetworkSession, BehaviourTask):
      ...     def _init_paths(self, *args, **kwargs):
      ...         if self.main_sync_rig is None:  # this rig decides, or no network: as the host does
      ...             return super()._init_paths(*args, **kwargs)
      ...         info = self.session_info      # SESSION_NUMBER is already exp_ref['sequence']
      ...         return Path(DATA, info['SUBJECT_NAME'], info['SESSION_START_TIME'][:10],
      ...                     f'{self.exp_ref["sequence"]:03d}')
    - a host that computed its paths before the network step recomputes them in
      :meth:`on_exp_ref`.

    When this rig is the main sync, ``SESSION_NUMBER`` must be set before the network step:
    it is the sequence of the reference sent to the rigs (1 when unset, with a warning).

    Parameters
    ----------
    *args
        Passed on to the host class.
    remote_rigs : dict, list of str, None
        Rig name to URI, or names (a list that may nest lists) looked up in the remote rigs file.
    remote_rigs_file : str, PathLike, optional
        The remote rigs file or its folder (default: iblrig's remote data folder when
        `iblrig_settings` names one, then ``$IBLNET_SYNC_REMOTE_RIGS``, then ``~/.iblnet_sync``).
    iblrig_settings : mapping, optional
        iblrig's settings: ``remote_devices.yaml`` is looked for in its ``iblrig_remote_data_path``.
        Passed on to the host class too when its ``__init__`` takes it (iblrig's does).
    network_timeout : float, None
        Seconds each broadcast may take (> 0; None waits for ever).
    network_options : dict, optional
        Passed to :class:`Services`: ``echo_timeout``, ``resend_interval``, ``resends``,
        ``assume_resends``.
    **kwargs
        Passed on to the host class.

    Raises
    ------
    TypeError
        A keyword that neither NetworkSession nor the host class takes (the message names it
        and the nearest keyword); `network_options` not a mapping, or an option not known.
    ValueError
        `network_timeout` <= 0; a rig name not in the remote rigs file.
    ConfigError
        The remote rigs file is missing or malformed.

    All of these are raised before any connection opens.

    Attributes
    ----------
    exp_ref : dict
        The agreed experiment reference (``subject``, ``date``, ``sequence``); empty before.
    main_sync_rig : str, None
        The remote rig that decided the reference; None when this rig did or there is no network.
    remote_rigs : RemoteRigs
        The rigs (read-only mapping of name to URI) and their connection.
    """

    def __init__(self, *args: Any, remote_rigs: Mapping[str, str] | Iterable[Any] | None = None,
                 remote_rigs_file: str | os.PathLike | None = None, network_timeout: float | None = DEFAULT_TIMEOUT,
                 network_options: Mapping[str, Any] | None = None, **kwargs: Any):
        self.exp_ref: dict = {}
        self.main_sync_rig: str | None = None
        self.remote_rigs = RemoteRigs()
        self._one: Any = None  # one.api.OneAlyx, made on first use
        self._network_stage: ExpStatus | None = None
        self._previous_sigterm: Any = None  # the SIGTERM handler to restore
        self._remote_rigs_file = remote_rigs_file
        self._iblrig_settings = kwargs.get('iblrig_settings')
        if network_options is not None and not isinstance(network_options, Mapping):
            raise TypeError(f'network_options must be a mapping such as {{"echo_timeout": 1.0}}, '
                            f'not {type(network_options).__name__}')
        kwargs = self._host_keywords(kwargs)
        self.connect(remote_rigs, timeout=network_timeout, **(network_options or {}))
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self.cleanup_mixin_network()
            raise

    def _host_keywords(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keywords for the host class; a TypeError naming any that it does not take.

        ``iblrig_settings`` is read here and passed on only if the host takes it. A host whose
        ``__init__`` takes ``**kwargs`` (or cannot be inspected) gets everything.
        """
        host, accepted = _host_init(type(self))
        if accepted is None:
            return kwargs
        kwargs = {k: v for k, v in kwargs.items() if k != 'iblrig_settings' or k in accepted}
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            named = []
            for keyword in unknown:
                near = difflib.get_close_matches(keyword, [*_OWN_KEYWORDS, *accepted], n=1)
                named.append(f'{keyword!r}' + (f' (did you mean {near[0]!r}?)' if near else ''))
            raise TypeError(f'{type(self).__name__}() got unexpected keyword argument(s) {", ".join(named)}: '
                            f'NetworkSession takes {", ".join(_OWN_KEYWORDS)} and passes the others to '
                            f'{host.__qualname__}, which takes {", ".join(sorted(accepted)) or "none"}')
        return kwargs

    # --- connection ---
    def connect(self, remote_rigs: Mapping[str, str] | Iterable[Any] | None,
                timeout: float | None = DEFAULT_TIMEOUT, **options: Any) -> RemoteRigs:
        """Connect to `remote_rigs` (closing any earlier connection) and listen for Alyx tokens.

        Names are looked up in the remote rigs file given at construction (or found from
        ``iblrig_settings``, or the default one); `options` go to :class:`Services`
        (``echo_timeout``, ``resend_interval``, ``resends``, ``assume_resends``).

        Raises
        ------
        TypeError, ValueError, ConfigError
            A bad timeout, option, name or file; raised before anything opens.
        """
        _check_timeout(timeout)
        _check_options(options)
        uris = resolve_remote_rigs(remote_rigs, self._remote_rigs_file, self._iblrig_settings)
        self.cleanup_mixin_network()
        self.remote_rigs = RemoteRigs(uris, timeout=timeout, **options)
        self._network_stage = ExpStatus.CONNECTED
        if self.remote_rigs.services is not None:
            self.remote_rigs.services.assign_callback(ExpMessage.ALYX, self._on_alyx, return_service=True)
            self._catch_sigterm()
            log.info('Connected to %s', ', '.join(f'{n} ({u})' for n, u in self.remote_rigs.uris.items()))
        return self.remote_rigs

    def communicate(self, message: ExpMessage | int | str, *args: Any, raise_on_exception: bool = True) -> Any:
        """Broadcast one message to every remote rig and return ``{rig: response data}``.

        A failure is not logged here: it is raised, or returned, once, and whoever handles it
        reports it.

        Parameters
        ----------
        message : ExpMessage, int, str
            The event, or a ``Services`` method name ('init', 'start', 'stop', 'cleanup',
            'status', 'info', 'alyx').
        *args
            The method's arguments.
        raise_on_exception : bool
            On failure, clean up the network and raise; otherwise return the exception.
        """
        if not self.remote_rigs.is_connected:
            return {}
        verb = verb_of(message)
        try:
            return getattr(self.remote_rigs.services, verb.method)(*args, **verb.keywords)
        except Exception as ex:
            if raise_on_exception:
                self.cleanup_mixin_network()
                raise
            return ex

    # --- the lifecycle ---
    def init_mixin_network(self) -> None:
        """EXPINFO to every rig, agree on the experiment reference, then EXPINIT (once).

        Between the two, with a remote main sync, ``session_info['SESSION_NUMBER']`` becomes
        the reference's sequence; then :meth:`on_exp_ref` is called. If either check or the
        hook raises, no rig is initialised and the connections are closed.
        """
        if not self.remote_rigs or self._network_stage is not ExpStatus.CONNECTED:
            return
        main_sync = bool(self._host('hardware_settings').get('MAIN_SYNC', False))
        own_ref = self._own_reference() if main_sync else None
        info = {
            'subject': self._subject(), 'main_sync': main_sync, 'master': main_sync,
            'exp_ref': protocol.exp_ref_to_str(own_ref),
            'experiment_description': dict(getattr(self, 'experiment_description', None) or {}),
            'rig_version': __version__, 'spec_version': PROTOCOL_VERSION,
        }  # Services.info adds "iblnet_sync": 1, so that our rigs tag their answers at once
        sent = time.time()
        answers = self.communicate('info', ExpStatus.CONNECTED, info)
        _log_clock_offsets(answers, sent, time.time())
        try:
            if own_ref is not None:  # this rig is the main sync
                if claims := _main_sync_claims(answers):
                    raise RuntimeError(f'This rig is the main sync, but {", ".join(claims)} also claim(s) to be')
                self.exp_ref = own_ref
            else:
                self.main_sync_rig, self.exp_ref = self._reference_from(answers)
                self._take_session_number(self.exp_ref['sequence'])
            self.on_exp_ref(dict(self.exp_ref))
        except BaseException:
            self.cleanup_mixin_network()
            raise
        self._network_stage = ExpStatus.INITIALIZED  # from here on a failure interrupts every rig
        self._step('init', {'exp_ref': protocol.exp_ref_to_str(self.exp_ref)})
        log.info('Experiment %s initialised on %s', protocol.exp_ref_to_str(self.exp_ref), list(answers))

    def on_exp_ref(self, exp_ref: dict) -> None:
        """Called once the rigs agreed on the experiment reference, before any rig is initialised.

        Does nothing; override it in the task to act on the reference, e.g. a host that
        computed its session folder before the network step recomputes it here. By then
        ``self.exp_ref`` is set and, when a remote rig is the main sync (``self.main_sync_rig``),
        ``session_info['SESSION_NUMBER']`` is ``exp_ref['sequence']``. Raising here aborts the
        experiment: the rigs are not initialised and the connections are closed.

        Parameters
        ----------
        exp_ref : dict
            A copy of the reference: ``subject`` (str), ``date`` (datetime.date), ``sequence`` (int).

        Examples
        --------
        >>> class Task(NetworkSession, BehaviourTask):
        ...     def on_exp_ref(self, exp_ref):
        ...         self.paths = self._init_paths()  # again, now numbered from exp_ref['sequence']
        """

    def start_mixin_network(self) -> None:
        """EXPSTART with the experiment reference to every rig (once, after init)."""
        if not self.remote_rigs:
            return
        if self._network_stage is ExpStatus.CONNECTED:
            self.init_mixin_network()
        if self._network_stage is ExpStatus.INITIALIZED:
            self._network_stage = ExpStatus.RUNNING
            self._step('start', protocol.exp_ref_to_str(self.exp_ref))

    def stop_mixin_network(self) -> None:
        """EXPEND to every rig, in reverse order (once, if started)."""
        if self.remote_rigs and self._network_stage is ExpStatus.RUNNING:
            self._step('stop')
            self._network_stage = ExpStatus.STOPPED

    def interrupt_mixin_network(self, error: BaseException) -> None:
        """EXPINTERRUPT with `error`'s details to every rig (reverse order), then close the connections.

        Called when the task crashes, and when EXPINIT, EXPSTART or EXPEND fails: a rig that did
        start must not be left recording. A rig that misses the EXPINTERRUPT too is logged.
        """
        if self.remote_rigs.is_connected and self._network_stage in (ExpStatus.INITIALIZED, ExpStatus.RUNNING):
            failure = self.communicate('stop', _interrupt_data(error), True, raise_on_exception=False)
            if isinstance(failure, Exception):  # the error that caused this is raised: this one is only logged
                log.warning('EXPINTERRUPT did not reach every rig: %s', failure)
        self.cleanup_mixin_network()

    def _step(self, method: str, *args: Any) -> None:
        """One step of the lifecycle after EXPINFO: on failure every rig is interrupted, then it is raised."""
        failure = self.communicate(method, *args, raise_on_exception=False)
        if isinstance(failure, Exception):
            self.interrupt_mixin_network(failure)
            raise failure

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
            self.interrupt_mixin_network(ex)
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
        log.debug('Token for %s: %s', user, mask_alyx([base_url, dict(token)])[1])

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
        if not number:
            log.warning('session_info has SESSION_NUMBER %r; using sequence 1', number)
        return {'subject': self._subject(), 'date': self._start_date(), 'sequence': int(number or 1)}

    def _take_session_number(self, sequence: int) -> None:
        """The main sync's sequence becomes the host's ``SESSION_NUMBER``."""
        info = getattr(self, 'session_info', None)
        if isinstance(info, MutableMapping):
            info['SESSION_NUMBER'] = sequence
            log.info('Session number %d, from main sync rig %s', sequence, self.main_sync_rig)
        else:
            log.warning('The host has no session_info mapping: cannot set SESSION_NUMBER to %d', sequence)

    def _reference_from(self, answers: Mapping[str, Any]) -> tuple[str, dict]:
        """The main sync rig's name and its reference, checked against this task's subject and date."""
        claims = _main_sync_claims(answers)
        if len(claims) != 1:
            fix = ('set main_sync: true in the config of the rig that decides the reference (iblnet-rig), or '
                   "RigServer(main_sync=True); or make this PC the main sync: hardware_settings['MAIN_SYNC'] = True"
                   if not claims else 'set main_sync: false on all but one of them')
            raise RuntimeError(f'Exactly one remote rig must be the main sync; {len(claims)} claim it'
                               f'{": " + ", ".join(claims) if claims else ""} (of {", ".join(answers)}). To fix: {fix}')
        rig = claims[0]
        ref = answers[rig][1].get('exp_ref')
        try:
            ref = protocol.exp_ref_to_dict(ref)  # as ONE's ref2dict, without importing ONE (and pandas)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise RuntimeError(f'Main sync rig {rig!r} sent an invalid experiment reference {ref!r}') from None
        if self._subject() and ref['subject'] != self._subject():
            raise ValueError(f'Main sync rig {rig!r} has subject {ref["subject"]!r}, this task {self._subject()!r}')
        if ref['date'] != self._start_date():
            raise RuntimeError(f'Main sync rig {rig!r} has date {ref["date"]}, this task started {self._start_date()}')
        return rig, ref

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


def _log_clock_offsets(answers: Mapping[str, Any], sent: float, answered: float) -> None:
    """Log at INFO each rig's clock offset from this PC, measured over the EXPINFO broadcast."""
    for name, answer in answers.items():
        info = answer[1] if isinstance(answer, list) and len(answer) > 1 else None
        offset = clock_offset(info, sent, answered)
        if offset is None:
            log.info('Clock of %s: offset unknown (the rig does not report its clock)', name)
        else:
            log.info('Clock of %s: %+.3f s from this PC (± %.3f s)', name, *offset)


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


def _host_init(cls: type) -> tuple[type, set[str] | None]:
    """The class whose ``__init__`` follows NetworkSession's in `cls`'s MRO, and the keywords it takes.

    The keywords are None when it takes any (``**kwargs``) or its signature cannot be read.
    """
    mro = cls.__mro__
    host: type = object
    for host in mro[mro.index(NetworkSession) + 1:]:
        if '__init__' in vars(host):
            break
    if host is object:
        return host, set()
    try:
        parameters = list(inspect.signature(vars(host)['__init__']).parameters.values())[1:]  # without self
    except (TypeError, ValueError):
        return host, None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return host, None
    return host, {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_timeout(timeout: Any) -> None:
    """A TypeError or ValueError unless `timeout` is a number of seconds > 0, or None."""
    if timeout is not None:
        check_seconds('network_timeout', timeout)


def _check_options(options: Mapping[str, Any]) -> None:
    """A TypeError naming any network option that is not known (with the nearest known one); a
    TypeError or ValueError naming one out of range (see :class:`~iblnet_sync.options.Options`)."""
    known = sorted({*Options.names(), *IGNORED_OPTIONS})
    unknown = [name for name in options if name not in known]
    if unknown:
        named = []
        for name in unknown:
            near = difflib.get_close_matches(name, known, n=1)
            named.append(f'{name!r}' + (f' (did you mean {near[0]!r}?)' if near else ''))
        raise TypeError(f'Unknown network option(s) {", ".join(named)}; the options are {", ".join(known)}')
    Options(**{name: value for name, value in options.items() if name in Options.names()})
