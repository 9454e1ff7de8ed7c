"""One rig's callbacks: who is called, or which Future is resolved, when the rig sends an event.

A :class:`CallbackRegistry` keeps, for each event, the callbacks registered for it in order. Its
owner (a :class:`~iblnet_sync.communicator.Communicator`) hands it each message of the rig's own
(:meth:`CallbackRegistry.deliver`, on the network thread); the registry queues each call on the
dispatcher's callback thread (:meth:`~iblnet_sync.dispatcher.Dispatcher.run_callback`). A Future
(``on_event``) is resolved once and then forgotten; one whose message the full queue drops is
cancelled by :meth:`CallbackRegistry.cancel_dropped`, which its owner calls once it holds no lock
(the Future's own done-callbacks, if any, run there), and one still pending when the registry
closes is cancelled by its owner. A callback that raises is reported to the rig.

Thread-safety: every method may be called from any thread. The registry's lock is a C lock,
only ever taken by ``with`` around short bodies that run no user code (the longest queues the
calls of one message), so an interrupted caller cannot leave it held; Futures are cancelled
(which runs their done-callbacks) with no lock of the registry held.

Examples
--------
>>> from iblnet_sync.dispatcher import Dispatcher
>>> dispatcher, called = Dispatcher('example'), threading.Event()
>>> registry = CallbackRegistry(dispatcher, print, name='cameras', uri='udp://10.0.0.2:11001',
...                             addr=('10.0.0.2', 11001))
>>> registry.add(ExpMessage.EXPSTART | ExpMessage.EXPEND, lambda data, addr, event: called.set())
>>> registry.deliver(protocol.Message(ExpMessage.EXPEND, [[]]))  # queued on the callback thread
>>> called.wait(5)
True
>>> dispatcher.close()
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, Callable

from iblutil.io.net.base import ExpMessage

from . import protocol
from .dispatcher import Dispatcher
from .errors import ClosedError
from .logtext import PeerLogLimiter, peer_text

__all__ = ['Abandoned', 'Callback', 'CallbackRegistry', 'cancel']
log = logging.getLogger(__name__)

Callback = Callable[..., Any] | Future
"""A function called with the rig's message, or a Future resolved with it once."""


class CallbackRegistry:
    """The callbacks of one rig's events, run on the dispatcher's callback thread.

    Parameters
    ----------
    dispatcher : Dispatcher
        Whose :meth:`~iblnet_sync.dispatcher.Dispatcher.run_callback` queues each call.
    send : callable
        ``send(datagram)`` sends bytes to the rig: the error report of a callback that raised.
        The owner passes one that does not keep it alive (:func:`~iblnet_sync.dispatcher.weak_call`).
    name : str
        The owner's label, first in each log line.
    uri : str
        The rig's address as logged with its error reports.
    addr : object
        What callbacks receive as their `addr` argument: the rig's ``(host, port)``.
    logger : logging.Logger
        Where the lines go; the owner's logger, so that they keep its name.

    Attributes
    ----------
    name : str
        As given.
    """

    def __init__(self, dispatcher: Dispatcher, send: Callable[[bytes], Any], *, name: str, uri: str, addr: Any,
                 logger: logging.Logger = log):
        self.name = name
        self._dispatcher, self._send, self._uri, self._addr, self._log = dispatcher, send, uri, addr, logger
        self._lock = threading.Lock()  # guards the three below
        self._entries: dict[ExpMessage, list[tuple[Callback, bool]]] = {e: [] for e in _EVENTS}  # (callback, compound)
        self._queued: set[Future] = set()  # Futures handed to the callback thread, not yet resolved
        self._dropped: list[Future] = []  # Futures whose message was dropped, to cancel with no lock held
        self._closed: str | None = None  # why add() refuses, once closed
        self._reports = PeerLogLimiter()  # error reports that fail no call: logged a few a minute

    def add(self, event: ExpMessage | int | str, callback: Callback) -> None:
        """Call `callback` each time the rig sends `event`, after those added before it.

        A function is called as ``callback(data, addr)``, or ``callback(data, addr, event)`` when
        `event` is several flags OR-ed together; a Future is resolved once with that tuple, then
        forgotten. Event 0 (``ExpMessage(0)``) stands for the rig's error reports.

        Raises
        ------
        ValueError
            `event` names no event.
        TypeError
            `callback` is neither callable nor a Future.
        ClosedError
            The registry is closed.
        """
        flags = _flags(event)
        if not (callable(callback) or isinstance(callback, Future)):
            raise TypeError('Callback must be callable or a concurrent.futures.Future')
        compound = len(flags) > 1
        with self._lock:
            if self._closed is not None:
                raise ClosedError(self._closed)
            for flag in flags:
                self._entries[flag].append((callback, compound))

    def remove(self, event: ExpMessage | int | str, callback: Callback | None = None) -> int:
        """Remove `callback` (or a wrapper of it, by ``__wrapped__``), or every callback, for `event`.

        The Futures removed are cancelled.

        Returns
        -------
        int
            How many registrations were removed (one per single event of `event`).
        """
        flags = _flags(event)
        removed: list[Callback] = []
        with self._lock:
            for flag in flags:
                entries = self._entries[flag]
                keep = [e for e in entries if callback is not None and not _same_callback(e[0], callback)]
                removed += [e[0] for e in entries if e not in keep]
                entries[:] = keep
        cancel(registered for registered in removed if isinstance(registered, Future))
        return len(removed)

    def deliver(self, message: protocol.Message, cost: int = 0, log_report: bool = True) -> None:
        """Queue the calls for a message of the rig's own: its event's Futures first, then its functions.

        An error report (event 0) is logged first, a few lines a minute, unless `log_report` is
        False (the report fails a call, which raises it instead). A Future whose call the queue
        cannot take is logged (a warning) and cancelled by :meth:`cancel_dropped`.

        Parameters
        ----------
        message : protocol.Message
            The message; its data go to the callbacks as they are.
        cost : int
            Bytes of the datagram it came in, counted against the callback queue's bound.
        log_report : bool
            Whether an error report is logged.
        """
        if message.event == protocol.ERROR_CODE and log_report:
            text, event = (list(message.data) + [None, None])[:2]
            self._reports.log(self._log, logging.ERROR, self.name, '%s (%s) reported an error for %s: %s', self.name,
                              self._uri, peer_text(_event_name(event), 60), peer_text(text))
        dropped = []
        with self._lock:  # (held while queueing: close() finds each Future registered or queued)
            entries = self._entries[message.event]
            if not entries:  # the usual case: nobody listens for it
                return
            once = _unique([e for e in entries if isinstance(e[0], Future)])
            if once:  # forgotten for every event it was registered for: each Future is handed on once
                taken = {id(future) for future, _ in once}
                for other in self._entries.values():
                    if other:
                        other[:] = [e for e in other if id(e[0]) not in taken]
            for callback, compound in once + list(entries):
                args = (message.data, self._addr, message.event) if compound else (message.data, self._addr)
                if self._dispatcher.run_callback(self._run, callback, args, message.event, cost=cost):
                    if isinstance(callback, Future):
                        self._queued.add(callback)  # resolved when its turn comes, or cancelled by close()
                elif isinstance(callback, Future):
                    dropped.append(callback)
            self._dropped += dropped  # (cancelled by cancel_dropped(), once no lock is held)
        for future in dropped:  # (logged first: whoever waits for it may look for the line)
            self._log.warning('%s: on_event(%s) cancelled: the callbacks are too slow and its message was dropped',
                              self.name, message.event.name)

    def cancel_dropped(self) -> None:
        """Cancel the Futures whose message the queue could not take (see :meth:`deliver`); call it with no lock
        held, since their done-callbacks run here."""
        with self._lock:
            dropped, self._dropped = self._dropped, []
        cancel(dropped)

    def close(self, why: str) -> list[Future]:
        """Forget every callback and refuse new ones with ``ClosedError(why)``; idempotent.

        Returns
        -------
        list of Future
            The Futures not yet resolved, registered or waiting in the callback queue (whose
            thread may stop before their turn): :func:`cancel` them once no lock is held.
        """
        with self._lock:
            if self._closed is None:
                self._closed = why
            pending = [cb for entries in self._entries.values() for cb, _ in entries if isinstance(cb, Future)]
            futures = list({id(f): f for f in [*pending, *self._queued, *self._dropped]}.values())  # each once
            self._queued, self._dropped = set(), []
            for entries in self._entries.values():
                entries.clear()
        return futures

    def _run(self, callback: Callback, args: tuple, event: ExpMessage) -> None:
        """On the callback thread: resolve a Future or call a function; report its failure to the rig."""
        if isinstance(callback, Future):
            with self._lock:
                self._queued.discard(callback)
            if not callback.done():
                callback.set_result(args)
            return
        try:
            callback(*args)
        except Exception as ex:
            self._log.error('%s: callback %r for %s raised %r', self.name, callback, event.name, ex)
            if self._closed is None and event != protocol.ERROR_CODE:
                self._send(protocol.error_report(ex, event))


def cancel(futures: Iterable[Future]) -> None:
    """Cancel each Future and wake whoever waits for it (``Future.cancel`` alone does not wake
    ``concurrent.futures.wait``)."""
    for future in futures:
        if not future.cancelled() and future.cancel():  # (once: a second notification raises)
            try:
                future.set_running_or_notify_cancel()
            except RuntimeError:  # (another thread cancelled it at the same moment, and woke its waiters)
                pass


class Abandoned:
    """A registry whose owner is gone without closing it: its ``close()`` (the owner's finalizer calls it)
    cancels the Futures nobody will resolve."""

    def __init__(self, registry: CallbackRegistry):
        self._registry = registry

    def close(self) -> None:
        cancel(self._registry.close('its communicator was dropped without close()'))


_EVENTS = [ExpMessage(0), *ExpMessage]


def _flags(event: ExpMessage | int | str) -> list[ExpMessage]:
    """The single events of `event` (OR-ed flags allowed); 0 stands for error reports."""
    if isinstance(event, int) and not isinstance(event, bool) and event == protocol.ERROR_CODE:
        return [ExpMessage(0)]
    combined = protocol.as_event(event, allow_compound=True)
    return [flag for flag in ExpMessage if flag & combined]


def _event_name(code: Any) -> str:
    try:
        return protocol.as_event(code).name
    except (TypeError, ValueError):
        return repr(code)


def _unique(entries: list[tuple[Callback, bool]]) -> list[tuple[Callback, bool]]:
    """`entries` without the repeats of a callback (the first kept), by identity: a callback need not hash."""
    first: dict[int, tuple[Callback, bool]] = {}
    for entry in entries:
        first.setdefault(id(entry[0]), entry)
    return list(first.values())


def _same_callback(registered: Callback, callback: Callback) -> bool:
    """True if `registered` is `callback` or a wrapper of it (``__wrapped__``)."""
    return registered is callback or getattr(registered, '__wrapped__', None) is callback
