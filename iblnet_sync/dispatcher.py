"""The one network thread: waits in ``select()`` on datagram sockets and hands datagrams on.

The dispatcher never runs user code: endpoints (communicators, rig servers) do their quick
protocol work on this thread (matching echoes, sending echoes) and pass user callbacks to
:meth:`Dispatcher.run_callback`, which runs them in arrival order on one callback thread.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Protocol

from .errors import ClosedError
from .protocol import MAX_DATAGRAM

__all__ = ['Dispatcher', 'Endpoint', 'Timer']
log = logging.getLogger(__name__)


class Endpoint(Protocol):
    """What the dispatcher hands datagrams to."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Handle one datagram (called on the dispatcher thread)."""

    def error_received(self, error: OSError) -> None:
        """Handle a socket error such as ICMP port unreachable (on the dispatcher thread)."""


class Timer:
    """A function scheduled on the dispatcher thread; :meth:`cancel` stops it from running."""

    __slots__ = ('when', 'function', 'args', 'cancelled')

    def __init__(self, when: float, function: Callable, args: tuple):
        self.when, self.function, self.args, self.cancelled = when, function, args, False

    def cancel(self) -> None:
        """Do not run the function (a no-op once it ran); drops what it would have used."""
        self.cancelled = True
        self.function, self.args = None, ()  # it may wait in the heap for a while: keep it small


class Dispatcher:
    """One thread that reads every registered socket, plus one thread for user callbacks.

    Parameters
    ----------
    name : str
        Used in the threads' names.

    Examples
    --------
    >>> with Dispatcher() as dispatcher:
    ...     dispatcher.register(sock, endpoint)
    """

    def __init__(self, name: str = 'iblnet_sync'):
        self.name = name
        self._selector = selectors.DefaultSelector()
        # A socketpair, not a pipe: select() on Windows only accepts sockets.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._pending_ops: list[tuple[Callable, tuple, Future]] = []
        self._timers: list[tuple[float, int, Timer]] = []
        self._wakes_at: float | None = None  # when the network thread's select() returns at the latest
        self._sequence = itertools.count()
        self._callbacks: ThreadPoolExecutor | None = None
        self._callback_thread: int | None = None  # ident of the callback thread, once it ran
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=f'{name}-network', daemon=True)
        self._thread.start()

    # --- public API, callable from any thread ---
    @property
    def is_alive(self) -> bool:
        """bool: True while the network thread runs."""
        return self._thread.is_alive()

    def register(self, sock: socket.socket, endpoint: Endpoint) -> None:
        """Start reading `sock` (made non-blocking) and passing its datagrams to `endpoint`.

        Raises
        ------
        ClosedError
            The dispatcher is closed.
        ValueError, KeyError
            The socket is closed or already registered.
        """
        self._check_open()
        sock.setblocking(False)
        self._run_on_thread(self._selector.register, sock, selectors.EVENT_READ, endpoint).result()

    def unregister(self, sock: socket.socket) -> None:
        """Stop reading `sock`; returns once the network thread no longer uses it."""
        self._run_on_thread(self._forget, sock).result()

    def call_later(self, delay: float, function: Callable, *args: Any) -> Timer:
        """Run ``function(*args)`` on the network thread after `delay` seconds.

        Only for the library's own protocol work (resends, echo deadlines), never user code.
        """
        timer = Timer(time.monotonic() + delay, function, args)
        with self._lock:
            self._check_open()
            heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
            # Wake the thread only if it would otherwise sleep past this timer: on a busy
            # link it is already due to wake for an earlier one, and a wake-up costs a datagram.
            must_wake = self._wakes_at is None or timer.when < self._wakes_at
            if must_wake:
                self._wakes_at = timer.when
        if must_wake and threading.current_thread() is not self._thread:
            self._wake()
        return timer

    def run_callback(self, function: Callable, *args: Any) -> None:
        """Run a user callback on the callback thread, after those queued before it."""
        with self._lock:
            if self._closing:
                log.debug('Dispatcher closed; callback %r dropped', function)
                return
            if self._callbacks is None:
                self._callbacks = ThreadPoolExecutor(1, thread_name_prefix=f'{self.name}-callbacks')
            self._callbacks.submit(self._call_user, function, args)

    def close(self) -> None:
        """Stop both threads and close the selector; idempotent, callable from any thread."""
        with self._lock:
            if self._closing:
                already = True
            else:
                already, self._closing = False, True
                executor, self._callbacks = self._callbacks, None
        if already:
            return
        self._wake()
        on_network_thread = threading.current_thread() is self._thread
        if not on_network_thread:
            self._thread.join()
        if executor is not None:
            on_callback_thread = threading.get_ident() == self._callback_thread
            executor.shutdown(wait=not on_callback_thread, cancel_futures=True)

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- internals ---
    def _check_open(self) -> None:
        if self._closing:
            raise ClosedError(f'Dispatcher {self.name!r} is closed')

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b'\0')
        except (BlockingIOError, OSError):
            pass  # the buffer is full (a wake-up is already pending) or we are closing

    def _run_on_thread(self, function: Callable, *args: Any) -> Future:
        """Run `function` on the network thread (at once when already on it)."""
        done: Future = Future()
        if threading.current_thread() is self._thread:
            done.set_result(function(*args))
            return done
        with self._lock:
            if self._closing:  # the thread is leaving and reads nothing more
                done.set_result(None)
                return done
            self._pending_ops.append((function, args, done))
        self._wake()
        return done

    def _forget(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _call_user(self, function: Callable, args: tuple) -> None:
        self._callback_thread = threading.get_ident()
        try:
            function(*args)
        except Exception:
            log.exception('Callback %r raised', function)

    def _serve(self) -> None:
        while not self._closing:
            try:
                self._serve_once()
            except Exception:  # nothing a network or an endpoint does may stop this thread
                log.exception('Network thread %r: unexpected error; carrying on', self.name)
        self._release_resources()

    def _serve_once(self) -> None:
        """Run pending operations, or wait in select() and hand on what arrives, then due timers."""
        with self._lock:
            ops, self._pending_ops = self._pending_ops, []
            self._wakes_at = self._timers[0][0] if self._timers else None
        if ops:  # they may change the sockets: run them before waiting again
            for function, args, done in ops:
                try:
                    done.set_result(function(*args))
                except Exception as ex:  # e.g. a socket closed before it was registered
                    done.set_exception(ex)
            return
        timeout = None if self._wakes_at is None else max(0.0, self._wakes_at - time.monotonic())
        try:
            ready = self._selector.select(timeout)
        except OSError as ex:  # e.g. a socket closed behind our back
            log.error('select() failed: %s', ex)
            self._drop_closed_sockets()
            return
        for key, _ in ready:
            if key.fileobj is self._wake_reader:
                self._drain_wake()
            else:
                self._read(key.fileobj, key.data)
        self._run_due_timers()

    def _drain_wake(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _read(self, sock: socket.socket, endpoint: Endpoint) -> None:
        """Read one datagram (select() reports the socket again while more are waiting)."""
        try:
            data, addr = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as ex:  # ICMP port unreachable and friends
            self._safely(endpoint.error_received, ex)
            if sock.fileno() < 0:
                self._forget(sock)
            return
        self._safely(endpoint.datagram_received, data, addr)

    @staticmethod
    def _safely(function: Callable, *args: Any) -> None:
        try:
            function(*args)
        except Exception:  # the network thread survives every endpoint bug
            log.exception('Endpoint %r failed handling %r', function, args[:1])

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        if self._wakes_at is None or self._wakes_at > now:  # nothing due (the usual case)
            return
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                timer = heapq.heappop(self._timers)[2]
            function, args = timer.function, timer.args  # read first: another thread may cancel
            if function is not None and not timer.cancelled:
                timer.cancel()
                self._safely(function, *args)

    def _drop_closed_sockets(self) -> None:
        for key in list(self._selector.get_map().values()):
            if key.fileobj is not self._wake_reader and key.fileobj.fileno() < 0:
                self._forget(key.fileobj)

    def _release_resources(self) -> None:
        with self._lock:
            ops, self._pending_ops = self._pending_ops, []
            self._timers.clear()
        for _, _, done in ops:
            done.set_result(None)
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
