"""Echo storm guard: stop echoing the same bytes to the same peer over and over.

If both ends take one datagram for a new message, each echoes the other's echo for ever (the
protocol has no message ids, see PROTOCOL.md). A real peer never needs the same bytes echoed
more than a few times within a fraction of a second, while a storm repeats them at the
round-trip rate with no other message in between; so identical echoes beyond `limit` within
`window` seconds, with no message of our own sent in between (see :meth:`StormGuard.reset`),
are dropped. A fast poll that gets the same bytes every round is not a storm: each round
starts with a message of ours.
"""
from __future__ import annotations

import logging
import time

__all__ = ['StormGuard']
log = logging.getLogger(__name__)


class StormGuard:
    """Decides whether a datagram may be echoed to one peer.

    Parameters
    ----------
    limit : int
        How many echoes of identical bytes are allowed within `window`.
    window : float
        Seconds over which identical echoes are counted.
    """

    __slots__ = ('limit', 'window', '_last', '_count', '_since')

    def __init__(self, limit: int = 3, window: float = 0.5):
        self.limit, self.window = limit, window
        self._last, self._count, self._since = b'', 0, 0.0

    def reset(self) -> None:
        """We sent a message of our own (not an echo): whatever comes back next is no bounce."""
        self._count = 0

    def allow(self, datagram: bytes) -> bool:
        """Return True if `datagram` may be echoed now (and count it)."""
        now = time.monotonic()
        if datagram != self._last or now - self._since > self.window:
            self._last, self._count, self._since = datagram, 0, now
        self._count += 1
        if self._count == self.limit + 1:
            log.warning('Echo storm: %r bounced %d times in %.3g s; no longer echoed',
                        datagram[:60], self.limit, now - self._since)
        return self._count <= self.limit
