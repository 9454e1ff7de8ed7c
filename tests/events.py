"""The core's events, picked by kind: what the tests of the sans-I/O peers ask of a list of events."""
from __future__ import annotations

from typing import Any

from iblnet_sync.core import Event


def events_of(events: list[Event], kind: type) -> list[Any]:
    """The events of one kind, e.g. ``events_of(events, Send)``."""
    return [e for e in events if isinstance(e, kind)]
