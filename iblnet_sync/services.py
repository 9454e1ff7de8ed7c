"""Many rigs at once: broadcast a message and wait for every rig with one deadline."""
from __future__ import annotations

import dataclasses
import functools
import logging
import secrets
import time
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from iblutil.io.net.base import ExpMessage, ExpStatus

from . import dialect, protocol
from .communicator import DEFAULT_TIMEOUT, ECHO_TIMEOUT, PAUSE, RESEND_INTERVAL, RESENDS, Communicator
from .dispatcher import Dispatcher
from .errors import BroadcastError, BroadcastTimeout, RigError
from .exchange import Exchange, remaining, wait_all
from .options import Options, check_seconds
from .sockets import close_all

__all__ = ['Services']
log = logging.getLogger(__name__)

ALYX_TIMEOUT = 2.0
"""float: seconds an ALYX broadcast waits at most: a rig answers it from memory, or never."""


class Services(Mapping):
    """The main rig's connection to every auxiliary rig, with iblutil's ``Services`` calls.

    One network thread serves all rigs. Each call sends the same datagram to every rig, waits
    for the echoes and the responses, and returns ``{rig name: response data}``.

    Parameters
    ----------
    remote_rigs : dict of str to str
        Rig name to URI (``udp://host:port``, ``host:port`` or ``host``).
    timeout : float, None
        Seconds a broadcast may take in all; None waits for ever.
    echo_timeout, resend_interval, resends, pause
        Passed to each :class:`Communicator`.
    assume_resends : bool
        Kept for compatibility; has no effect.

    Raises
    ------
    ValueError, TypeError
        A URI or an option is invalid (the message names the rig or the option); nothing is
        opened then.

    Examples
    --------
    >>> with Services({'cameras': 'udp://127.0.0.1:11001'}, timeout=5) as services:
    ...     services.status('CONNECTED')
    {'cameras': [0]}
    """

    def __init__(self, remote_rigs: Mapping[str, str], timeout: float | None = DEFAULT_TIMEOUT, *,
                 echo_timeout: float = ECHO_TIMEOUT, resend_interval: float = RESEND_INTERVAL,
                 resends: int = RESENDS, assume_resends: bool = False, pause: float = PAUSE):
        if not isinstance(remote_rigs, Mapping):
            raise TypeError(f'remote_rigs must map rig names to URIs, e.g. {{"cameras": "udp://10.0.0.7:11001"}}, '
                            f'not a {type(remote_rigs).__name__}')
        if timeout is not None:
            check_seconds('timeout', timeout)
        options = Options(echo_timeout, resend_interval, resends, pause)
        addresses = {}
        for name, uri in remote_rigs.items():  # every address is checked before anything opens
            try:
                addresses[name] = protocol.rig_address(uri)
            except (ValueError, TypeError, OSError) as ex:
                raise type(ex)(f'Rig {name!r}: {ex}') from None
        self.timeout = timeout
        self._token = secrets.token_hex(4)  # names this connection in EXPINFO (see dialect.MAIN_KEY)
        self._rigs: dict[str, Communicator] = {}
        self._dispatcher: Dispatcher | None = None
        held: list = []  # the network thread, closed by close() or, if this object is dropped, its finalizer
        self._finalizer = weakref.finalize(self, close_all, held)
        try:
            self._dispatcher = Dispatcher('iblnet_sync', held)
            for name, (host, port) in addresses.items():
                self._rigs[name] = Communicator(f'udp://{host}:{port}', name, dispatcher=self._dispatcher,
                                                timeout=timeout, **dataclasses.asdict(options))
        except BaseException:
            self.close()
            raise

    # --- read-only mapping of rig name to Communicator ---
    def __getitem__(self, name: str) -> Communicator:
        return self._rigs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rigs)

    def __len__(self) -> int:
        return len(self._rigs)

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {", ".join(f"{n}={c.server_uri}" for n, c in self._rigs.items())}>'

    @property
    def is_connected(self) -> bool:
        """bool: True when there are rigs and none is closed."""
        return bool(self._rigs) and all(rig.is_connected for rig in self._rigs.values())

    # --- callbacks ---
    def assign_callback(self, event: ExpMessage | int | str, callback: Callable,
                        return_service: bool = False) -> None:
        """Register `callback` for `event` on every rig.

        With `return_service` the callback is called as ``callback(data, addr, communicator)``.
        """
        for rig in self._rigs.values():
            if return_service:
                wrapper = functools.partial(_with_service, callback, rig)
                wrapper.__wrapped__ = callback  # type: ignore[attr-defined]  # lets clear_callbacks find it
                rig.assign_callback(event, wrapper)
            else:
                rig.assign_callback(event, callback)

    def clear_callbacks(self, event: ExpMessage | int | str, callback: Callable | None = None) -> dict[str, int]:
        """Remove `callback` (or all) for `event` on every rig; returns the count per rig."""
        return {name: rig.clear_callbacks(event, callback) for name, rig in self._rigs.items()}

    # --- broadcasts (iblutil's names and argument order) ---
    def init(self, data: Any = None, concurrent: bool = True) -> dict[str, list]:
        """Send EXPINIT to every rig in order; return each rig's response data."""
        return self.broadcast(protocol.init_message(data), concurrent=concurrent)

    def start(self, exp_ref: str | dict | None, data: Any = None, concurrent: bool = True) -> dict[str, list]:
        """Send EXPSTART with the experiment reference to every rig in order."""
        return self.broadcast(protocol.start_message(exp_ref, data), concurrent=concurrent)

    def stop(self, data: Any = None, immediately: bool = False, concurrent: bool = True) -> dict[str, list]:
        """Send EXPEND (EXPINTERRUPT when `immediately`) to every rig in reverse order."""
        return self.broadcast(protocol.stop_message(data, immediately), concurrent=concurrent, reverse=True)

    def cleanup(self, data: Any = None, concurrent: bool = True) -> dict[str, list]:
        """Send EXPCLEANUP to every rig in reverse order."""
        return self.broadcast(protocol.cleanup_message(data), concurrent=concurrent, reverse=True)

    def status(self, status: ExpStatus | int | str, concurrent: bool = True) -> dict[str, list]:
        """Send EXPSTATUS to every rig; each answers ``[STATUS]``."""
        return self.broadcast(protocol.status_message(status), concurrent=concurrent)

    def info(self, status: ExpStatus | int | str, data: Any = None, concurrent: bool = True) -> dict[str, list]:
        """Send EXPINFO to every rig; each answers ``[STATUS, INFO]``.

        An info dict gets ``"iblnet_sync": 1``: a rig that runs iblnet_sync then tags its
        answer at once (see :mod:`iblnet_sync.core`); other rigs ignore the key.
        """
        if isinstance(data, dict):
            data = {**data, dialect.PEER_KEY: dialect.PEER_VERSION, dialect.MAIN_KEY: self._token}
        return self.broadcast(protocol.info_message(status, data), concurrent=concurrent)

    def alyx(self, alyx: Any = None, concurrent: bool = True) -> dict[str, list | None]:
        """Give every rig this rig's Alyx token, or ask each for its own when `alyx` is not logged in.

        A rig answers from memory, and some never answer (Timeline, iblrig's video program): the
        call waits :data:`ALYX_TIMEOUT` seconds at most (or the shorter timeout of this object).
        """
        datagram = protocol.alyx_message(alyx)
        timeout = ALYX_TIMEOUT if self.timeout is None else min(self.timeout, ALYX_TIMEOUT)
        return self.broadcast(datagram, concurrent=concurrent, expect_response=not protocol.gives_token(datagram),
                              timeout=timeout)

    def broadcast(self, datagram: bytes, concurrent: bool = True, reverse: bool = False,
                  expect_response: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Send `datagram` to every rig and wait for all of them until one deadline.

        Parameters
        ----------
        datagram : bytes
            An encoded message (:mod:`iblnet_sync.protocol`).
        concurrent : bool
            Send to all rigs before waiting; otherwise finish each rig before the next.
        reverse : bool
            Visit the rigs in reverse order.
        expect_response : bool
            Wait for each rig's response, not only its echo.
        timeout : float, optional
            Seconds for this broadcast; defaults to ``self.timeout``.

        Returns
        -------
        dict
            Rig name to response data (a list without the event code), in the order visited.

        Raises
        ------
        BroadcastTimeout
            A rig timed out (also a ``TimeoutError``); the error names every failed rig.
        BroadcastError
            A rig failed otherwise (refused, error report, socket error).
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        rigs = list(self._rigs.values())
        if reverse:
            rigs.reverse()
        exchanges: dict[str, Exchange] = {}
        failures: dict[str, RigError] = {}
        try:
            for rig in rigs:
                try:
                    exchanges[rig.name] = rig.submit(datagram, expect_response, remaining(deadline))
                except RigError as ex:
                    failures[rig.name] = ex
                    continue
                if not concurrent:
                    wait_all([exchanges[rig.name]], deadline)
            wait_all(list(exchanges.values()), deadline)
        except BaseException:  # e.g. Ctrl-C: end every exchange, so that no rig stays busy with one
            for exchange in exchanges.values():
                exchange.interrupt()
            raise
        responses = {}
        for name, exchange in exchanges.items():
            error = exchange.outcome.exception()
            if error is None:
                responses[name] = exchange.outcome.result()
            else:
                failures[name] = error if isinstance(error, RigError) else RigError(
                    name, self._rigs[name].server_uri, exchange.event.name, repr(error))
        if failures:
            kind = BroadcastTimeout if any(isinstance(e, TimeoutError) for e in failures.values()) else BroadcastError
            raise kind(next(iter(failures.values())).event, failures, responses)
        return responses

    # --- closing ---
    def close(self) -> None:
        """Close every rig's socket and stop the network thread; idempotent."""
        for rig in self._rigs.values():
            rig.close()
        self._finalizer()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _with_service(callback: Callable, service: Communicator, data: Any, addr: Any, *event: Any) -> None:
    callback(data, addr, service, *event)
