"""One message in flight to one rig: its echo, its response and the timing of both."""
from __future__ import annotations

import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import Any, Callable

from iblutil.io.net.base import ExpMessage

from .errors import RigError, RigTimeout

__all__ = ['Exchange']


class Exchange:
    """The state of one request: created by ``Communicator.submit``, finished exactly once.

    Attributes
    ----------
    datagram : bytes
        The bytes first sent (identical to what iblutil sends).
    event : ExpMessage
        The event of the request; the response carries the same event.
    echo : concurrent.futures.Future
        Resolved when the rig's echo arrives (or the rig's response, which implies it).
    outcome : concurrent.futures.Future
        Resolved with the response data (a list without the event code), or with None when
        no response is expected; fails with a :class:`RigError`.
    sent_at, echo_at, response_at : float
        ``time.monotonic()`` readings; the last two are None until they happen.
    """

    __slots__ = ('datagram', 'event', 'expect_response', 'echo', 'outcome', 'resent', 'heard',
                 'sent_at', 'echo_at', 'response_at', '_describe', '_timers')

    def __init__(self, datagram: bytes, event: ExpMessage, expect_response: bool,
                 describe: Callable[[], tuple[str, str]]):
        self.datagram, self.event, self.expect_response = datagram, event, expect_response
        self.echo: Future = Future()
        self.outcome: Future = Future()
        self.resent: set[bytes] = set()  # other spellings we sent again; their echoes are ours
        self.heard = False  # anything came back from the rig since the first send
        self.sent_at = time.monotonic()
        self.echo_at: float | None = None
        self.response_at: float | None = None
        self._describe = describe
        self._timers: list = []

    @property
    def done(self) -> bool:
        """bool: True once the exchange succeeded or failed."""
        return self.outcome.done()

    def error(self, error_type: type[RigError], detail: str, stage: str | None = None) -> RigError:
        """Build an exception that names the rig, its URI and this exchange's event."""
        name, uri = self._describe()
        return error_type(name, uri, self.event.name, detail, stage=stage)

    def add_timer(self, timer) -> None:
        """Keep a dispatcher timer to cancel when the exchange finishes."""
        self._timers.append(timer)

    def confirm(self) -> bool:
        """Record the echo; returns False if it was already recorded."""
        if self.echo.done():
            return False
        self.echo_at = time.monotonic()
        self.echo.set_result(self.echo_at - self.sent_at)
        if not self.expect_response:
            self.finish(None)
        return True

    def respond(self, data: list) -> None:
        """Record the response (which also confirms the echo)."""
        self.confirm()
        self.response_at = time.monotonic()
        self.finish(data)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """Resolve the exchange once; later calls are ignored."""
        if self.outcome.done():
            return
        for timer in self._timers:
            timer.cancel()
        if error is not None:
            if not self.echo.done():
                self.echo.set_exception(error)
            self.outcome.set_exception(error)
        else:
            self.outcome.set_result(result)

    def give_up(self) -> None:
        """Fail the exchange as timed out, naming the stage it reached and how long it waited."""
        waited = time.monotonic() - self.sent_at
        if self.echo.done():
            detail = f'echoed but no response within {waited:.3g} s'
            self.finish(error=self.error(RigTimeout, detail, stage='no response'))
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
