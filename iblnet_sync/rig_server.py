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

import datetime
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from iblutil.io.net.base import LISTEN_PORT, PROTOCOL_VERSION, ExpMessage, ExpStatus

from . import protocol
from .communicator import RESEND_INTERVAL
from .dispatcher import Dispatcher
from .errors import ClosedError
from .guards import StormGuard
from .version import __version__

__all__ = ['RigServer']
log = logging.getLogger(__name__)
Handler = Callable[[list], Any]
RESPONSE_RESENDS = 8
"""int: how many times a response is sent again while the main rig has not echoed it."""
MAX_PEERS = 256
"""int: how many main rig addresses the server remembers (each main rig uses one)."""


@dataclass
class _Peer:
    """What the server remembers about one main rig's address (for resends and echoes)."""

    request: Any = None                 # the decoded value of the last request
    answered: bool = False              # its handler finished
    answer: bytes | None = None         # our answer to it
    response: bytes | None = None       # our answer, while the main rig has not echoed it
    owed_echo: bytes | None = None      # an echo of our answer that may still arrive late
    takes_resends: bool = False         # the main rig said so in its EXPINFO
    timers: list = field(default_factory=list)
    storm: StormGuard = field(default_factory=StormGuard)

    @property
    def is_open(self) -> bool:
        """bool: the handler runs, or its answer awaits the main rig's echo."""
        return not self.answered or self.response is not None

    def stop_resending(self, owed_echo: bytes | None = None) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        self.response, self.owed_echo = None, owed_echo

    def move_on(self) -> None:
        """A new request came: our answer must have arrived, but its echo may still be on its way."""
        self.stop_resending(owed_echo=self.response)


class RigServer:
    """An auxiliary rig that answers a main rig (ours or iblutil's) in plain blocking Python.

    The defaults already make a correct rig: it tracks its :class:`ExpStatus` and answers
    every event with the conventional shape. Handlers add the rig's own work.

    Parameters
    ----------
    uri : str
        Where to listen: ``udp://host:port``, ``host:port`` or ``host``; port 0 picks a free one.
    name : str, optional
        The rig's name in logs and in its EXPINFO answer.
    main_sync : bool
        Whether this rig decides the experiment reference.
    exp_ref : str, dict, optional
        The reference to report in EXPINFO. A main-sync rig without one makes a new one at
        each EXPINFO between experiments, from the subject the main rig sends, today's date
        and the next sequence number for that subject.
    experiment_description : dict, optional
        Reported in EXPINFO.
    resend_interval, resends
        How often the rig resends its answer until the main rig echoes it (0: never); only to
        a main rig that said it takes resends (``resends: true`` in its EXPINFO info).

    Attributes
    ----------
    status : ExpStatus
        CONNECTED, then INITIALIZED, RUNNING and STOPPED as the experiment advances.
    exp_ref : dict, None
        The current experiment reference.
    uri : str
        The bound address, e.g. ``udp://127.0.0.1:53211``.
    """

    def __init__(self, uri: str = f'udp://127.0.0.1:{LISTEN_PORT}', name: str | None = None,
                 main_sync: bool = False, exp_ref: str | dict | None = None,
                 experiment_description: dict | None = None, *, resend_interval: float = RESEND_INTERVAL,
                 resends: int = RESPONSE_RESENDS):
        host, port = protocol.rig_address(uri, allow_any_port=True)
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, port))
        except OSError as ex:
            self._sock.close()
            raise OSError(ex.errno, f'Cannot listen on {uri}: {ex.strerror}') from None
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.uri = f'udp://{f"[{bound_host}]" if family == socket.AF_INET6 else bound_host}:{bound_port}'
        self.name = name or self.uri
        self.main_sync = main_sync
        self.exp_ref = protocol.exp_ref_to_dict(exp_ref) if exp_ref else None
        self._fixed_reference = self.exp_ref is not None
        self.experiment_description = experiment_description or {}
        self.status = ExpStatus.CONNECTED
        self.resend_interval, self.resends = resend_interval, resends
        self._handlers: dict[ExpMessage, Handler] = {}
        self._peers: dict[Any, _Peer] = {}
        self._sequences: dict[tuple[str, datetime.date], int] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        try:
            self._dispatcher = Dispatcher(f'iblnet_sync-{self.name}')
            self._dispatcher.register(self._sock, self)
        except BaseException:
            self._sock.close()
            if hasattr(self, '_dispatcher'):
                self._dispatcher.close()
            raise
        log.info('%s listening on %s', self.name, self.uri)

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
            for flag in ExpMessage:
                if flag & event:
                    if handler is None:
                        self._handlers.pop(flag, None)
                    else:
                        self._handlers[flag] = handler

    def info(self) -> dict:
        """The EXPINFO answer's info: what iblrig's ExpInfo carries."""
        return {
            'exp_ref': protocol.exp_ref_to_str(self.exp_ref), 'main_sync': self.main_sync,
            'master': self.main_sync, 'experiment_description': self.experiment_description,
            'name': self.name, 'rig_version': __version__, 'spec_version': PROTOCOL_VERSION,
            protocol.RESENDS_KEY: True,
        }

    @property
    def is_connected(self) -> bool:
        """bool: True until ``close()``."""
        return not self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until ``close()`` is called (e.g. from a handler or another thread)."""
        return self._closed.wait(timeout)

    def close(self) -> None:
        """Stop serving, stop both threads and close the socket; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._dispatcher.close()
        self._sock.close()

    def __enter__(self) -> RigServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name!r} {self.uri} {self.status.name}>'

    # --- on the dispatcher thread ---
    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Echo a new request and run its handler; match the echo of a response."""
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:  # forget the oldest main rig address
                self._peers.pop(next(iter(self._peers))).stop_resending()
            peer = self._peers[addr] = _Peer()
        if peer.response is not None and data in (peer.response, protocol.respell(peer.response, sender='rig')):
            # the main rig echoed our answer; if it echoed a resend, the first echo may follow
            peer.stop_resending(owed_echo=peer.response if data != peer.response else None)
            return
        if protocol.is_resend(data, sender='rig') or data == peer.owed_echo:
            log.debug('%s: late echo of our answer from %s dropped', self.name, addr)
            if data == peer.owed_echo:
                peer.owed_echo = None
            return
        try:
            message = protocol.decode(data)
        except protocol.DecodeError as ex:
            log.debug('%s: dropped datagram from %s: %s', self.name, addr, ex)
            return
        if message.event == protocol.ERROR_CODE:
            log.warning('%s: %s reported an error: %s', self.name, addr, message.data)
            return
        if not peer.storm.allow(data):
            return
        self._send(data, addr)  # echo at once
        if protocol.announces_resends(message):
            peer.takes_resends = True
        value = [int(message.event), *message.data]
        if value == peer.request and (peer.is_open or protocol.is_resend(data)):
            # a duplicate while the request is open, or the main rig resending: never handled twice
            log.debug('%s: repeated %s from %s: not handled again', self.name, message.event.name, addr)
            if peer.answered and peer.answer is not None:
                self._send(protocol.respell(peer.answer, sender='rig'), addr)
            return
        peer.move_on()
        peer.request, peer.answered, peer.answer = value, False, None
        self._dispatcher.run_callback(self._handle, message, addr, peer, value)

    def error_received(self, error: OSError) -> None:
        """A main rig went away (port unreachable): nothing to do but note it."""
        log.debug('%s: socket error: %s', self.name, error)

    # --- on the callback thread ---
    def _handle(self, message: protocol.Message, addr: Any, peer: _Peer, request: list) -> None:
        event, data = message
        try:
            response = self._respond(event, data, self._handlers.get(event))
        except Exception as ex:
            log.error('%s: handler for %s failed: %r', self.name, event.name, ex)
            response = protocol.error_report(ex, event)
            self._send(response, addr)
            response = None
        try:  # the bookkeeping is the network thread's
            self._dispatcher.call_later(0, self._answered, addr, peer, request, response)
        except ClosedError:
            pass

    def _respond(self, event: ExpMessage, data: list, handler: Handler | None) -> bytes | None:
        """Run the handler and build the conventional response; update the status."""
        extra = data[-1] if data else None
        if event is ExpMessage.EXPINFO:
            returned = handler(data) if handler else None
            if self.main_sync and not self._fixed_reference and self.status in (ExpStatus.CONNECTED, ExpStatus.STOPPED):
                subject = extra.get('subject') if isinstance(extra, dict) else None
                self.exp_ref = self._new_reference(subject)  # a new experiment is being prepared
            info = self.info()
            if isinstance(returned, dict):
                info.update(returned)
            return protocol.encode(event, int(self.status), info)
        if event is ExpMessage.EXPSTATUS:
            if handler:
                handler(data)
            return protocol.encode(event, int(self.status))
        if event is ExpMessage.ALYX:
            returned = handler(data) if handler else None
            if data[:2] and data[1]:  # the main rig gave us its token: echo only
                return None
            base_url, token = returned if returned else (None, {})
            return protocol.encode(event, base_url, token)
        returned = handler(data) if handler else None
        if event is ExpMessage.EXPINIT:
            if isinstance(extra, dict) and extra.get('exp_ref'):
                self.exp_ref = protocol.exp_ref_to_dict(extra['exp_ref'])
            self.status = ExpStatus.INITIALIZED
            return protocol.encode(event, int(self.status), returned)
        if event is ExpMessage.EXPSTART:
            if data and data[0]:
                self.exp_ref = protocol.exp_ref_to_dict(data[0])
            self.status = ExpStatus.RUNNING
            return protocol.encode(event, data[0] if data else None, returned)
        if event in (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT):
            self.status = ExpStatus.STOPPED
        return protocol.encode(event, returned)

    def _new_reference(self, subject: str | None) -> dict:
        subject = subject or 'subject'
        today = datetime.date.today()
        sequence = self._sequences.get((subject, today), 0) + 1
        self._sequences[(subject, today)] = sequence
        return {'subject': subject, 'date': today, 'sequence': sequence}

    # --- on the dispatcher thread again ---
    def _answered(self, addr: Any, peer: _Peer, request: Any, response: bytes | None) -> None:
        """The handler for `request` finished: send its answer, unless a newer request overtook it."""
        if peer.request is not request:
            log.debug('%s: answer to an overtaken request not sent', self.name)
            return
        peer.answered, peer.answer, peer.response = True, response, response
        if response is None:  # no answer (a token given) or an error report, sent already
            return
        peer.storm.reset()
        self._send(response, addr)
        if self.resends and peer.takes_resends:  # an iblutil main would take a resend for a new message
            self._later(self.resend_interval, self._resend, addr, peer, 1)

    def _later(self, delay: float, function: Callable, addr: Any, peer: _Peer, *args: Any) -> None:
        """On the network thread: schedule a resend for `peer`, unless the server closed."""
        try:
            peer.timers.append(self._dispatcher.call_later(delay, function, addr, peer, *args))
        except ClosedError:
            pass

    def _resend(self, addr: Any, peer: _Peer, attempt: int) -> None:
        if peer.response is None:
            return
        if attempt > self.resends:
            log.warning('%s: %s never echoed our response %r', self.name, addr, peer.response[:80])
            peer.stop_resending(owed_echo=peer.response)  # its echo may still come, late
            return
        self._send(protocol.respell(peer.response, sender='rig'), addr)
        self._later(self.resend_interval, self._resend, addr, peer, attempt + 1)

    def _send(self, data: bytes, addr: Any) -> None:
        try:
            self._sock.sendto(data, addr)
        except OSError as ex:
            log.debug('%s: send to %s failed: %s', self.name, addr, ex)
