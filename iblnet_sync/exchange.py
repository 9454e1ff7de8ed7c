"""One message in flight to one rig: its echo, its response and the timing of both."""
from __future__ import annotations

import time
from concurrent.futures import Future, InvalidStateError, TimeoutError as FutureTimeout
from typing import Any, Callable

from .errors import RigError, RigTimeout
from .protocol import Message

__all__ = ['Exchange', 'remaining']


class Exchange:
    """The state of one request: created by ``Communicator.submit``, finished exactly once.

    Attributes
    ----------
    datagram : bytes
        The bytes first sent (identical to what iblutil sends).
    event : ExpMessage
        The event of the request; the response carries the same event.
    request_data : list
        The request's elements after the event code.
    expect_response : bool
        Whether the exchange ends with the rig's response (else with the echo).
    outcome : concurrent.futures.Future
        Resolved with the response data (a list without the event code), or with None when
        no response is expected; fails with a :class:`RigError`.
    heard : bool
        Whether anything came back from the rig since the first send.
    sent_at, echo_at, response_at : float
        ``time.monotonic()`` readings; the last two are None until they happen.
    """

    __slots__ = ('datagram', 'event', 'request_data', 'expect_response', 'outcome', 'heard', 'echo_implied',
                 'sent_at', 'echo_at', 'response_at', 'timer', '_describe')

    def __init__(self, datagram: bytes, message: Message, expect_response: bool,
                 describe: Callable[[], tuple[str, str]]):
        self.datagram, self.expect_response = datagram, expect_response
        self.event, self.request_data = message
        self.outcome: Future = Future()
        self.heard = False
        self.echo_implied = False  # a response (or the rig's message) stood in for the echo
        self.sent_at = time.monotonic()
        self.echo_at: float | None = None
        self.response_at: float | None = None
        self.timer = None  # the dispatcher timer that resends and enforces the echo deadline
        self._describe = describe

    @property
    def done(self) -> bool:
        """bool: True once the exchange succeeded or failed."""
        return self.outcome.done()

    @property
    def echoed(self) -> bool:
        """bool: True once the echo (or a response, which implies it) arrived."""
        return self.echo_at is not None

    def error(self, error_type: type[RigError], detail: str, stage: str | None = None) -> RigError:
        """Build an exception that names the rig, its URI and this exchange's event."""
        name, uri = self._describe()
        return error_type(name, uri, self.event.name, detail, stage=stage)

    def confirm(self, implied: bool = False) -> None:
        """Record the echo (once); ends the exchange when no response is expected.

        `implied` means a message from the rig stood in for an echo that has not arrived.
        """
        if self.echo_at is None:
            self.echo_at, self.echo_implied = time.monotonic(), implied
            if not self.expect_response:
                self.finish(None)

    def respond(self, data: list) -> None:
        """Record the response (which also confirms the echo) and end the exchange."""
        self.confirm(implied=True)
        self.response_at = time.monotonic()
        self.finish(data)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """Resolve the exchange once, from any thread; the first call wins, later ones are ignored."""
        try:
            if error is not None:
                self.outcome.set_exception(error)
            else:
                self.outcome.set_result(result)
        except InvalidStateError:
            return
        if self.timer is not None:
            self.timer.cancel()

    def give_up(self) -> None:
        """Fail the exchange as timed out, naming the stage it reached and how long it waited."""
        waited = time.monotonic() - self.sent_at
        if self.echoed:
            self.finish(error=self.error(RigTimeout, f'echoed but no response within {waited:.3g} s'))
        else:
            self.finish(error=self.error(RigTimeout, f'no echo within {waited:.3g} s', stage='no echo'))

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the outcome up to `timeout` seconds; give up and raise at the deadline.

        Raises
        ------
        RigError
            The exchange failed (``RigTimeout`` is also a ``TimeoutError``).
        """
        try:
            return self.outcome.result(timeout)
        except FutureTimeout:  # not the builtin TimeoutError on Python 3.10
            if not self.outcome.done():
                self.give_up()
            return self.outcome.result(0)
        except BaseException:  # e.g. KeyboardInterrupt: free the rig for the next exchange
            self.interrupt()
            raise

    def interrupt(self) -> None:
        """Fail the exchange because its caller was interrupted (Ctrl-C), freeing the rig."""
        self.finish(error=self.error(RigError, 'interrupted while waiting', stage='interrupted'))


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (never negative); None for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
