"""The one network thread: waits in ``select()`` on datagram sockets and hands datagrams on.

The dispatcher never runs user code: endpoints (communicators, rig servers) do their quick
protocol work on this thread (matching echoes, sending echoes) and pass user callbacks to
:meth:`Dispatcher.run_callback`, which runs them in arrival order on one callback thread.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import queue
import selectors
import socket
import threading
import time
import weakref
from typing import Any, Callable, Protocol

from .errors import ClosedError
from .protocol import MAX_DATAGRAM

__all__ = ['Alarm', 'Dispatcher', 'Endpoint', 'Timer', 'weak_call', 'CALLBACK_QUEUE', 'CALLBACK_BYTES']
log = logging.getLogger(__name__)
CALLBACK_QUEUE = 1000
"""int: user callbacks waiting to run at most; more are dropped (with a warning at most every 5 s)."""
CALLBACK_BYTES = 2 ** 21
"""int: bytes of datagrams (2 MiB) that callbacks waiting in the queue may carry at most."""
THREAD_START = 1.0
"""float: seconds a constructor interrupted in ``Thread.start()`` waits to learn if the thread runs."""
COMPACT_TIMERS = 256
"""int: timers in the heap past which the cancelled ones are dropped (then twice the live ones)."""
_WARN_EVERY = 5.0


def weak_call(method: Callable[..., Any], *args: Any) -> Callable[..., None]:
    """A callable that runs bound ``method(*args, *more)`` with the arguments it is given (`more`) if
    its object still exists (timers and helpers must not keep it alive)."""
    ref = weakref.WeakMethod(method)  # type: ignore[arg-type]

    def call(*more: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(*args, *more)
    return call


class _CallbackThread:
    """One thread running user callbacks in arrival order from a bounded queue."""

    def __init__(self, name: str):
        self._queue: queue.Queue = queue.Queue(CALLBACK_QUEUE)
        self._dropped, self._warned_at = 0, -_WARN_EVERY
        self._bytes = 0  # the cost of what waits in the queue
        self._cost_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, function: Callable, args: tuple, cost: int = 0) -> bool:
        try:
            with self._cost_lock:
                if self._bytes + cost > CALLBACK_BYTES:
                    raise queue.Full
                self._queue.put_nowait((function, args, cost))
                self._bytes += cost
            return True
        except queue.Full:
            self._dropped += 1
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:
                log.warning('Callbacks are too slow for the messages arriving: %d dropped', self._dropped)
                self._warned_at, self._dropped = now, 0
            return False

    def stop(self, wait: bool) -> None:
        while True:  # the stop mark must get in, even if the queue is full
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
        if wait:
            self.thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            function, args, cost = item
            with self._cost_lock:
                self._bytes -= cost
            try:
                function(*args)
            except Exception:
                log.exception('Callback %r raised', function)
            item = function = args = None  # hold nothing while waiting: owners must be reclaimable


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
        self.when, self.args, self.cancelled = when, args, False
        self.function: Callable | None = function

    def cancel(self) -> None:
        """Do not run the function (a no-op once it ran); drops what it would have used."""
        self.cancelled = True
        self.function, self.args = None, ()  # it may wait in the heap for a while: keep it small


class Alarm:
    """One owner's timer on a dispatcher, kept no later than the owner needs it.

    :meth:`set` keeps a timer that is due earlier than asked: when it fires, the owner finds
    nothing due and sets it again. So most calls set no timer at all, and no cancelled timer waits
    in the heap for seconds.
    """

    __slots__ = ('_dispatcher', '_callback', '_timer', 'when')

    def __init__(self, dispatcher: Dispatcher, callback: Callable[[], None]):
        self._dispatcher, self._callback = dispatcher, callback
        self._timer: Timer | None = None
        self.when: float | None = None

    def set(self, when: float | None) -> None:
        """Make sure the callback runs by ``time.monotonic()`` reading `when` (None: not needed)."""
        if when is None or (self.when is not None and self.when <= when):
            return
        self.cancel()
        try:
            self._timer = self._dispatcher.call_later(max(0.0, when - time.monotonic()), self._callback)
            self.when = when
        except ClosedError:  # the dispatcher closed under its owner, who is closing too
            pass

    def fired(self) -> None:
        """The callback is running: the next :meth:`set` makes a new timer."""
        self._timer, self.when = None, None

    def cancel(self) -> None:
        """Drop the timer, if any."""
        if self._timer is not None:
            self._timer.cancel()
        self.fired()


class Dispatcher:
    """One thread that reads every registered socket, plus one thread for user callbacks.

    Parameters
    ----------
    name : str
        Used in the threads' names.
    held : list, optional
        Its owner's list of what to close: the dispatcher puts itself there before it makes
        anything, so that an interrupt at any point of its making leaves nothing unowned.

    Examples
    --------
    >>> with Dispatcher() as dispatcher:
    ...     dispatcher.register(sock, endpoint)
    """

    def __init__(self, name: str = 'iblnet_sync', held: list | None = None):
        self.name = name
        self._lock = threading.Lock()
        self._closing = False
        self._pending_ops: list[tuple[Callable, tuple, queue.SimpleQueue]] = []
        self._timers: list[tuple[float, int, Timer]] = []
        self._compact_at = COMPACT_TIMERS  # heap size at which cancelled timers are dropped
        self._wakes_at: float | None = None  # when the network thread's select() returns at the latest
        self._sequence = itertools.count()
        self._callbacks: _CallbackThread | None = None
        self._resources: list[Any] = []  # closed by _release_resources, whatever was made before a failure
        self._began = threading.Event()  # set by the network thread as it starts
        if held is not None:  # its owner holds it before it holds anything: an interrupt cannot orphan it
            held.append(self)
        try:
            # each resource is held in the line that makes it: an interrupt anywhere leaves none behind
            self._resources.append(selector := selectors.DefaultSelector())
            self._selector = selector
            # The wake-up: a loopback UDP socket connected to itself (select() on Windows only takes
            # sockets; and socket.socketpair() has a moment where an interrupt orphans a descriptor).
            self._resources.append(waker := socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            waker.bind(('127.0.0.1', 0))
            waker.connect(waker.getsockname())
            waker.setblocking(False)
            self._waker = waker
            self._selector.register(waker, selectors.EVENT_READ)
            self._thread = threading.Thread(target=self._serve, name=f'{name}-network', daemon=True)
            self._thread.start()
        except BaseException:  # e.g. KeyboardInterrupt: leave nothing open
            # An interrupt inside Thread.start() may come after the thread was launched: then it runs,
            # sees _closing and releases everything itself; else nobody runs, and we release here.
            if hasattr(self, '_thread') and self._began.wait(THREAD_START):
                self.close()
            else:
                self._release_resources()
            raise

    # --- public API, callable from any thread ---
    @property
    def is_alive(self) -> bool:
        """bool: True while the network thread runs."""
        return self._thread.is_alive()

    def register(self, sock: socket.socket, endpoint: Endpoint) -> None:
        """Start reading `sock` (made non-blocking) and passing its datagrams to `endpoint`.

        The dispatcher holds the endpoint weakly: an endpoint dropped without being closed is
        reclaimed, and its socket is no longer read.

        Raises
        ------
        ClosedError
            The dispatcher is closed.
        ValueError, KeyError
            The socket is closed or already registered.
        """
        self._check_open()
        sock.setblocking(False)
        self._run_on_thread(self._selector.register, sock, selectors.EVENT_READ, weakref.ref(endpoint))

    def unregister(self, sock: socket.socket) -> None:
        """Stop reading `sock`; returns once the network thread no longer uses it."""
        self._run_on_thread(self._forget, sock)

    def call_later(self, delay: float, function: Callable, *args: Any) -> Timer:
        """Run ``function(*args)`` on the network thread after `delay` seconds.

        Only for the library's own protocol work (resends, echo deadlines), never user code.
        """
        timer = Timer(time.monotonic() + delay, function, args)
        with self._lock:
            self._check_open()
            heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
            if len(self._timers) > self._compact_at:  # cancelled timers wait in the heap until due: drop them
                self._timers = [entry for entry in self._timers if not entry[2].cancelled]
                heapq.heapify(self._timers)
                self._compact_at = max(COMPACT_TIMERS, 2 * len(self._timers))
            # Wake the thread only if it would otherwise sleep past this timer: on a busy
            # link it is already due to wake for an earlier one, and a wake-up costs a datagram.
            must_wake = self._wakes_at is None or timer.when < self._wakes_at
            if must_wake:
                self._wakes_at = timer.when
        if must_wake and threading.current_thread() is not self._thread:
            self._wake()
        return timer

    def run_callback(self, function: Callable, *args: Any, cost: int = 0) -> bool:
        """Run a user callback on the callback thread, after those queued before it.

        `cost` is the size in bytes of the datagram it carries: the queue holds at most
        :data:`CALLBACK_QUEUE` callbacks and :data:`CALLBACK_BYTES` of datagrams.
        Returns False when it was dropped: the dispatcher is closed, or the queue is full.
        """
        with self._lock:
            if self._closing:
                log.debug('Dispatcher closed; callback %r dropped', function)
                return False
            if self._callbacks is None:
                self._callbacks = _CallbackThread(f'{self.name}-callbacks')
            return self._callbacks.submit(function, args, cost)

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
        if not hasattr(self, '_thread'):  # its making was interrupted before the thread: nothing runs
            self._release_resources()
            return
        self._wake()
        on_network_thread = threading.current_thread() is self._thread
        if not on_network_thread:
            self._thread.join()
        if executor is not None:
            executor.stop(wait=threading.current_thread() is not executor.thread)

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
            self._waker.send(b'\0')
        except (BlockingIOError, OSError):
            pass  # the buffer is full (a wake-up is already pending) or we are closing

    def _run_on_thread(self, function: Callable, *args: Any) -> Any:
        """Run `function` on the network thread (at once when already on it) and return its result.

        The result comes back through a ``queue.SimpleQueue`` (implemented in C): an interrupted
        caller cannot leave it locked, so the network thread never waits on the caller.
        """
        if threading.current_thread() is self._thread:
            return function(*args)
        done: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            if self._closing:  # the thread is leaving and reads nothing more
                return None
            self._pending_ops.append((function, args, done))
        self._wake()
        error, result = done.get()
        if error is not None:
            raise error
        return result

    def _forget(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _serve(self) -> None:
        self._began.set()
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
                    done.put((None, function(*args)))
                except Exception as ex:  # e.g. a socket closed before it was registered
                    done.put((ex, None))
            return
        timeout = None if self._wakes_at is None else max(0.0, self._wakes_at - time.monotonic())
        try:
            ready = self._selector.select(timeout)
        except OSError as ex:  # e.g. a socket closed behind our back
            log.error('select() failed: %s', ex)
            self._drop_closed_sockets()
            return
        for key, _ in ready:
            if key.fileobj is self._waker:
                self._drain_wake()
            else:
                self._read(key.fileobj, key.data)  # type: ignore[arg-type]  # only sockets are registered
        self._run_due_timers()

    def _drain_wake(self) -> None:
        try:
            while self._waker.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _read(self, sock: socket.socket, endpoint_ref: weakref.ref) -> None:
        """Read one datagram (select() reports the socket again while more are waiting)."""
        endpoint = endpoint_ref()
        if endpoint is None:  # dropped without close(): its finalizer closes the socket
            self._forget(sock)
            return
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
            sock = key.fileobj
            if isinstance(sock, socket.socket) and sock is not self._waker and sock.fileno() < 0:
                self._forget(sock)

    def _release_resources(self) -> None:
        with self._lock:
            self._closing = True
            ops, self._pending_ops = self._pending_ops, []
            self._timers.clear()
        for _, _, done in ops:
            done.put((None, None))
        for resource in self._resources:
            resource.close()
