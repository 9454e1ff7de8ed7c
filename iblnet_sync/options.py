"""The timing of a conversation, main side or rig side: one frozen object that checks itself.

:class:`~iblnet_sync.communicator.Communicator`, :class:`~iblnet_sync.services.Services` and
:class:`~iblnet_sync.rig_server.RigServer` take these options as keyword arguments and build one
:class:`Options` from them, so that a bad value is refused in one place, with one message.

Examples
--------
>>> Options(resend_interval=0.1).resends
50
>>> Options(resends=-1)
Traceback (most recent call last):
...
ValueError: resends must be an integer >= 0, not -1
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ['IGNORED_OPTIONS', 'Options', 'check_seconds', 'RESEND_INTERVAL', 'ECHO_TIMEOUT', 'RESENDS',
           'ANSWER_RESENDS', 'PAUSE']

RESEND_INTERVAL = 0.2
"""float: seconds without an echo after which a message is sent again."""
ECHO_TIMEOUT = 1.0
"""float: seconds to wait for an echo once no resend is left (iblutil's default)."""
RESENDS = 50
"""int: how many times a request is sent again at most (10 s at the default interval)."""
ANSWER_RESENDS = 50
"""int: how many times a rig sends a tagged answer again while it is not echoed."""
PAUSE = 0.005
"""float: seconds between the end of one exchange and the next request to a rig not known to run
iblnet_sync (core row M22)."""

IGNORED_OPTIONS = ('assume_resends',)
"""Options still accepted by keyword for compatibility, without effect."""


@dataclass(frozen=True)
class Options:
    """How long to wait for an echo, and how often and how many times to send again.

    Parameters
    ----------
    echo_timeout : float
        Seconds to wait for an echo after the last send.
    resend_interval : float
        Seconds without an echo after which a datagram is sent again.
    resends : int
        How many times a datagram may be sent again; 0 behaves exactly as iblutil.
    pause : float
        Main side only: seconds from the end of one exchange to the next request, for a rig not
        known to run iblnet_sync (from 0 to below 1).

    Raises
    ------
    TypeError, ValueError
        An option out of range; the message names it.
    """

    echo_timeout: float = ECHO_TIMEOUT
    resend_interval: float = RESEND_INTERVAL
    resends: int = RESENDS
    pause: float = PAUSE

    def __post_init__(self) -> None:
        pause = self.pause
        if isinstance(pause, bool) or not isinstance(pause, (int, float)) or not 0 <= pause < 1:
            raise ValueError(f'pause must be a number of seconds from 0 to below 1, not {pause!r}')
        check_seconds('echo_timeout', self.echo_timeout)
        check_seconds('resend_interval', self.resend_interval)
        resends = self.resends
        if isinstance(resends, bool) or not isinstance(resends, int) or resends < 0:
            raise ValueError(f'resends must be an integer >= 0, not {resends!r}')

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The options' names, in declaration order.

        Returns
        -------
        tuple of str
            ``('echo_timeout', 'resend_interval', 'resends', 'pause')``.
        """
        return tuple(field.name for field in fields(cls))


def check_seconds(name: str, value: Any) -> None:
    """Raise unless `value` is a number of seconds above 0 (NaN is not).

    Parameters
    ----------
    name : str
        The option's name, for the message.
    value : Any
        The value to check.

    Raises
    ------
    TypeError
        `value` is not a number (a bool is not).
    ValueError
        `value` is not above 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'{name} must be a number of seconds, not {value!r}')
    if not value > 0:
        raise ValueError(f'{name} must be > 0 seconds, not {value!r}')
