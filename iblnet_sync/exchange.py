"""One request to one rig as its caller sees it: a Future, and when the echo and the answer came."""
from __future__ import annotations

import queue
import time
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable

from iblutil.io.net.base import ExpMessage

__all__ = ['Exchange', 'remaining', 'wait_all']


class Exchange:
    """The caller's handle on one request; the protocol work is the communicator's.

    The network thread hands the outcome over through a ``queue.SimpleQueue`` (implemented in C:
    an interrupted caller cannot leave it locked), and the caller's own :meth:`result` resolves
    the public Future: the network thread never waits on a lock that a caller holds.

    Attributes
    ----------
    datagram : bytes
        The request as iblutil would send it.
    event : ExpMessage
        The request's event; the answer carries the same.
    outcome : concurrent.futures.Future
        Resolved by :meth:`result` (or :func:`wait_all`) with the answer's data (a list without
        the event code), or None when only an echo was expected; fails with a
        :class:`~iblnet_sync.errors.RigError`. Call :meth:`result` first; then read it.
    sent_at, echo_at, response_at : float
        ``time.monotonic()`` readings; the last two stay None until they happen.
    """

    __slots__ = ('datagram', 'event', 'outcome', 'sent_at', 'echo_at', 'response_at', 'settled', '_end', '_handoff')

    def __init__(self, datagram: bytes, event: ExpMessage, end: Callable[..., None]):
        self.datagram, self.event = datagram, event
        self.outcome: Future = Future()
        self.sent_at = time.monotonic()
        self.echo_at: float | None = None
        self.response_at: float | None = None
        self.settled = False  # set (once) by whoever ends the exchange
        self._end = end  # asks the communicator to end this exchange: 'timeout' or 'interrupted'
        self._handoff: queue.SimpleQueue = queue.SimpleQueue()

    @property
    def done(self) -> bool:
        """bool: True once the exchange succeeded or failed."""
        return self.settled

    @property
    def echoed(self) -> bool:
        """bool: True once the echo (or an answer, which implies it) arrived."""
        return self.echo_at is not None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the outcome over to the caller (once: the communicator settles each exchange once)."""
        self.settled = True
        self._handoff.put((result, error))

    def give_up(self) -> None:
        """End the exchange now as timed out, naming the stage it reached."""
        self._end(self, 'timeout')

    def interrupt(self) -> None:
        """End the exchange because its caller was interrupted (Ctrl-C): the rig is free again."""
        self._end(self, 'interrupted')

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to `timeout` seconds for the outcome; give up at the deadline.

        Raises
        ------
        RigError
            The exchange failed (``RigTimeout`` is also a ``TimeoutError``).
        """
        if not self.outcome.done():
            try:
                try:
                    result, error = self._handoff.get(timeout=timeout)
                except queue.Empty:
                    self.give_up()  # settles it now, unless the answer came meanwhile: then that is there
                    result, error = self._handoff.get(timeout=1.0)
            except BaseException:  # e.g. KeyboardInterrupt: free the rig for the next exchange
                if not self.settled:
                    self.interrupt()
                raise
            try:
                if error is not None:
                    self.outcome.set_exception(error)
                else:
                    self.outcome.set_result(result)
            except InvalidStateError:  # (resolved meanwhile by another thread's wait)
                pass
        return self.outcome.result(0)


def wait_all(exchanges: Iterable[Exchange], deadline: float | None) -> None:
    """Wait until every exchange ended or the deadline passed (the late ones then fail): each
    ``outcome`` is then resolved."""
    for exchange in exchanges:
        try:
            exchange.result(remaining(deadline))
        except Exception:
            pass  # read from exchange.outcome


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (never negative); None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
