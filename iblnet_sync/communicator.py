"""One remote rig: send a message, match its echo, collect the response, echo the rig's messages."""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from iblutil.io.net.base import ExpMessage, ExpStatus, validate_uri

from . import protocol
from .dispatcher import Dispatcher
from .errors import ClosedError, RigError, RigErrorReport, RigRefused, RigTimeout
from .exchange import Exchange, remaining
from .guards import StormGuard

__all__ = ['Communicator', 'DEFAULT_TIMEOUT', 'ECHO_TIMEOUT', 'RESEND_INTERVAL', 'RESENDS']
log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""float: seconds to wait for a rig's response (iblutil's ``Services`` default)."""
ECHO_TIMEOUT = 1.0
"""float: seconds to wait for an echo (iblutil's default)."""
RESEND_INTERVAL = 0.2
"""float: seconds without any datagram from the rig before a message is sent again."""
RESENDS = 4
"""int: how many times a message is sent again before the rig counts as not echoing."""
REPEAT_WINDOW = 5.0
"""float: seconds during which a repeated response is echoed but not delivered again."""
DUPLICATE_WINDOW = 0.01
"""float: seconds during which the very bytes of the last response are a network duplicate."""
_REFUSED = (ConnectionRefusedError, ConnectionResetError)  # Linux, and WSAECONNRESET on Windows

Callback = Callable[..., Any] | Future


def _open_socket(hostname: str, port: int) -> socket.socket:
    """A UDP socket on an ephemeral local port, connected to the rig (so ICMP errors reach us)."""
    family = socket.AF_INET6 if ipaddress.ip_address(hostname).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect((hostname, port))
    except OSError:
        sock.close()
        raise
    return sock


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
    timeout : float
        Default seconds to wait for a response.
    echo_timeout : float
        Seconds to wait for an echo before the rig counts as not echoing.
    resend_interval : float
        Seconds of silence from the rig after which a message is sent again.
    resends : int
        How many times to send again; 0 behaves exactly as iblutil. Resends go only to a rig
        that said it takes them (its EXPINFO answer has ``resends: true``, as RigServer's has):
        an iblutil rig would take a resend for a new message and could handle it twice.
    assume_resends : bool
        Resend to this rig from the first message on, before its EXPINFO answer.

    Examples
    --------
    >>> with Communicator('udp://127.0.0.1:11001', name='cameras') as rig:
    ...     rig.status('CONNECTED')
    [0]
    """

    def __init__(self, server_uri: str, name: str | None = None, *, dispatcher: Dispatcher | None = None,
                 sock: socket.socket | None = None, timeout: float | None = DEFAULT_TIMEOUT,
                 echo_timeout: float = ECHO_TIMEOUT, resend_interval: float = RESEND_INTERVAL,
                 resends: int = RESENDS, assume_resends: bool = False):
        self.server_uri = validate_uri(server_uri)
        self._address = protocol.rig_address(self.server_uri)
        self.name = name or self.server_uri
        if not echo_timeout > 0 or resend_interval <= 0 or resends < 0:
            raise ValueError('echo_timeout and resend_interval must be > 0 and resends >= 0')
        self.timeout, self.echo_timeout = timeout, echo_timeout
        self.resend_interval, self.resends = resend_interval, resends
        self.takes_resends = assume_resends  # learnt from the rig's EXPINFO answer otherwise
        self._sock = sock if sock is not None else _open_socket(self.hostname, self.port)
        self._lock = threading.Lock()  # guards the state below
        self._slot = threading.Lock()  # held for the life of one exchange: one at a time per rig
        self._exchange: Exchange | None = None
        self._late_echo: bytes | None = None
        self._storm_guard = StormGuard()
        self._last_response: tuple[protocol.Message | None, float] = (None, 0.0)
        self._last_response_bytes = b''
        self._callbacks: dict[ExpMessage, list[tuple[Callback, bool]]] = {e: [] for e in ExpMessage}
        self._closed = False
        self._owns_dispatcher = dispatcher is None
        try:
            self._dispatcher = dispatcher or Dispatcher(f'iblnet_sync-{self.name}')
            self._dispatcher.register(self._sock, self)
        except BaseException:
            self._sock.close()
            if self._owns_dispatcher and hasattr(self, '_dispatcher'):
                self._dispatcher.close()
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

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name!r} {self.server_uri}>'

    # --- sending ---
    def send(self, data: bytes | list | tuple) -> None:
        """Send one message without waiting for anything.

        Parameters
        ----------
        data : bytes, list, tuple
            A datagram, or the message elements (event code first) to encode.
        """
        self._check_open()
        self._sock.send(data if isinstance(data, bytes) else protocol.encode(*data))

    def submit(self, datagram: bytes, expect_response: bool = True, timeout: float | None = None) -> Exchange:
        """Send a datagram and return its :class:`Exchange` without waiting for it.

        Waits first (up to `timeout`) for any earlier exchange with this rig to finish: the
        protocol matches echoes by address, so one rig has one exchange at a time.

        Parameters
        ----------
        datagram : bytes
            An encoded message (see :mod:`iblnet_sync.protocol`).
        expect_response : bool
            Whether the rig answers with a message of the same event.
        timeout : float, optional
            How long to wait for the rig to be free; defaults to ``self.timeout``.

        Raises
        ------
        RigTimeout
            The rig stayed busy with another exchange.
        ClosedError
            The communicator is closed.
        """
        self._check_open()
        message = protocol.decode(datagram)
        event = message.event
        timeout = self.timeout if timeout is None else timeout
        if not self._slot.acquire(timeout=-1 if timeout is None else timeout):
            raise RigTimeout(self.name, self.server_uri, event.name,
                             f'still busy with another exchange after {timeout:.3g} s', stage='busy')
        try:
            exchange = Exchange(datagram, message, expect_response, lambda: (self.name, self.server_uri))
            exchange.outcome.add_done_callback(lambda _: self._end_exchange(exchange))  # frees the slot
        except BaseException:
            self._slot.release()
            raise
        try:
            self._start(exchange)
        except BaseException:  # e.g. KeyboardInterrupt: never leave the rig busy
            exchange.interrupt()
            raise
        return exchange

    def _start(self, exchange: Exchange) -> None:
        """Make `exchange` the rig's current one, send it and watch for its echo."""
        with self._lock:
            self._exchange = exchange
            if self._late_echo == exchange.datagram:
                self._late_echo = None  # from now on these bytes are this exchange's echo
            self._storm_guard.reset()
        try:
            self._sock.send(exchange.datagram)
        except _REFUSED as ex:
            exchange.finish(error=self._refused(exchange, ex))
            return
        except OSError as ex:
            exchange.finish(error=exchange.error(RigError, f'send failed: {ex}', stage='send failed'))
            return
        log.debug('%s: sent %r', self.name, exchange.datagram)
        try:
            self._watch_echo(exchange, resent=0)
        except ClosedError:  # the shared dispatcher was closed under us
            exchange.finish(error=exchange.error(RigError, 'network thread closed', stage='closed'))

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
        exchange = self.submit(datagram, expect_response=False, timeout=timeout)
        exchange.result(self.echo_timeout if timeout is None else timeout)
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
        raises, the rig receives an error report ``[0, "Type: message", EVENT]``.
        """
        event = protocol.as_event(event, allow_compound=True)
        if not (callable(callback) or isinstance(callback, Future)):
            raise TypeError('Callback must be callable or a concurrent.futures.Future')
        compound = event not in list(ExpMessage)
        with self._lock:
            for flag in ExpMessage:
                if flag & event:
                    self._callbacks[flag].append((callback, compound))

    def clear_callbacks(self, event: ExpMessage | int | str, callback: Callback | None = None) -> int:
        """Remove `callback` (or every callback) for `event`; pending Futures are cancelled.

        Returns
        -------
        int
            How many registrations were removed.
        """
        event = protocol.as_event(event, allow_compound=True)
        removed = []
        with self._lock:
            for flag in ExpMessage:
                if not flag & event:
                    continue
                entries = self._callbacks[flag]
                keep = [e for e in entries if callback is not None and not _same_callback(e[0], callback)]
                removed += [e[0] for e in entries if e not in keep]
                entries[:] = keep
        for cb in removed:
            if isinstance(cb, Future):
                cb.cancel()
        return len(removed)

    def on_event(self, event: ExpMessage | int | str) -> Future:
        """Return a Future resolved the next time the rig sends `event`.

        Its result is ``(data, addr)``, or ``(data, addr, event)`` when `event` is several
        flags OR-ed together.
        """
        future: Future = Future()
        self.assign_callback(event, future)
        return future

    # --- closing ---
    def close(self) -> None:
        """Fail the exchange in flight, cancel pending Futures and close the socket; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            exchange = self._exchange
            futures = [cb for entries in self._callbacks.values() for cb, _ in entries if isinstance(cb, Future)]
            for entries in self._callbacks.values():
                entries.clear()
        if exchange is not None:
            exchange.finish(error=exchange.error(RigError, 'communicator closed', stage='closed'))
        for future in futures:
            future.cancel()
        self._dispatcher.unregister(self._sock)
        self._sock.close()
        if self._owns_dispatcher:
            self._dispatcher.close()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- called on the dispatcher thread ---
    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Match an echo, or echo and deliver a new message from the rig.

        The protocol has no message ids, so the rules go by order and spelling:

        1. The first datagram equal to what we sent (or to our resend) is its echo.
        2. Our resend spelling, or the echo a response already stood in for, arriving later
           is a late echo of ours: dropped, never echoed back.
        3. Anything else that decodes is the rig's message: echoed at once (unless the storm
           guard or the duplicate rule says no), then it answers the exchange in flight if
           it has its event, else goes to the callbacks.
        4. The previous answer again is a resent or late copy of it: echoed (the rig awaits
           that), not delivered twice, and not taken as the answer to a different request
           (before our echo, or an EXPSTART answer with the previous reference).
        """
        if isinstance(addr, tuple) and addr and addr[0] != self.hostname:
            log.debug('%s: ignored %d bytes from %s, not the rig', self.name, len(data), addr)
            return
        with self._lock:
            exchange = self._exchange
            is_echo = exchange is not None and not exchange.echoed and (
                data == exchange.datagram or data == protocol.respell(exchange.datagram))
            late_echo = not is_echo and (protocol.is_resend(data) or data == self._late_echo)
            if late_echo and data == self._late_echo:
                self._late_echo = None  # there was one echo to come, and this is it
        if is_echo:
            exchange.heard = True
            exchange.confirm()  # the first datagram equal to what we sent is its echo (outside the lock:
            return              # confirming may end the exchange, whose callback takes the lock)
        if late_echo:
            log.debug('%s: late echo of ours dropped', self.name)
            return
        try:
            message = protocol.decode(data)
        except protocol.DecodeError as ex:
            log.debug('%s: dropped datagram %r: %s', self.name, data[:80], ex)
            return
        if message.event == protocol.ERROR_CODE:
            self._error_report(message, exchange)
            return
        if not self.takes_resends and protocol.announces_resends(message):
            self.takes_resends = True
        now = time.monotonic()
        repeated = message == self._last_response[0] and now - self._last_response[1] < REPEAT_WINDOW
        awaited = exchange is not None and exchange.event == message.event and not exchange.done
        if awaited and repeated and not exchange.echoed:
            awaited = False  # the previous answer again before our echo: a resent or late copy
        if awaited and repeated and message.event is ExpMessage.EXPSTART and (
                message.data[:1] != exchange.request_data[:1]):
            awaited = False  # the previous start's answer again (EXPSTART answers carry the reference)
        just_now = now - self._last_response[1] < DUPLICATE_WINDOW
        if repeated and not awaited and data == self._last_response_bytes and just_now:
            # The very bytes again at once: a network duplicate, or the late echo of a request
            # that had the same bytes. Echoing it would look like a new request to the rig.
            log.debug('%s: duplicate of the last response dropped', self.name)
            return
        if not self._storm_guard.allow(data):
            return
        try:
            self._sock.send(data)  # echo first: an iblutil rig waits about 1 s for it
        except OSError as ex:
            log.debug('%s: echo failed: %s', self.name, ex)
        if exchange is not None and not repeated:
            exchange.heard = True  # the rig is answering: resending now could disturb it
        if awaited and exchange.expect_response:
            self._last_response, self._last_response_bytes = (message, now), data
            self._deliver(message, addr)
            exchange.respond(message.data)  # last: the caller wakes while we go back to select()
            return
        if awaited:
            exchange.confirm(implied=True)  # the rig's message for this event implies it received ours
        elif repeated:
            log.debug('%s: repeated response echoed, not delivered again', self.name)
            return
        self._deliver(message, addr)

    def error_received(self, error: OSError) -> None:
        """A socket error: port unreachable fails the exchange in flight as refused."""
        with self._lock:
            exchange = self._exchange
        if exchange is None:
            log.debug('%s: socket error with no exchange in flight: %s', self.name, error)
        elif isinstance(error, _REFUSED):
            exchange.finish(error=self._refused(exchange, error))
        else:
            exchange.finish(error=exchange.error(RigError, f'socket error: {error}', stage='socket error'))

    # --- internals ---
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f'{self!r} is closed')

    def _refused(self, exchange: Exchange, error: OSError) -> RigError:
        return exchange.error(RigRefused, f'nothing is listening there (port unreachable: {error})')

    def _end_exchange(self, exchange: Exchange) -> None:
        with self._lock:
            if self._exchange is exchange:
                self._exchange = None
            # An echo that has not come yet (a response stood in for it, or we gave up) is
            # ours if it comes late, not a message of the rig's to echo back and handle.
            self._late_echo = exchange.datagram if exchange.echo_implied or not exchange.echoed else None
        self._slot.release()

    def _watch_echo(self, exchange: Exchange, resent: int) -> None:
        """Schedule the next resend, or the echo deadline when no resend is left (or allowed)."""
        may_resend = self.takes_resends and resent < self.resends
        if may_resend and (resent + 1) * self.resend_interval < self.echo_timeout:
            exchange.timer = self._dispatcher.call_later(self.resend_interval, self._resend, exchange, resent + 1)
        else:
            delay = self.echo_timeout - resent * self.resend_interval
            exchange.timer = self._dispatcher.call_later(delay, self._echo_overdue, exchange)
        if exchange.done:  # it ended while the timer was being made: finish() could not cancel it
            exchange.timer.cancel()

    def _echo_overdue(self, exchange: Exchange) -> None:
        if not exchange.echoed:
            exchange.give_up()

    def _resend(self, exchange: Exchange, attempt: int) -> None:
        """Send again in another JSON spelling, unless anything came back from the rig."""
        if exchange.done or exchange.echoed:
            return
        if not exchange.heard and not self._closed:
            spelling = protocol.respell(exchange.datagram)
            log.debug('%s: no echo after %.3g s, resend %d', self.name, attempt * self.resend_interval, attempt)
            try:
                self._sock.send(spelling)
            except _REFUSED as ex:
                exchange.finish(error=self._refused(exchange, ex))
                return
            except OSError as ex:
                log.debug('%s: resend failed: %s', self.name, ex)
        self._watch_echo(exchange, attempt)

    def _error_report(self, message: protocol.Message, exchange: Exchange | None) -> None:
        text, event = (message.data + [None])[:2]
        log.warning('%s (%s) reported an error for %s: %s', self.name, self.server_uri, event, text)
        if exchange is not None and (event is None or event == exchange.event):
            exchange.finish(error=exchange.error(RigErrorReport, str(text)))

    def _deliver(self, message: protocol.Message, addr: Any) -> None:
        if not self._callbacks[message.event]:  # the usual case: nobody listens for it
            return
        with self._lock:
            entries = self._callbacks[message.event]
            once = [e for e in entries if isinstance(e[0], Future)]
            if once:
                entries[:] = [e for e in entries if not isinstance(e[0], Future)]
            entries = list(entries)
        for callback, compound in once + entries:
            args = (message.data, addr, message.event) if compound else (message.data, addr)
            self._dispatcher.run_callback(self._run_callback, callback, args, message.event)

    def _run_callback(self, callback: Callback, args: tuple, event: ExpMessage) -> None:
        """On the callback thread: resolve a Future or call a function; report its failure."""
        if isinstance(callback, Future):
            if not callback.done():
                callback.set_result(args)
            return
        try:
            callback(*args)
        except Exception as ex:
            log.error('%s: callback %r for %s raised %r', self.name, callback, event.name, ex)
            if not self._closed:
                try:
                    self._sock.send(protocol.error_report(ex, event))
                except OSError:
                    pass


def _same_callback(registered: Callback, callback: Callback) -> bool:
    """True if `registered` is `callback` or a wrapper of it (``__wrapped__``)."""
    return registered is callback or getattr(registered, '__wrapped__', None) is callback
