"""The requests a main rig makes, declared once: each event with its method name and message builder.

:class:`~iblnet_sync.communicator.Communicator` (one rig) and :class:`~iblnet_sync.services.Services`
(every rig) have one real method per verb, with these names; :meth:`NetworkSession.communicate
<iblnet_sync.session.NetworkSession.communicate>` and the demo find the method of an event here,
and a test holds both classes to this table.

Examples
--------
>>> verb_of('EXPINTERRUPT')
Verb(event=<ExpMessage.EXPINTERRUPT: 16>, method='stop', keywords={'immediately': True})
>>> verb_of('stop').event.name
'EXPEND'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from iblutil.io.net.base import ExpMessage

from . import protocol

__all__ = ['METHODS', 'VERBS', 'Verb', 'verb_of']


@dataclass(frozen=True)
class Verb:
    """One event as the main side asks for it.

    Attributes
    ----------
    event : ExpMessage
        The event of the request (and of the rig's answer).
    method : str
        The name of the method of ``Communicator`` and ``Services`` that sends it.
    build : callable
        The :mod:`~iblnet_sync.protocol` function that makes the datagram from the method's arguments.
    keywords : dict
        The method's keywords that make this event rather than another of the same method
        (``stop(immediately=True)`` sends EXPINTERRUPT).
    """

    event: ExpMessage
    method: str
    build: Callable[..., bytes] = field(repr=False)
    keywords: dict[str, Any] = field(default_factory=dict)


VERBS: tuple[Verb, ...] = (
    Verb(ExpMessage.EXPINFO, 'info', protocol.info_message),
    Verb(ExpMessage.EXPINIT, 'init', protocol.init_message),
    Verb(ExpMessage.EXPSTART, 'start', protocol.start_message),
    Verb(ExpMessage.EXPEND, 'stop', protocol.stop_message),
    Verb(ExpMessage.EXPINTERRUPT, 'stop', protocol.stop_message, {'immediately': True}),
    Verb(ExpMessage.EXPCLEANUP, 'cleanup', protocol.cleanup_message),
    Verb(ExpMessage.EXPSTATUS, 'status', protocol.status_message),
    Verb(ExpMessage.ALYX, 'alyx', protocol.alyx_message),
)
"""Every event, in the order of an experiment's life; a method's first verb is the one its name means."""

METHODS: tuple[str, ...] = tuple(dict.fromkeys(verb.method for verb in VERBS))
"""The method names: ``('info', 'init', 'start', 'stop', 'cleanup', 'status', 'alyx')``."""

_BY_EVENT = {verb.event: verb for verb in VERBS}
_BY_METHOD = {verb.method: verb for verb in reversed(VERBS)}  # (the first verb of each method wins)


def verb_of(message: ExpMessage | int | str) -> Verb:
    """The verb of an event, or of a method name.

    Parameters
    ----------
    message : ExpMessage, int, str
        An event (``ExpMessage``, its code or its name) or a method name ('init', 'stop', ...;
        any case).

    Returns
    -------
    Verb
        The event's verb; for a method name, the verb its name means (EXPEND for 'stop').

    Raises
    ------
    ValueError, TypeError
        `message` is no event, or several OR-ed together.
    """
    if isinstance(message, str) and message.lower() in _BY_METHOD:
        return _BY_METHOD[message.lower()]
    return _BY_EVENT[protocol.as_event(message)]
