"""One remote rig, main side: a thin adapter between a UDP socket and the protocol core.

The rules (echoes, resends, duplicates, late answers, storms) are all in :mod:`iblnet_sync.core`;
the callbacks are kept and run by :mod:`iblnet_sync.callbacks`; this module owns the socket, the
dispatcher registration and the callers' Futures. Callers to one rig are served one at a time.
"""
from __future__ import annotations

import logging
import queue
import secrets
import socket
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable

from iblutil.io.net.base import ExpMessage, ExpStatus

from . import core, protocol
from .callbacks import Abandoned, Callback, CallbackRegistry, cancel
from .dispatcher import Alarm, Dispatcher, weak_call
from .errors import ClosedError, RigClosed, RigError, RigErrorReport, RigRefused, RigTimeout, Stage
from .exchange import Exchange, remaining
from .logtext import datagram_text
from .options import ECHO_TIMEOUT, PAUSE, RESEND_INTERVAL, RESENDS, Options, check_seconds
from .sockets import REFUSED, close_all, connected_socket

__all__ = ['Communicator', 'DEFAULT_TIMEOUT', 'ECHO_TIMEOUT', 'PAUSE', 'RESEND_INTERVAL', 'RESENDS']
log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""float: seconds to wait for a rig's response (iblutil's ``Services`` default)."""
_ERRORS: dict[str, type[RigError]] = {  # the failure's stage -> the error raised (RigError for the others)
    Stage.NO_ECHO: RigTimeout, Stage.NO_RESPONSE: RigTimeout, Stage.ERROR_REPORT: RigErrorReport,
    Stage.REFUSED: RigRefused, Stage.CLOSED: RigClosed}


class Communicator:
    """The main rig's end of the conversation with one auxiliary rig, in blocking style.

    Parameters
    ----------
    server_uri : str
        The rig's address: ``udp://host:port``, ``host:port`` or ``host`` (port 11001).
    name : str, optional
        A label used in logs and errors; defaults to the URI.
    dispatcher : Dispatcher, optional
        The network thread to use; by default the communicator starts and owns one.
    sock : socket.socket, optional
        A datagram socket already connected to the rig (tests pass one end of a socketpair).
    timeout : float, None
        Default seconds to wait for a response; None waits for ever.
    echo_timeout : float
        Seconds to wait for an echo after the last send.
    resend_interval : float
        Seconds without an echo after which a request is sent again.
    resends : int
        How many times a request may be sent again; 0 behaves exactly as iblutil. Before the
        rig is known to run iblnet_sync, a request is sent again only while nothing at all came
        back from the rig (see :mod:`iblnet_sync.core`).
    assume_resends : bool
        Kept for compatibility; has no effect (resending is always safe now).
    pause : float
        Seconds from the end of one exchange to the next request, for a rig not known to run
        iblnet_sync: a listener that re-arms late (iblrig's video program) would lose a request
        sent at once. 0 sends at once.

    Examples
    --------
    >>> with Communicator('udp://127.0.0.1:11001', name='cameras') as rig:
    ...     rig.status('CONNECTED')
    [0]
    """

    def __init__(self, server_uri: str, name: str | None = None, *, dispatcher: Dispatcher | None = None,
                 sock: socket.socket | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 echo_timeout: float = ECHO_TIMEOUT, resend_interval: float = RESEND_INTERVAL,
                 resends: int = RESENDS, assume_resends: bool = False, pause: float = PAUSE):
        if timeout is not None:
            check_seconds('timeout', timeout)
        self._options = options = Options(echo_timeout, resend_interval, resends, pause)
        self._address = protocol.rig_address(server_uri)
        self.server_uri = f'udp://{self._address[0]}:{self._address[1]}'
        self.name = name or self.server_uri
        self.timeout, self.echo_timeout = timeout, echo_timeout
        self._conversation = core.MainConversation(secrets.token_hex(3), options)
        self._lock = threading.Lock()
        self._waiting: list[queue.SimpleQueue] = []  # callers waiting for the rig to be free: woken at its end
        self._exchange: Exchange | None = None
        self._cost = 0  # bytes of the datagram being received
        self._closed = False
        held: list = []  # what close() or the finalizer closes, also when this constructor is interrupted
        self._finalizer = weakref.finalize(self, close_all, held)
        try:
            if sock is not None:
                held.append(sock)
            self._sock = sock or connected_socket(*self._address, held)
            if dispatcher is None:
                dispatcher = Dispatcher(f'iblnet_sync-{self.name}', held)
            self._dispatcher = dispatcher
            self._callbacks = CallbackRegistry(dispatcher, weak_call(self._send), name=self.name,
                                               uri=self.server_uri, addr=self._address, logger=log)
            held.append(Abandoned(self._callbacks))  # (dropped without close(): its Futures are cancelled)
            self._alarm = Alarm(dispatcher, weak_call(self._on_timer))
            self._dispatcher.register(self._sock, self)
        except BaseException:
            self._finalizer()
            raise

    # --- addresses ---
    @property
    def hostname(self) -> str:
        """str: the rig's IP address."""
        return self._address[0]

    @property
    def port(self) -> int:
        """int: the rig's port."""
        return self._address[1]

    @property
    def local_address(self) -> tuple:
        """tuple: this side's (host, port), e.g. for a firewall rule or a packet capture."""
        return self._sock.getsockname()

    @property
    def is_connected(self) -> bool:
        """bool: True until ``close()``."""
        return not self._closed

    @property
    def peer_is_iblnet_sync(self) -> bool:
        """bool: the rig said it runs iblnet_sync: messages to it are tagged (see :mod:`iblnet_sync.core`)."""
        return self._conversation.tagged

    takes_resends = peer_is_iblnet_sync  # the name of earlier versions

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name!r} {self.server_uri}>'

    # --- sending ---
    def send(self, data: bytes | list | tuple) -> None:
        """Send one raw datagram, outside the protocol: no echo is matched, so the rig's echo comes
        back as a message of its own (echoed, and given to the callbacks).

        Parameters
        ----------
        data : bytes, list, tuple
            A datagram, or the message elements (event code first) to encode.
        """
        self._check_open()
        self._sock.send(data if isinstance(data, bytes) else protocol.encode(*data))

    def submit(self, datagram: bytes, expect_response: bool = True, timeout: float | None = None) -> Exchange:
        """Send a datagram and return its :class:`Exchange` without waiting for the answer.

        Waits first (up to `timeout`) for any earlier exchange with this rig to end: one rig
        has one exchange at a time.

        Parameters
        ----------
        datagram : bytes
            An encoded message (see :mod:`iblnet_sync.protocol`).
        expect_response : bool
            Whether the rig answers with a message of the same event.
        timeout : float, optional
            Seconds for the whole exchange, waiting included; defaults to ``self.timeout``.

        Raises
        ------
        RigTimeout
            The rig stayed busy with another exchange (stage 'busy').
        ClosedError
            The communicator is closed, or was closed while waiting.
        """
        event = protocol.decode(datagram).event
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        exchange = Exchange(datagram, event, self._end)
        while True:  # (a C lock and C queues only: an interrupt anywhere here leaves none of them held)
            with self._lock:
                self._check_open()
                if self._exchange is None:
                    exchange.sent_at = time.monotonic()  # (not counting the wait for the rig to be free)
                    try:
                        self._exchange = exchange
                        sends = self._conversation.request(datagram, time.monotonic(), expect_response, deadline)
                        self._arm_timer()
                    except BaseException:  # e.g. KeyboardInterrupt: never leave the rig busy
                        events = self._conversation.abort(Stage.INTERRUPTED, 'interrupted while sending')
                        if not events and self._exchange is exchange:  # interrupted before the core heard of it
                            events = [core.Failed(0, Stage.INTERRUPTED, 'interrupted before sending')]
                        for ended, result, error in self._apply(events):  # (the lock is held: dropped
                            ended.settle(result, error)                   # Futures wait for the next _settle)
                        raise
                    break
                ticket: queue.SimpleQueue = queue.SimpleQueue()
                self._waiting.append(ticket)
            try:
                ticket.get(timeout=remaining(deadline))  # until the exchange in progress ends, or close()
            except queue.Empty:
                raise RigTimeout(self.name, self.server_uri, event.name,
                                 f'still busy with another exchange after {timeout:.3g} s', stage=Stage.BUSY) from None
            finally:
                with self._lock:
                    if ticket in self._waiting:
                        self._waiting.remove(ticket)
        try:  # sent once the lock is free: the network thread must not wait for it when the echo comes
            for send in sends:  # (a request is only ever sends)
                if isinstance(send, core.Send) and (refused := self._send(send.datagram)) is not None:
                    self._end(exchange, Stage.REFUSED, refused)
        except BaseException:  # e.g. KeyboardInterrupt
            self._end(exchange, Stage.INTERRUPTED)
            raise
        return exchange

    def confirmed_send(self, data: bytes | list | tuple, timeout: float | None = None) -> float:
        """Send a message and block until the rig echoes it.

        Returns
        -------
        float
            The echo round trip in seconds.

        Raises
        ------
        RigError
            No echo (``RigTimeout``), refused or an error report.
        """
        datagram = data if isinstance(data, bytes) else protocol.encode(*data)
        timeout = self.echo_timeout if timeout is None else timeout
        exchange = self.submit(datagram, expect_response=False, timeout=timeout)
        exchange.result(timeout)
        assert exchange.echo_at is not None
        return exchange.echo_at - exchange.sent_at

    def request(self, datagram: bytes, timeout: float | None = None) -> list:
        """Send a datagram and block until the rig's response; return its data.

        Raises
        ------
        RigError
            The rig failed (``RigTimeout`` is also a ``TimeoutError``).
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        exchange = self.submit(datagram, timeout=timeout)
        return exchange.result(remaining(deadline))

    # --- the protocol's calls, each returning the rig's response data ---
    def init(self, data: Any = None, timeout: float | None = None) -> list:
        """Send EXPINIT and return the rig's response data."""
        return self.request(protocol.init_message(data), timeout)

    def start(self, exp_ref: str | dict | None, data: Any = None, timeout: float | None = None) -> list:
        """Send EXPSTART with the experiment reference and return the rig's response data."""
        return self.request(protocol.start_message(exp_ref, data), timeout)

    def stop(self, data: Any = None, immediately: bool = False, timeout: float | None = None) -> list:
        """Send EXPEND (EXPINTERRUPT when `immediately`) and return the rig's response data."""
        return self.request(protocol.stop_message(data, immediately), timeout)

    def cleanup(self, data: Any = None, timeout: float | None = None) -> list:
        """Send EXPCLEANUP and return the rig's response data."""
        return self.request(protocol.cleanup_message(data), timeout)

    def status(self, status: ExpStatus | int | str, timeout: float | None = None) -> list:
        """Send EXPSTATUS and return the rig's response data, ``[STATUS]``."""
        return self.request(protocol.status_message(status), timeout)

    def info(self, status: ExpStatus | int | str, data: Any = None, timeout: float | None = None) -> list:
        """Send EXPINFO and return the rig's response data, ``[STATUS, INFO]``."""
        return self.request(protocol.info_message(status, data), timeout)

    def alyx(self, alyx: Any = None, timeout: float | None = None) -> list | None:
        """Send this rig's Alyx token, or ask for the rig's when `alyx` is not logged in.

        Returns
        -------
        list, None
            ``[BASE_URL, {USER: TOKEN}]`` when a token was requested, else None.
        """
        datagram = protocol.alyx_message(alyx)
        if protocol.gives_token(datagram):  # the rig only echoes
            self.confirmed_send(datagram, timeout)
            return None
        return self.request(datagram, timeout)

    # --- callbacks ---
    def assign_callback(self, event: ExpMessage | int | str, callback: Callback) -> None:
        """Call `callback` each time the rig sends `event` (a Future is resolved once).

        The callback runs on the callback thread as ``callback(data, addr)``, or as
        ``callback(data, addr, event)`` when `event` is several flags OR-ed together. If it
        raises, the rig receives an error report ``[0, "Type: message", EVENT]``. Event 0
        receives the rig's error reports that no request of ours was waiting for,
        ``([text, EVENT], addr)``.

        Raises
        ------
        ClosedError
            The communicator is closed.
        """
        self._callbacks.add(event, callback)

    def clear_callbacks(self, event: ExpMessage | int | str, callback: Callback | None = None) -> int:
        """Remove `callback` (or every callback) for `event`; pending Futures are cancelled.

        Returns
        -------
        int
            How many registrations were removed.
        """
        return self._callbacks.remove(event, callback)

    def on_event(self, event: ExpMessage | int | str) -> Future:
        """Return a Future resolved the next time the rig sends `event`.

        Its result is ``(data, addr)``, or ``(data, addr, event)`` when `event` is several
        flags OR-ed together. It is cancelled (with a warning) if its message finds the callback queue
        full, and by :meth:`close`; done-callbacks added to it then run on the thread that
        cancels it (the network thread for a dropped message, with no lock held): keep them short.
        """
        future: Future = Future()
        self.assign_callback(event, future)
        return future

    # --- closing ---
    def close(self) -> None:
        """Fail the exchange in flight and every caller waiting for the rig with :class:`ClosedError`,
        cancel pending Futures and close the socket; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            settle = self._apply(self._conversation.abort(Stage.CLOSED, 'the communicator was closed'))
            self._wake_waiting()
            futures = self._callbacks.close(f'{self!r} is closed')  # (cancelled below, with no lock held)
            self._alarm.cancel()
        try:
            self._settle(settle)
        finally:
            cancel(futures)
            try:
                self._dispatcher.unregister(self._sock)
            finally:
                self._finalizer()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- called on the dispatcher thread ---
    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Hand a datagram from the rig to the protocol core (datagrams from other hosts are dropped)."""
        if isinstance(addr, tuple) and addr and addr[0] != self.hostname:
            log.debug('%s: ignored %d bytes from %s, not the rig', self.name, len(data), addr)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s: received %s', self.name, datagram_text(data))
        self._cost = len(data)  # what a message for the callbacks costs their queue (see _apply)
        self._feed(lambda now: self._conversation.receive(data, now))

    def error_received(self, error: OSError) -> None:
        """A socket error: port unreachable fails the exchange in flight as refused."""
        if isinstance(error, REFUSED):
            detail = f'nothing is listening there (port unreachable: {error})'
            self._feed(lambda now: self._conversation.abort(Stage.REFUSED, detail))
        else:
            self._feed(lambda now: self._conversation.abort(Stage.SOCKET_ERROR, f'socket error: {error}'))

    def _on_timer(self) -> None:
        with self._lock:
            self._alarm.fired()
        self._feed(self._conversation.tick)

    # --- internals ---
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f'{self!r} is closed')

    def _feed(self, step: Callable[[float], list[core.Event]]) -> None:
        """Give the core one input and carry out what it says; Futures are settled outside the lock."""
        with self._lock:
            settle = self._apply(step(time.monotonic()))
        self._settle(settle)

    def _end(self, exchange: Exchange, why: str, detail: str = 'interrupted while waiting') -> None:
        """End `exchange` if it is still running: its caller's deadline passed ('timeout'), the
        caller was interrupted ('interrupted'), or the rig refused its request ('refused')."""
        def step(now: float) -> list[core.Event]:
            if self._exchange is not exchange:
                return []
            if why == 'timeout':
                return self._conversation.give_up(now)
            return self._conversation.abort(why, detail, now)
        self._feed(step)

    def _apply(self, events: list[core.Event]) -> list[tuple[Exchange, Any, BaseException | None]]:
        """Carry out the core's events (with the lock held); returns the outcomes to settle."""
        settle: list[tuple[Exchange, Any, BaseException | None]] = []
        exchange = self._exchange
        for event in events:
            if isinstance(event, core.Send):
                refused = self._send(event.datagram)
                if refused is not None:
                    settle += self._apply(self._conversation.abort(Stage.REFUSED, refused))
            elif isinstance(event, core.Echoed) and exchange is not None:
                exchange.echo_at = event.at
            elif isinstance(event, core.Answered) and exchange is not None:
                if event.data is not None:  # as in iblutil, an answer also reaches the event's callbacks
                    exchange.response_at = event.at
                    self._callbacks.deliver(protocol.Message(exchange.event, event.data), self._cost)
                settle.append((exchange, event.data, None))
                self._exchange = exchange = None
            elif isinstance(event, core.Failed) and exchange is not None:
                if event.stage == Stage.ERROR_REPORT:  # raised to the caller, and given to event 0's callbacks
                    self._callbacks.deliver(protocol.Message(ExpMessage(0), [event.detail, int(exchange.event)]),
                                            self._cost, log_report=False)
                settle.append((exchange, None, self._error(exchange, event)))
                self._exchange = exchange = None
            elif isinstance(event, core.Delivered):
                self._callbacks.deliver(event.message, self._cost)
        if self._exchange is None:
            self._wake_waiting()
        self._arm_timer()
        return settle

    def _wake_waiting(self) -> None:
        """The rig is free (or closed): every caller waiting for it looks again (with the lock held)."""
        for ticket in self._waiting:
            ticket.put(None)
        self._waiting.clear()

    def _settle(self, settle: list[tuple[Exchange, Any, BaseException | None]]) -> None:
        """Settle the exchanges that ended, and cancel the on_event Futures whose message was dropped (no lock
        may be held: their done-callbacks run here)."""
        for exchange, result, error in settle:
            exchange.settle(result, error)
        self._callbacks.cancel_dropped()

    def _send(self, datagram: bytes) -> str | None:
        """Send; return why if the rig refused it."""
        if log.isEnabledFor(logging.DEBUG):  # (before sending: the answer's line may not come first)
            log.debug('%s: sent %s', self.name, datagram_text(datagram))
        try:
            self._sock.send(datagram)
        except REFUSED as ex:
            return f'nothing is listening there (port unreachable: {ex})'
        except OSError as ex:
            log.debug('%s: send failed: %s', self.name, ex)
        return None

    def _arm_timer(self) -> None:
        """Make sure the core's timer input comes by its next wake-up."""
        self._alarm.set(None if self._closed else self._conversation.wakeup)

    def _error(self, exchange: Exchange, failed: core.Failed) -> RigError:
        waited = time.monotonic() - exchange.sent_at
        detail = failed.detail
        if failed.stage in (Stage.NO_ECHO, Stage.NO_RESPONSE):
            said = 'echoed but no response' if failed.stage == Stage.NO_RESPONSE else 'no echo'
            detail = f'{said} within {waited:.3g} s'
        error_type = _ERRORS.get(failed.stage, RigError)
        return error_type(self.name, self.server_uri, exchange.event.name, detail, stage=failed.stage)
