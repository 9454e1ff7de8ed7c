"""The auxiliary rig's side, blocking: listen for a main rig and answer it with handlers per event.

Examples
--------
>>> def start_cameras(data):
...     return {'cameras': 2}
>>> with RigServer('udp://0.0.0.0:11001', name='cameras') as rig:
...     rig.assign_handler('EXPSTART', start_cameras)
...     rig.wait_closed()  # or keep doing other work: the rig answers in the background
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, Callable, Generic, Iterable, TypeVar, overload

from iblutil.io.net.base import LISTEN_PORT, ExpMessage, ExpStatus

from . import core, dialect, protocol
from .allow import Allowed
from .dispatcher import Alarm, Dispatcher, weak_call
from .errors import ClosedError
from .experiment import Handler, RigExperiment
from .logtext import PeerLogLimiter, datagram_text, peer_text
from .options import ANSWER_RESENDS, ECHO_TIMEOUT, RESEND_INTERVAL, Options
from .session_numbers import SessionNumbers
from .sockets import bound_socket, close_all

__all__ = ['RigServer', 'MAX_MAIN_RIGS']
log = logging.getLogger(__name__)
MAX_MAIN_RIGS = 64
"""int: main rig addresses remembered at most; the least recently active one is forgotten first."""
MAX_REFUSED_HOSTS = 256
"""int: hosts outside ``allow`` remembered, so that each is logged once."""


T = TypeVar('T')


class _OfTheExperiment(Generic[T]):
    """An attribute of the rig that its :class:`~iblnet_sync.experiment.RigExperiment` holds, read and
    written through the rig."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, rig: None, owner: type) -> _OfTheExperiment[T]: ...

    @overload
    def __get__(self, rig: RigServer, owner: type) -> T: ...

    def __get__(self, rig: RigServer | None, owner: type) -> T | _OfTheExperiment[T]:
        return self if rig is None else getattr(rig._experiment, self._name)

    def __set__(self, rig: RigServer, value: T) -> None:
        setattr(rig._experiment, self._name, value)


class RigServer:
    """An auxiliary rig that answers a main rig (ours or iblutil's) in plain blocking Python.

    The defaults already make a correct rig: it tracks its :class:`ExpStatus` and answers
    every event with the conventional shape. Handlers add the rig's own work. The protocol
    rules are those of :class:`iblnet_sync.core.RigConversation`, one per main rig address;
    the experiment (status, reference, numbering, owner, answers) is a
    :class:`iblnet_sync.experiment.RigExperiment`, which this class drives.

    Parameters
    ----------
    uri : str
        Where to listen: ``udp://host:port``, ``host:port`` or ``host``; port 0 picks a free one.
    name : str, optional
        The rig's name in logs and in its EXPINFO answer.
    main_sync : bool
        Whether this rig decides the experiment reference.
    exp_ref : str, dict, optional
        The reference to report in EXPINFO. A main-sync rig without one offers, at an EXPINFO
        between experiments that names a subject (a ping's does not), that subject, today's date
        and the next sequence number not yet claimed for them; the same offer while it is not
        claimed. EXPINIT claims it: the number is written to `session_numbers` and never
        offered again, also after a restart.
    experiment_description : dict, optional
        Reported in EXPINFO.
    resend_interval, resends, echo_timeout
        How often and how many times an answer to an iblnet_sync main rig is sent again until it
        is echoed; how long a plain answer (to an iblutil main) waits for its echo.
    clock : callable
        Returns the wall-clock time reported in EXPINFO as ``clock`` (seconds since the epoch).
    session_numbers : str, os.PathLike, optional
        The file of claimed session numbers of a main-sync rig; by default
        ``~/.iblnet_sync/session_numbers.json`` (see :mod:`iblnet_sync.session_numbers`).
    allow : iterable of str, optional
        The hosts and networks (``10.0.0.5``, ``10.0.0.0/24``, ``localhost``) from which a main
        rig may drive this rig; datagrams from any other host get no echo and no answer (logged
        once per host). None: any host.

    Notes
    -----
    From EXPINIT until EXPEND, EXPINTERRUPT or EXPCLEANUP the rig belongs to the host that
    initialised it: another host's EXPINIT, EXPSTART, EXPEND, EXPINTERRUPT or EXPCLEANUP gets an
    error report naming the experiment and its host, and changes nothing (EXPINFO, EXPSTATUS and
    ALYX are answered to anyone allowed). The owner may start again at any time (a task that
    died without EXPEND, from any port of that host); restarting the rig also frees it.

    Attributes
    ----------
    name, status, exp_ref, main_sync, experiment_description
        The experiment's (:class:`~iblnet_sync.experiment.RigExperiment`), read and written here.
    uri : str
        The bound address, e.g. ``udp://127.0.0.1:53211``.
    """

    name = _OfTheExperiment[str]()
    status = _OfTheExperiment[ExpStatus]()
    exp_ref = _OfTheExperiment['dict | None']()
    main_sync = _OfTheExperiment[bool]()
    experiment_description = _OfTheExperiment[dict]()

    def __init__(self, uri: str = f'udp://127.0.0.1:{LISTEN_PORT}', name: str | None = None,
                 main_sync: bool = False, exp_ref: str | dict | None = None,
                 experiment_description: dict | None = None, *, resend_interval: float = RESEND_INTERVAL,
                 resends: int = ANSWER_RESENDS, echo_timeout: float = ECHO_TIMEOUT,
                 clock: Callable[[], float] = time.time, session_numbers: str | os.PathLike | None = None,
                 allow: Iterable[str] | None = None):
        self._options = Options(echo_timeout, resend_interval, resends)  # (pause: the main side's only)
        host, port = protocol.rig_address(uri, allow_any_port=True)
        numbers = SessionNumbers(session_numbers) if session_numbers else None  # (None: the default file)
        self._experiment = RigExperiment(name or f'udp://{host}:{port}', main_sync, exp_ref, experiment_description,
                                         clock=clock, numbers=numbers)
        self._handlers: dict[ExpMessage, Handler] = {}
        self._peers: OrderedDict[Any, core.RigConversation] = OrderedDict()  # least recently active first
        self._alarms: dict[Any, Alarm] = {}  # one timer per main rig address, for its conversation
        self._waiting: dict[Any, tuple[core.RigConversation, int, bytes]] = {}  # per main: its request, as received
        self._allow = None if allow is None else Allowed(allow)
        self._refused: OrderedDict[str, None] = OrderedDict()  # hosts told off in the log (bounded)
        self._peer_log = PeerLogLimiter()  # lines a main can cause again and again: a few a minute per host
        self._lock = threading.Lock()
        self._closed = threading.Event()
        held: list = []  # what close() or the finalizer closes, also when this constructor is interrupted
        self._finalizer = weakref.finalize(self, close_all, held)
        try:
            self._sock = sock = bound_socket(host, port, held, uri)
            bound_host, bound_port = sock.getsockname()[:2]
            self.uri = f'udp://{bound_host}:{bound_port}'
            dispatcher = Dispatcher(f'iblnet_sync-{self.name}', held)
            self._dispatcher = dispatcher
            dispatcher.register(sock, self)
        except BaseException:
            self._finalizer()
            raise
        log.info('%s listening on %s; %s', self.name, self.uri,
                 'any host may drive it' if self._allow is None else f'driven only from {self._allow}')

    # --- public API ---
    def assign_handler(self, event: ExpMessage | int | str, handler: Handler | None) -> None:
        """Run ``handler(data)`` when the main rig sends `event`; None removes it.

        `data` is the message without its event code (e.g. ``[exp_ref, extra]`` for EXPSTART).
        The return value becomes the response's data: ``[2, EXP_REF, RETURNED]`` for EXPSTART,
        ``[1, STATUS, RETURNED]`` for EXPINIT, ``[4 or 16, RETURNED]`` for EXPEND/EXPINTERRUPT,
        ``[8, RETURNED]`` for EXPCLEANUP; for EXPINFO a returned dict is merged into the info;
        for ALYX the main rig's ``[BASE_URL, {USER: TOKEN}]`` is passed and, when the main rig
        asks for a token, a returned ``(base_url, {user: token})`` is sent. If the handler
        raises, the main rig gets ``[0, "Type: message", EVENT]`` and the status is unchanged.
        """
        event = protocol.as_event(event, allow_compound=True)
        with self._lock:
            if self._closed.is_set():
                raise ClosedError(f'{self!r} is closed')
            for flag in ExpMessage:
                if flag & event:
                    if handler is None:
                        self._handlers.pop(flag, None)
                    else:
                        self._handlers[flag] = handler

    def info(self) -> dict:
        """The EXPINFO answer's info: what iblrig's ExpInfo carries."""
        return self._experiment.info()

    @property
    def is_connected(self) -> bool:
        """bool: True until ``close()``."""
        return not self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until ``close()`` is called (e.g. from a handler or another thread)."""
        return self._closed.wait(timeout)

    def serve_forever(self) -> None:
        """Block until ``close()`` (from a handler or another thread) or Ctrl-C, then close."""
        try:
            log.info('%s: serving until Ctrl-C', self.name)
            while not self._closed.wait(0.5):  # a timed wait, so that Ctrl-C gets through on Windows
                pass
        except KeyboardInterrupt:
            log.info('%s: interrupted, closing', self.name)
        finally:
            self.close()

    def close(self) -> None:
        """Stop serving, stop both threads and close the socket; idempotent."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            for alarm in self._alarms.values():
                alarm.cancel()
            self._alarms.clear()
        self._finalizer()

    def __enter__(self) -> RigServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name!r} {self.uri} {self.status.name}>'

    # --- on the dispatcher thread ---
    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Hand a datagram from a main rig to its conversation (a new one only for a real message)."""
        if self._allow is not None and not self._allow(addr[0]):
            self._note_refused(addr[0])
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s: received %s from %s', self.name, datagram_text(data), addr)
        with self._lock:
            conversation = self._peers.get(addr)
            new = conversation is None
            if conversation is None:
                conversation = core.RigConversation(secrets.token_hex(3), self._options)  # (a nonce of its own:
                #                                                                       ids are unique per main)
            events = conversation.receive(data, time.monotonic())
            if new and conversation.state == core.IDLE:
                return  # junk makes no entry
            self._peers[addr] = conversation
            self._peers.move_to_end(addr)
            if new and len(self._peers) > MAX_MAIN_RIGS:
                self._forget_one()
            self._apply(addr, conversation, events, data)

    def _note_refused(self, host: str) -> None:
        """Log once per host (of the last few hundred) that it may not drive this rig."""
        if host in self._refused:
            return
        self._refused[host] = None
        if len(self._refused) > MAX_REFUSED_HOSTS:
            self._refused.popitem(last=False)
        self._peer_log.warning(log, 'not allowed', '%s: ignoring %s, which is not in allow (%s)', self.name,
                               host, self._allow)  # (once per host, and a few a minute in all)

    def error_received(self, error: OSError) -> None:
        """A main rig went away (port unreachable): nothing to do but note it."""
        log.debug('%s: socket error: %s', self.name, error)

    def _on_timer(self, addr: Any) -> None:
        with self._lock:
            if addr in self._alarms:
                self._alarms[addr].fired()
            conversation = self._peers.get(addr)
            if conversation is not None:
                self._apply(addr, conversation, conversation.tick(time.monotonic()))
            else:  # (forgotten meanwhile: its alarm goes too)
                self._alarms.pop(addr, None)

    def _apply(self, addr: Any, conversation: core.RigConversation, events: list[core.Event],
               received: bytes = b'') -> None:
        """Carry out a conversation's events (with the lock held); `received` is the datagram they answer."""
        for event in events:
            if isinstance(event, core.Send):
                self._send(event.datagram, addr)
            elif isinstance(event, core.Handle):  # (only a received datagram makes one)
                # Only a main's newest request may still be handled (a newer one supersedes it), and it
                # waits as the bytes received: parsed only when its turn comes, so a flood of large
                # requests costs their size once per main, never their parsed objects a thousand times.
                queued = addr in self._waiting
                self._waiting[addr] = (conversation, event.request, received)
                if not queued and not self._dispatcher.run_callback(self._handle, addr):
                    del self._waiting[addr]
                    busy = protocol.error_report(RuntimeError('rig busy: too many requests waiting'),
                                                 event.message.event)
                    self._apply(addr, conversation, conversation.answer(event.request, busy, time.monotonic()))
            elif isinstance(event, core.Delivered):  # an error report from the main
                self._peer_log.warning(log, addr[0], '%s: %s reported an error: %s', self.name, addr,
                                       peer_text(event.message.data))
            elif isinstance(event, core.GaveUp):
                self._peer_log.warning(log, addr[0], '%s: %s never echoed our answer %s', self.name, addr,
                                       datagram_text(event.datagram, 80))
        self._arm_timer(addr, conversation)

    def _arm_timer(self, addr: Any, conversation: core.RigConversation) -> None:
        """Make sure the conversation's timer input comes by its next wake-up."""
        when = None if self._closed.is_set() else conversation.wakeup
        if when is None:
            return
        if addr not in self._alarms:
            self._alarms[addr] = Alarm(self._dispatcher, weak_call(self._on_timer, addr))
        self._alarms[addr].set(when)

    def _forget_one(self) -> None:
        """Forget the least recently active main rig."""
        addr = next(iter(self._peers))
        del self._peers[addr]
        self._waiting.pop(addr, None)
        alarm = self._alarms.pop(addr, None)
        if alarm is not None:
            alarm.cancel()

    def _send(self, data: bytes, addr: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):  # (before sending: the main's next line may not come first)
            log.debug('%s: sent %s to %s', self.name, datagram_text(data), addr)
        try:
            self._sock.sendto(data, addr)
        except OSError as ex:
            log.debug('%s: send to %s failed: %s', self.name, addr, ex)

    # --- on the callback thread ---
    def _handle(self, addr: Any) -> None:
        """Run the handler of the main's newest request if it is still current, and give the core its answer."""
        with self._lock:
            waiting = self._waiting.pop(addr, None)
        if waiting is None:  # (the main was forgotten meanwhile)
            return
        conversation, request, received = waiting
        if not conversation.is_current(request):
            log.debug('%s: a request of %s superseded before it was handled', self.name, addr)
            return
        event, data = dialect.parse(received).message
        try:
            answer = self._experiment.answer(event, data, addr[0], self._handlers.get(event))
        except Exception as ex:
            self._peer_log.log(log, logging.ERROR, addr[0], '%s: handler for %s failed: %s', self.name,
                               event.name, peer_text(repr(ex)))
            answer = protocol.error_report(ex, event)
        with self._lock:
            if not self._closed.is_set() and self._peers.get(addr) is conversation:  # (not forgotten meanwhile)
                self._apply(addr, conversation, conversation.answer(request, answer, time.monotonic()))
