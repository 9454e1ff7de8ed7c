"""One request to one rig as its caller sees it: a Future, and when the echo and the answer came."""
from __future__ import annotations

import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

from iblutil.io.net.base import ExpMessage

__all__ = ['Exchange', 'remaining']


class Exchange:
    """The caller's handle on one request; the protocol work is the communicator's.

    Attributes
    ----------
    datagram : bytes
        The request as iblutil would send it.
    event : ExpMessage
        The request's event; the answer carries the same.
    outcome : concurrent.futures.Future
        Resolved with the answer's data (a list without the event code), or None when only an
        echo was expected; fails with a :class:`~iblnet_sync.errors.RigError`. Wait on it; do
        not add done-callbacks: they would run on the network thread.
    sent_at, echo_at, response_at : float
        ``time.monotonic()`` readings; the last two stay None until they happen.
    """

    __slots__ = ('datagram', 'event', 'outcome', 'sent_at', 'echo_at', 'response_at', '_end')

    def __init__(self, datagram: bytes, event: ExpMessage, end: Callable[..., None]):
        self.datagram, self.event = datagram, event
        self.outcome: Future = Future()
        self.sent_at = time.monotonic()
        self.echo_at: float | None = None
        self.response_at: float | None = None
        self._end = end  # asks the communicator to end this exchange: 'timeout' or 'interrupted'

    @property
    def done(self) -> bool:
        """bool: True once the exchange succeeded or failed."""
        return self.outcome.done()

    @property
    def echoed(self) -> bool:
        """bool: True once the echo (or an answer, which implies it) arrived."""
        return self.echo_at is not None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Resolve the outcome once; later calls are ignored."""
        try:
            if error is not None:
                self.outcome.set_exception(error)
            else:
                self.outcome.set_result(result)
        except InvalidStateError:
            pass

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
        try:
            return self.outcome.result(timeout)
        except FutureTimeout:  # not the builtin TimeoutError on Python 3.10
            self.give_up()  # settles it, unless the answer came meanwhile and is being settled now
            return self.outcome.result(1.0)
        except BaseException:  # e.g. KeyboardInterrupt: free the rig for the next exchange
            if not self.outcome.done():
                self.interrupt()
            raise


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (never negative); None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
