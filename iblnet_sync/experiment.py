"""An auxiliary rig's experiment, apart from the network: status, reference, owner and answers.

:class:`RigExperiment` has no socket, no thread and no clock of its own (the clock is passed
in); its only input and output besides the calls is a main-sync rig's file of session numbers
(a :class:`~iblnet_sync.session_numbers.SessionNumbers`, which may be given).
:class:`~iblnet_sync.rig_server.RigServer` gives it each request a main rig makes and sends what
it returns; the simulator (``tests/simulation.py``) builds its rig's answers with it.

Examples
--------
>>> experiment = RigExperiment('cameras', clock=lambda: 0.0)
>>> experiment.answer(ExpMessage.EXPINIT, [{'exp_ref': '2026-11-30_1_mouse'}], '10.0.0.5', None)
b'[1, 10, null]'
>>> experiment.status.name, experiment.owner
('INITIALIZED', ('10.0.0.5', '2026-11-30_1_mouse'))
"""
from __future__ import annotations

import datetime
from typing import Any, Callable

from iblutil.io.net.base import PROTOCOL_VERSION, ExpMessage, ExpStatus

from . import dialect, protocol
from .session_numbers import SessionNumbers, default_path
from .version import __version__

__all__ = ['RigExperiment', 'Handler', 'OWNED_EVENTS']

Handler = Callable[[list], Any]
"""A rig's work at an event: called with the message's data (without its event code)."""
OWNED_EVENTS = frozenset({ExpMessage.EXPINIT, ExpMessage.EXPSTART, ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT,
                          ExpMessage.EXPCLEANUP})
"""Events only the host that initialised the experiment in progress may send."""
_BETWEEN = (ExpStatus.CONNECTED, ExpStatus.STOPPED)
"""The statuses between two experiments (when a main-sync rig offers a new reference)."""
_ENDS = (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT, ExpMessage.EXPCLEANUP)
"""The events that free the rig from its owner."""

Answer = Callable[[ExpMessage, list, Handler | None], bytes | None]
"""The answer to one event: made from the event, the request's data and its handler."""


class RigExperiment:
    """What an auxiliary rig knows of its experiment, and the answer it gives to each event.

    Parameters
    ----------
    name : str
        The rig's name, in its EXPINFO answer and in the refusals it raises.
    main_sync : bool
        Whether this rig decides the experiment reference.
    exp_ref : str, dict, optional
        A fixed reference to report in EXPINFO. A main-sync rig without one offers, at an EXPINFO
        between experiments that names a subject, that subject, today's date and the next
        sequence number not yet claimed for them; EXPINIT claims it in `numbers`.
    experiment_description : dict, optional
        Reported in EXPINFO.
    clock : callable
        Returns the wall-clock time (seconds since the epoch): reported in EXPINFO as ``clock``,
        and the date of the references a main-sync rig offers and accepts.
    numbers : SessionNumbers, optional
        The claimed session numbers of a main-sync rig; by default those in
        :func:`~iblnet_sync.session_numbers.default_path` (read and written only when used).

    Attributes
    ----------
    status : ExpStatus
        CONNECTED, then INITIALIZED, RUNNING and STOPPED as the experiment advances.
    exp_ref : dict, None
        The current experiment reference.
    fixed_reference : bool
        Whether the reference was given at construction (then no session is numbered here).

    Notes
    -----
    From EXPINIT until EXPEND, EXPINTERRUPT or EXPCLEANUP the experiment belongs to the host that
    initialised it: another host's event of :data:`OWNED_EVENTS` raises PermissionError, naming the
    experiment and its host, and changes nothing. The owner may start again at any time.
    """

    def __init__(self, name: str, main_sync: bool = False, exp_ref: str | dict | None = None,
                 experiment_description: dict | None = None, *, clock: Callable[[], float],
                 numbers: SessionNumbers | None = None):
        self.name = name
        self.main_sync = main_sync
        self.exp_ref: dict | None = protocol.exp_ref_to_dict(exp_ref) if exp_ref else None
        self.fixed_reference = self.exp_ref is not None
        self.experiment_description = experiment_description or {}
        self.status = ExpStatus.CONNECTED
        self._clock = clock
        self._numbers = numbers if numbers is not None else SessionNumbers(default_path())
        self._owner: tuple[str, str | None] | None = None  # (host, exp_ref) of the experiment in progress
        self._answers: dict[ExpMessage, Answer] = {
            ExpMessage.EXPINFO: self._info_answer, ExpMessage.EXPSTATUS: self._status_answer,
            ExpMessage.ALYX: self._alyx_answer, ExpMessage.EXPINIT: self._init_answer,
            ExpMessage.EXPSTART: self._start_answer, ExpMessage.EXPEND: self._stop_answer,
            ExpMessage.EXPINTERRUPT: self._stop_answer, ExpMessage.EXPCLEANUP: self._plain_answer,
        }

    @property
    def owner(self) -> tuple[str, str | None] | None:
        """tuple, None: (host, exp_ref) of the experiment in progress; None when the rig is free."""
        return self._owner

    @property
    def numbers_sessions(self) -> bool:
        """bool: whether this rig numbers the sessions itself (main sync, no fixed reference)."""
        return self.main_sync and not self.fixed_reference

    def info(self) -> dict:
        """The EXPINFO answer's info: what iblrig's ExpInfo carries."""
        return {
            'exp_ref': protocol.exp_ref_to_str(self.exp_ref), 'main_sync': self.main_sync,
            'master': self.main_sync, 'experiment_description': self.experiment_description,
            'name': self.name, 'rig_version': __version__, 'spec_version': PROTOCOL_VERSION,
            dialect.PEER_KEY: dialect.PEER_VERSION, 'clock': self._clock(),
        }

    def answer(self, event: ExpMessage, data: list, host: str, handler: Handler | None) -> bytes | None:
        """Run `handler` for a request of `host` and return the answer datagram; update the experiment.

        Parameters
        ----------
        event : ExpMessage
            The request's event.
        data : list
            The request without its event code (what `handler` is called with).
        host : str
            The requesting main rig's host (the experiment's owner, after EXPINIT).
        handler : callable, None
            The rig's work; what it returns goes into the answer (see
            :meth:`~iblnet_sync.rig_server.RigServer.assign_handler`).

        Returns
        -------
        bytes, None
            The answer; None when the request is answered by its echo only (ALYX with a token).

        Raises
        ------
        PermissionError
            Another host's event of :data:`OWNED_EVENTS` while the experiment belongs to a host.
        Exception
            Whatever `handler` raised, or the answer could not be made (e.g. the handler returned
            something that is not JSON); the experiment is then unchanged.
        """
        self._check_owner(event, host)
        answer = self._answers.get(event, self._plain_answer)(event, data, handler)
        self._update_owner(event, host)
        return answer

    # --- ownership ---
    def _check_owner(self, event: ExpMessage, host: str) -> None:
        """Refuse another host's lifecycle event while an experiment belongs to one."""
        if self._owner is not None and event in OWNED_EVENTS and host != self._owner[0]:
            raise PermissionError(f'{self.name} runs experiment {self._owner[1]} of {self._owner[0]}; '
                                  f'{event.name} from {host} refused (that host ends it, or restart this rig)')

    def _update_owner(self, event: ExpMessage, host: str) -> None:
        """EXPINIT gives the experiment to its host; its end frees it."""
        if event is ExpMessage.EXPINIT:
            self._owner = (host, protocol.exp_ref_to_str(self.exp_ref))
        elif event in _ENDS:
            self._owner = None

    # --- one answer per event: the handler first, then the answer, encoded before anything changes ---
    def _info_answer(self, event: ExpMessage, data: list, handler: Handler | None) -> bytes:
        """``[64, STATUS, INFO]``; a task preparing an experiment may be offered a reference first."""
        returned = _call(handler, data)
        extra = _last(data)
        subject = extra.get('subject') if isinstance(extra, dict) else None
        if self.numbers_sessions and self.status in _BETWEEN and subject:
            self.exp_ref = self._numbers.offer(subject, self._today())
        info = self.info()
        if isinstance(returned, dict):
            info.update(returned)
        return protocol.encode(event, int(self.status), info)

    def _status_answer(self, event: ExpMessage, data: list, handler: Handler | None) -> bytes:
        """``[32, STATUS]``."""
        _call(handler, data)
        return protocol.encode(event, int(self.status))

    @staticmethod
    def _alyx_answer(event: ExpMessage, data: list, handler: Handler | None) -> bytes | None:
        """``[128, BASE_URL, {USER: TOKEN}]`` when asked for a token; nothing when given one."""
        returned = _call(handler, data)
        if data[:2] and data[1]:  # the main rig gave us its token: echo only
            return None
        base_url, token = returned if returned else (None, {})
        return protocol.encode(event, base_url, token)

    def _init_answer(self, event: ExpMessage, data: list, handler: Handler | None) -> bytes:
        """``[1, INITIALIZED, RETURNED]``; takes the reference the main sent (claimed, if numbered here)."""
        returned = _call(handler, data)
        answer = protocol.encode(event, int(ExpStatus.INITIALIZED), returned)  # (first: unsendable, nothing changes)
        extra = _last(data)
        if isinstance(extra, dict) and extra.get('exp_ref'):
            exp_ref = protocol.exp_ref_to_dict(extra['exp_ref'])
            if self.numbers_sessions:  # before anything changes: a number not written down is not used
                self._numbers.claim(exp_ref, self._today())
            self.exp_ref = exp_ref
        self.status = ExpStatus.INITIALIZED
        return answer

    def _start_answer(self, event: ExpMessage, data: list, handler: Handler | None) -> bytes:
        """``[2, EXP_REF, RETURNED]``; takes the reference the main sent, if any."""
        returned = _call(handler, data)
        answer = protocol.encode(event, data[0] if data else None, returned)
        if data and data[0]:
            self.exp_ref = protocol.exp_ref_to_dict(data[0])
        self.status = ExpStatus.RUNNING
        return answer

    def _stop_answer(self, event: ExpMessage, data: list, handler: Handler | None) -> bytes:
        """``[4 or 16, RETURNED]``; the experiment is STOPPED."""
        answer = self._plain_answer(event, data, handler)
        self.status = ExpStatus.STOPPED
        return answer

    @staticmethod
    def _plain_answer(event: ExpMessage, data: list, handler: Handler | None) -> bytes:
        """``[EVENT, RETURNED]`` (EXPCLEANUP's answer)."""
        return protocol.encode(event, _call(handler, data))

    def _today(self) -> datetime.date:
        return datetime.date.fromtimestamp(self._clock())


def _call(handler: Handler | None, data: list) -> Any:
    """What `handler` returns for `data`; None without a handler."""
    return handler(data) if handler else None


def _last(data: list) -> Any:
    """A message's last element: where its details are (None for no data)."""
    return data[-1] if data else None
