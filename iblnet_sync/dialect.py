"""The dialect of two iblnet_sync peers: tags, marks, and the byte tests the core makes.

Everything here is ours, not iblutil's: an iblutil peer never receives a tagged datagram, and
the two marks are bytes that JSON ignores and that iblutil echoes unchanged.

- A *tagged* datagram is ``{"id": ID, "re": REF, "msg": [...]}``: ``ID`` unique per sender, ``REF``
  the request an answer is for (its ID, or the :func:`digest` of a plain request).
- A plain datagram *marked* with :data:`PEER_SUFFIX` (a newline) comes from a rig that runs
  iblnet_sync; one that ends with :data:`RESEND_SUFFIX` (a tab) is a main's resend.
- A main announces itself in its EXPINFO info with :data:`PEER_KEY` (and names the connection
  with :data:`MAIN_KEY`).

Examples
--------
>>> tag(b'[32, 20]', 'r1a2.1', 'm9f.4')
b'{"id": "r1a2.1", "re": "m9f.4", "msg": [32, 20]}'
>>> parse(b'[32, 20]\\n')
Parsed(message=Message(event=<ExpMessage.EXPSTATUS: 32>, data=[20]), msg_id=None, reply_to=None)
>>> is_marked(b'[32, 20]\\n'), is_resend(b'[32, 20]\\t'), is_tagged(b'{"id": "m1.1"}')
(True, True, True)
"""
from __future__ import annotations

import json
import zlib
from typing import NamedTuple

from . import protocol
from .protocol import DecodeError, ExpMessage, Message

__all__ = ['RESEND_SUFFIX', 'PEER_SUFFIX', 'PEER_KEY', 'PEER_VERSION', 'MAIN_KEY', 'MAX_TAG_ID', 'Parsed',
           'tag', 'parse', 'digest', 'announces_peer', 'announced_main', 'is_tagged', 'is_resend', 'is_marked',
           'is_error_report']

RESEND_SUFFIX = b'\t'
"""bytes: ends a main's resend to a rig not yet known to be iblnet_sync (no JSON encoder writes it)."""
PEER_SUFFIX = b'\n'
"""bytes: ends a rig's plain answer: says "this rig runs iblnet_sync" (json.loads ignores it)."""
PEER_KEY = 'iblnet_sync'
"""str: key of a main's EXPINFO info saying "this main runs iblnet_sync" (value: PEER_VERSION)."""
PEER_VERSION = 1
"""int: version of the tagged format that iblnet_sync peers use between themselves."""
MAIN_KEY = 'iblnet_sync_main'
"""str: key of the same EXPINFO info: a random token naming that main (a new one per connection)."""
MAX_TAG_ID = 64
"""int: characters of a tag's ``id`` or ``re`` at most (ours have about 12); a longer one is junk."""


class Parsed(NamedTuple):
    """A decoded datagram, plain (as iblutil sends) or tagged (between iblnet_sync peers).

    Attributes
    ----------
    message : Message
        The event and its data.
    msg_id : str, None
        The tag of a tagged message (unique per sender), None for a plain one.
    reply_to : str, None
        For a tagged answer, the tag (or :func:`digest`) of the request it answers.
    """

    message: Message
    msg_id: str | None = None
    reply_to: str | None = None


def is_tagged(datagram: bytes) -> bool:
    """True for a datagram in the tagged format (a JSON object; iblutil's messages are arrays)."""
    return datagram[:1] == b'{'


def is_resend(datagram: bytes) -> bool:
    """True for a plain datagram spelled as a main's resend (ending with :data:`RESEND_SUFFIX`)."""
    return datagram.endswith(RESEND_SUFFIX)


def is_marked(datagram: bytes) -> bool:
    """True for a plain datagram marked as a rig's (ending with :data:`PEER_SUFFIX`)."""
    return datagram.endswith(PEER_SUFFIX)


def is_error_report(datagram: bytes) -> bool:
    """True for a datagram that :func:`~iblnet_sync.protocol.encode` wrote for an error report (``[0, ...``)."""
    return datagram[1:2] == b'0'


def tag(datagram: bytes, msg_id: str, reply_to: str | None = None) -> bytes:
    """Wrap a plain datagram in the tagged format: ``{"id": ID, "re": REPLY_TO, "msg": [...]}``.

    Only sent to a peer known to run iblnet_sync; an iblutil peer would drop it as not a list.
    """
    return b'{"id": %s, "re": %s, "msg": %s}' % (json.dumps(msg_id).encode(), json.dumps(reply_to).encode(),
                                                  datagram.rstrip())


def digest(datagram: bytes) -> str:
    """A short fingerprint of a plain request, by which a tagged answer names it."""
    return f'{zlib.crc32(datagram.rstrip()):08x}'


def parse(datagram: bytes) -> Parsed:
    """Decode a plain or tagged datagram.

    Raises
    ------
    DecodeError
        Neither a plain message nor a well-formed tagged one.
    """
    if not is_tagged(datagram):
        return Parsed(protocol.decode(datagram))
    value = protocol.loads(datagram)
    if not isinstance(value, dict) or not isinstance(value.get('id'), str):
        raise DecodeError('a JSON object that is not a tagged message')
    reply_to = value.get('re')
    if len(value['id']) > MAX_TAG_ID or (isinstance(reply_to, str) and len(reply_to) > MAX_TAG_ID):
        raise DecodeError(f'a tag longer than {MAX_TAG_ID} characters')  # ours are short; kept ones must be
    return Parsed(protocol.as_message(value.get('msg')), value['id'], reply_to if isinstance(reply_to, str) else None)


def announces_peer(message: Message) -> bool:
    """True for an EXPINFO message whose info says that its sender runs iblnet_sync."""
    info = message.data[1] if message.event is ExpMessage.EXPINFO and len(message.data) > 1 else None
    return isinstance(info, dict) and info.get(PEER_KEY) == PEER_VERSION


def announced_main(message: Message) -> str | None:
    """The token by which an announcing EXPINFO names its main (one per ``Services``), if any."""
    token = message.data[1].get(MAIN_KEY) if announces_peer(message) else None
    return token if isinstance(token, str) else None
