"""A rig's clock against this PC's, from the ``clock`` an iblnet_sync rig puts in its EXPINFO answer.

Used by :mod:`iblnet_sync.session` (logged at each experiment's EXPINFO) and by
:mod:`iblnet_sync.ping` (reported per rig).
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ['clock_offset']


def clock_offset(info: Any, sent: float, answered: float) -> tuple[float, float] | None:
    """A rig's clock offset from this PC, from the ``clock`` of its EXPINFO answer's info.

    Parameters
    ----------
    info : Any
        The info of the answer; iblnet_sync rigs put their wall-clock time (``time.time()``) in ``clock``.
    sent, answered : float
        This PC's wall-clock time (``time.time()``) before the request went out and after the answer came.

    Returns
    -------
    tuple of float, None
        ``(offset, bound)`` in seconds: rig clock minus this PC's clock at the midpoint, true
        within ``± bound`` (half the round trip); None when the rig reports no clock.
    """
    clock = info.get('clock') if isinstance(info, dict) else None
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not math.isfinite(clock):
        return None
    return clock - (sent + answered) / 2, (answered - sent) / 2
