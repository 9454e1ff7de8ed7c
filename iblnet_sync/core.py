"""The conversation with one peer, as pure state machines: no sockets, no threads, no clock.

:class:`MainConversation` is the main rig's side of the conversation with one auxiliary rig;
:class:`RigConversation` is an auxiliary rig's side of the conversation with one main rig.
Each is fed inputs (a datagram received at time ``now``, the timer, a request or an answer
from the application, a failure of the socket) and returns events: :class:`Send` a datagram,
and what happened to the application's exchanges. The caller (an adapter holding the socket)
sends what it is told and calls :meth:`tick` at :attr:`wakeup`. Every rule about echoes,
resends, duplicates, late answers and storms is a row of the tables below, and nowhere else.

Two ways of speaking
--------------------
*Plain*: iblutil's bytes, byte for byte. Every message is echoed by its receiver with the same
bytes; the protocol has no message ids, so an echo is told from a new message by order only.
*Tagged*: between two iblnet_sync peers, each message is wrapped as ``{"id": ID, "re": REF,
"msg": [...]}``. ``ID`` is unique per sender (``m`` or ``r``, a random nonce per conversation
object, a counter), ``REF`` names the request an answer is for. A tag tells an echo (our ID)
from a new message (theirs), a resend or duplicate (an ID seen before) from a new request, and
a late answer (another REF) from the awaited one: no time windows and no guessing.

How two iblnet_sync peers find each other, without sending an iblutil peer anything iblutil
would not send:
- A rig ends each plain answer and error report with a newline
  (:data:`~iblnet_sync.protocol.PEER_SUFFIX`), which JSON ignores and an iblutil main echoes
  unchanged; but for an answer with its request's very bytes, which an iblutil main may take for
  the echo it awaits (when the answer overtakes the echo), as it would iblutil's. A main that
  receives a marked datagram (or any tagged one) tags everything it sends that rig from then on.
- A main's EXPINFO info may say ``"iblnet_sync": 1`` (NetworkSession's does); a rig that reads
  it tags its answer at once, naming the plain request by :func:`~iblnet_sync.protocol.digest`.
- A rig that receives a tagged datagram tags everything it sends that main.

Main side (:class:`MainConversation`): one exchange at a time
------------------------------------------------------------
States of the exchange: IDLE (none), SENT (awaiting the echo), ECHOED (awaiting the answer).

====  ============  ===============================================  ==========================================
row   state         input                                            what happens
====  ============  ===============================================  ==========================================
M1    IDLE          request                                          send (tagged with a new ID once the rig is
                                                                     known to be iblnet_sync); -> SENT; but see M22
M2    SENT          timer, resends left, and nothing of the rig's    send again: the same bytes when tagged, the
                    own heard yet (copies of what we sent do not     plain bytes + tab otherwise
                    count) or the rig known to be iblnet_sync
M3    SENT          timer, tagged, not echoed, resends left          send the same tagged bytes again
M4    SENT          timer, echo_timeout after the last send when no  fail: 'no echo'
                    resend is left or allowed (M2), no echo
M5    SENT/ECHOED   timer, caller's deadline passed                  fail: 'no echo' or 'no response'
M6    SENT          plain datagram equal to a spelling we sent       the echo; -> ECHOED (or done when no answer
                                                                     is expected); other spellings become stale
M7    any           other plain datagram ending with a tab, or equal  late echo: dropped (the answer came before
                    to a request whose echo is owed                  the echo, or a resend's echo did)
M8    any           tagged datagram with our ID                      the echo if it is the current exchange's
                                                                     (M6), else a late echo: dropped
M9    any           tagged datagram with the rig's ID seen before    duplicate or resend: echoed, not delivered
M10   SENT/ECHOED   tagged answer whose REF is the exchange's        echoed; the answer (or error report):
                                                                     done
M11   any           tagged answer with another REF                   late answer: echoed, dropped
M12   any           tagged message without REF                       echoed; the rig's message: delivered
M13   any           plain error report ``[0, TEXT]``, ``[0, TEXT,     never echoed; fails a plain exchange that
                    EVENT]`` or ``[0, TEXT, ORIGINAL]``              it names (no name, its event, or its request
                                                                     in any spelling), else delivered as a message
M14   ECHOED        plain datagram equal to the request, the event   duplicate echo: dropped (such an answer
                    never answered with the same bytes (EXPINFO)     would carry the rig's own info)
M15   SENT/ECHOED   plain message of the exchange's event (EXPSTART:  echoed; the answer (it implies the echo):
                    naming the request's reference)                  done
M16   any           other plain message                              echoed; delivered (iblutil's rule: what is
                                                                     not an awaited echo is new)
M17   any           junk (not a message, or a tag no rig sends: not   dropped, never echoed
                    ``m`` + our nonce or ``r``)
M18   SENT/ECHOED   abort (socket refused, closed, interrupted)      fail with that stage
M19   rig known     plain datagram ending with a newline, not an     a late plain answer: echoed (the rig
      to be         answer to the exchange (plain, M15) in progress  awaits it), not delivered
      iblnet_sync
M20   same          other plain datagram (not an error report), but  a late echo of a plain request of ours, or
                    the exchange's own plain request (its echo, or   a late answer with its bytes: dropped
                    an answer with its bytes, M6/M15)
M21   any           other plain message that came 8 times already,   an echo storm (both ends take the same
                    each copy within 1 s of the one before or with   bytes for new, one datagram or several
                    no request of ours in between, whatever came     in turn): no longer echoed until it has
                    in between                                       been quiet for 1 s and we asked again
M22   IDLE          request to a rig not known to be iblnet_sync,    held (-> HELD: sent by the timer at the end
      (HELD)        less than ``pause`` after the last exchange      of the pause, M2-M5 from then on; the
                    ended                                            caller's deadline still counts, M5)
====  ============  ===============================================  ==========================================

A datagram takes exactly one row: :meth:`MainConversation.receive` tries the rows in this order and
takes the first that matches (``_row`` names it in the code; :data:`ROWS` counts them): plain
datagrams M6, M7, M17, M20, M19, M13, M14, M15, M21, M16; tagged ones M17, M8, M9, M12, M11, M10.
The timer tries M5, M22, M4, M2 or M3.

The pause (M22) is for listeners that re-arm late: iblrig's video program starts waiting for its
next request one event-loop step after it handled the last one, so a request that arrives right
after the echo of its previous answer is echoed but never handled. A rig known to run
iblnet_sync, whose network thread never stops listening, gets no pause.

A plain resend (M2) to a rig not known to run iblnet_sync goes out only while nothing of the
rig's own came back: then either the request was lost (an iblutil rig saw nothing) or its echo
was, and an iblutil main in that case fails too (it takes the rig's answer for a wrong echo and
closes), so the rig is never worse off. Once the rig sent a message of its own (which it may
still await the echo of), plain resends stop. A copy of a datagram we sent it (a duplicate of
its echo, a bounce of ours) tells nothing of the sort and does not stop them. A rig known to run
iblnet_sync takes a resend (+ tab) for what it is, whatever came back.

The storm cut (M21) counts the copies of each datagram in a burst, not in a row and not per
request: two or more datagrams bouncing in turn (peers that have not yet found each other, several
requests duplicated) are a storm as surely as one, and a request of ours does not restart a storm
whose copies are still in flight (with a peer that echoes everything and answers our echoes too, a
restart at each request added up to thousands of datagrams in a lifecycle). An answer to the
exchange in progress (M15) is never cut, and a storm slower than that (a peer that echoes and
answers everything, with handlers that take seconds) ends when no request of ours came in between.
Its price: a rig that sends the same message of its own more than 8 times, each within 1 s of the
one before or with no request of ours in between, loses the echoes of the rest.
An iblutil rig does so in one case, itself a storm of iblutil's making: it takes our echo of its own
duplicated echo for a request, answers it with the same bytes, and so on; the answers that come
after the cut then go unechoed and the rig closes, where iblutil's main, echoing for ever, keeps it
alive until the network loses a copy. No rule can tell those answers from the bounces they are mixed
with (same bytes, same order).

Rig side (:class:`RigConversation`): the last request of one main rig
----------------------------------------------------------------------
States: IDLE, HANDLING (the handler runs), ANSWERED (the answer awaits its echo), DONE.

====  ============  ===============================================  ==========================================
row   state         input                                            what happens
====  ============  ===============================================  ==========================================
R1    any           junk (a tag no main sends: not ``m`` or ``r`` +  dropped, never echoed (junk makes no entry;
                    our nonce), or a plain error report
                                                                     a report is delivered, to be logged)
R2    ANSWERED      datagram equal to our answer (plain), or a       the echo: -> DONE, resends stop
                    tagged one with our answer's ID
R3    any           tagged datagram with our ID, not awaited, a      late echo of one of our answers: dropped
                    plain one ending with a newline, or one equal
                    to an unmarked plain answer (R10) whose echo we
                    stopped awaiting (R12, or superseded; last 4)
R4    any           tagged request with an ID seen before            echoed; not handled again; the answer is
                                                                     sent again if it awaits its echo
R5    any           tagged request with a new ID                     echoed; the current request is superseded
                                                                     (its answer is not sent); -> HANDLING
R6    HANDLING/     the current plain request again, or in another   asked again, a resend, a duplicate or a
R7    ANSWERED      spelling (our main's resend adds a tab)          bounce of our echo: echoed (at most 8
                                                                     times: a bounce loop ends there), never
                                                                     handled again; the answer is sent again
                                                                     to a resend only (in another spelling:
                                                                     that main lacks it)
R8    DONE          the last plain request in another spelling; once a late copy: dropped
                    the main is tagged, any of the last 8
R9    any other     plain request, or one whose EXPINFO info names   echoed; supersedes the current one;
                    a main other than the last announced (a new      -> HANDLING (tagged from now on if its
                    connection at the same address)                  EXPINFO info announces iblnet_sync)
R10   HANDLING      the handler's answer                             sent (plain + newline, but for an answer
                                                                     with the request's bytes; or tagged with
                                                                     REF); -> ANSWERED, or DONE when there is
                                                                     none or it is a plain error report (an
                                                                     answer that leaves no room for the tag:
                                                                     an error report instead)
R11   ANSWERED      timer, tagged, resends left                      the answer is sent again
R12   ANSWERED      timer, deadline passed                           -> DONE (an iblutil rig would close here;
                                                                     we keep serving)
R13   superseded    the handler's answer                             not sent
R14   not working   plain datagram with the very bytes of a request  a bounce of our echo (an iblutil main takes
      on it         we echoed less than 0.2 s ago and handled again  a late copy of our echo for new, and echoes
                    at once already (R9), from a main not known to   it): echoed, 8 times at most since it was
                    be iblnet_sync                                   handled, never handled again
====  ============  ===============================================  ==========================================

:meth:`RigConversation.receive` tries, in this order: plain datagrams R2, R3, R1, R8, R6 or R7, R14,
R9; tagged ones R2 or R3, R4, R5. The timer tries R12, R11; an answer is R10 or R13.

Without R14 one late copy of our echo starts a storm with an iblutil main (or any peer that echoes
what it takes for new): the main echoes the copy, we took that for the same request asked again,
handled it, echoed it, and so on for ever, running the handler hundreds of times a second. With it,
the bounce ends after 8 echoes, and a handler runs at most twice for a request a plain main made once:
the first copy is handled again (byte for byte it is the main asking again, as iblutil's mains do, or
a new connection from the port of the last one), the copies that follow within 0.2 s of our echo are
not. Its price: a plain main that sends the very same request a third time in a row, each within
0.2 s of our echo of the one before, gets the echo but no answer to the third (its call times out;
the main's socket lives on). No program we know of repeats a request that fast; iblrig's main sends
one request every 0.2 s at most.

A rig never resends a plain answer unasked (R11 is for tagged ones), nor to a plain copy of the
request (R7): an iblutil main that asks again or got a copy awaits its echo, and would take the
answer, if it came first, for a wrong echo and close; only our main's resend gets it again.
"""
from __future__ import annotations

import collections
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Union

from iblutil.io.net.base import ExpMessage

from . import protocol
from .errors import Stage
from .protocol import DecodeError, Message

__all__ = ['MainConversation', 'RigConversation', 'Send', 'Echoed', 'Answered', 'Failed', 'Delivered',
           'Handle', 'GaveUp', 'Event', 'RESEND_INTERVAL', 'ECHO_TIMEOUT', 'RESENDS', 'ANSWER_RESENDS', 'PAUSE']
log = logging.getLogger(__name__)

RESEND_INTERVAL = 0.2
"""float: seconds without an echo after which a message is sent again."""
ECHO_TIMEOUT = 1.0
"""float: seconds to wait for an echo once no resend is left (iblutil's default)."""
RESENDS = 50
"""int: how many times a request is sent again at most (10 s at the default interval)."""
PAUSE = 0.005
"""float: seconds between the end of one exchange and the next request to a rig not known to run
iblnet_sync (M22)."""
ANSWER_RESENDS = 50
"""int: how many times a rig sends a tagged answer again while it is not echoed."""
SEEN_IDS = 64
"""int: how many of the peer's message IDs are remembered to recognise duplicates."""
TAG_ROOM = 128
"""int: bytes a tag or a newline may add to a message (an answer that leaves less is refused)."""
REPEAT_WINDOW = 0.2
"""float: seconds after our echo of a plain request within which the same bytes again are a bounce of
that echo, not the main asking again (R14)."""
OWED = 4
"""int: echoes owed at most (of plain requests or answers whose echo may still come late)."""
STORM_ECHOES = 8
"""int: echoes of the same plain bytes in a burst (the main, M21) or of the current request (the rig)
that make a storm."""
STORM_QUIET = 1.0
"""float: seconds without a copy of a datagram after which the main's storm count of it starts again (M21)."""
NEVER_REPEATED = frozenset({ExpMessage.EXPINFO})
"""Events whose answer never has the request's bytes: the answer carries the rig's own info."""


# --- events: what the conversation tells its adapter ---
@dataclass(frozen=True, slots=True)
class Send:
    """Send `datagram` to the peer."""

    datagram: bytes


@dataclass(frozen=True, slots=True)
class Echoed:
    """The echo of exchange `exchange` arrived (or an answer implied it) at time `at`."""

    exchange: int
    at: float


@dataclass(frozen=True, slots=True)
class Answered:
    """Exchange `exchange` ended: the rig's answer data (None when only an echo was expected)."""

    exchange: int
    data: list | None
    at: float


@dataclass(frozen=True, slots=True)
class Failed:
    """Exchange `exchange` failed at `stage` ('no echo', 'no response', 'error report', ...)."""

    exchange: int
    stage: str
    detail: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """The peer sent a message of its own (an error report has event 0): for the callbacks."""

    message: Message


@dataclass(frozen=True, slots=True)
class Handle:
    """Rig side: run the handler for request `request` and pass its answer to ``answer()``."""

    request: int
    message: Message


@dataclass(frozen=True, slots=True)
class GaveUp:
    """Rig side: our answer `datagram` was never echoed."""

    datagram: bytes


Event = Union[Send, Echoed, Answered, Failed, Delivered, Handle, GaveUp]


class _Window:
    """The last `size` message IDs, datagrams or digests: an ordered set with a bound (the oldest goes first)."""

    __slots__ = ('_ids', '_size')

    def __init__(self, size: int = SEEN_IDS):
        self._ids: OrderedDict[str | bytes, None] = OrderedDict()
        self._size = size

    def add(self, msg_id: str | bytes) -> bool:
        """Remember `msg_id`; False if it was seen already."""
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True

    def discard(self, msg_id: str | bytes) -> None:
        """Forget `msg_id` if it is remembered."""
        self._ids.pop(msg_id, None)

    def clear(self) -> None:
        self._ids.clear()

    def __contains__(self, msg_id: str | bytes) -> bool:
        return msg_id in self._ids


ROWS: collections.Counter[str] = collections.Counter()
"""How many datagrams each row of the tables took (the simulator reports which rows a sweep visited)."""
OFF: set[str] = set()
"""Rows switched off by name: a test shows that the simulator notices any of them missing. Empty in use."""


def _row(name: str) -> bool:
    """Take row `name` for the datagram at hand (False when it is switched off: the next row is tried)."""
    if name in OFF:
        return False
    ROWS[name] += 1
    return True


def _parse(data: bytes) -> protocol.Parsed | None:
    try:
        return protocol.parse(data)
    except DecodeError as ex:
        log.debug('dropped datagram %r: %s', data[:60], ex)
        return None


# --- the main side ---
class _Exchange:
    """The main side's current request."""

    __slots__ = ('deadline', 'echo_deadline', 'echo_seen', 'echoed', 'event', 'expect_answer', 'heard', 'held',
                 'next_send', 'plain', 'ref', 'resends_left', 'sent', 'spellings', 'tagged', 'token')

    def __init__(self, token: int, event: ExpMessage, plain: bytes, expect_answer: bool, deadline: float | None):
        self.token, self.event, self.plain, self.expect_answer = token, event, plain, expect_answer
        self.tagged = False               # sent in the tagged format
        self.ref = ''                     # our tag when tagged, else the plain request's digest
        self.spellings: set[bytes] = set()  # every spelling sent: its echo confirms the exchange
        self.sent = b''                   # what goes out on a resend
        self.echoed = self.heard = False
        self.held = False                 # waiting for the pause to end before its first send (M22)
        self.echo_seen: bytes | None = None  # the spelling whose echo came (None: implied or never)
        self.deadline = deadline
        self.resends_left = 0
        self.next_send: float | None = None
        self.echo_deadline: float | None = None


class MainConversation:
    """The main rig's conversation with one auxiliary rig (see the module's table, rows M1-M21).

    Parameters
    ----------
    nonce : str
        A random string unique to this object: makes its tags unique across restarts.
    resend_interval : float
        Seconds without an echo before a request is sent again.
    resends : int
        How many times a request may be sent again (0: never, as iblutil).
    echo_timeout : float
        Seconds to wait for the echo after the last send.
    tagged : bool
        Whether the rig is already known to run iblnet_sync.
    pause : float
        Seconds from the end of an exchange to the next request, toward a rig not known to run
        iblnet_sync (M22).
    """

    def __init__(self, nonce: str, resend_interval: float = RESEND_INTERVAL, resends: int = RESENDS,
                 echo_timeout: float = ECHO_TIMEOUT, tagged: bool = False, pause: float = PAUSE):
        self.resend_interval, self.resends, self.echo_timeout = resend_interval, resends, echo_timeout
        self.tagged, self.pause = tagged, pause
        self._ended: float | None = None  # when the last exchange ended (M22)
        self._prefix = f'm{nonce}.'
        self._count = 0
        self._exchange: _Exchange | None = None
        self._seen = _Window()
        self._owed: list[bytes] = []      # plain requests whose echo may still come after their exchange (each
        #                                   owed once per exchange: the same bytes may be owed twice)
        self._sent = _Window(16)          # the last plain datagrams we sent: their copies coming back are no news
        self._storm: OrderedDict[bytes, tuple[int, float]] = OrderedDict()  # M21: digest -> (echoes, last copy)
        self._requested = float('-inf')  # when our last request went out (M21)

    @property
    def wakeup(self) -> float | None:
        """float: when :meth:`tick` must be called next (None: not needed)."""
        x = self._exchange
        if x is None:
            return None
        times = [t for t in (x.next_send, x.echo_deadline if not x.echoed else None, x.deadline) if t is not None]
        return min(times) if times else None

    # --- inputs ---
    def request(self, plain: bytes, now: float, expect_answer: bool = True,
                deadline: float | None = None) -> list[Event]:
        """Start an exchange (M1): `plain` is the message as iblutil would send it.

        Returns the events (its sends); the Echoed, Answered or Failed events that follow name the
        exchange by the token that :attr:`current` returns now.
        """
        if self._exchange is not None:
            raise RuntimeError('one exchange at a time: the previous one has not ended')
        message = protocol.decode(plain)
        self._count += 1
        x = _Exchange(self._count, message.event, plain, expect_answer, deadline)
        if self.tagged:
            x.tagged, x.ref = True, f'{self._prefix}{self._count}'
            x.sent = protocol.tag(plain, x.ref)
            if len(x.sent) > protocol.MAX_PAYLOAD:
                raise protocol.TooLarge(f'a message of {len(plain):,} bytes leaves no room for the tag')
        else:
            x.ref, x.sent = protocol.digest(plain), plain
        x.resends_left = self.resends
        self._exchange = x
        if not self.tagged and self._ended is not None and now < self._ended + self.pause and _row('M22'):
            x.held, x.next_send = True, self._ended + self.pause
            return []
        _row('M1')
        return self._first_send(x, now)

    @property
    def current(self) -> int | None:
        """int: the token of the exchange in progress."""
        return None if self._exchange is None else self._exchange.token

    def tick(self, now: float) -> list[Event]:
        """The timer (M2-M5, M22): resend, or fail what is overdue."""
        x = self._exchange
        if x is None:
            return []
        if x.deadline is not None and now >= x.deadline and _row('M5'):
            return self._give_up(x, now)
        if x.held:
            return self._first_send(x, now) if x.next_send is not None and now >= x.next_send else []
        if not x.echoed and x.echo_deadline is not None and now >= x.echo_deadline and _row('M4'):
            return self._give_up(x, now)
        if x.next_send is not None and now >= x.next_send:
            if (not x.echoed and (x.tagged or self.tagged or not x.heard) and x.resends_left > 0
                    and _row('M3' if x.tagged else 'M2')):
                x.resends_left -= 1
                if not x.tagged:
                    x.sent = x.plain + protocol.RESEND_SUFFIX
                x.spellings.add(x.sent)
                self._schedule(x, now)
                return [Send(x.sent)]
            x.next_send = None  # M4: no resend now; the echo is awaited echo_timeout more at most
            if not x.echoed and x.echo_deadline is None:
                x.echo_deadline = now + self.echo_timeout
        return []

    def abort(self, stage: str, detail: str, now: float | None = None) -> list[Event]:
        """End the exchange in progress with a failure (M18): refused, closed, interrupted."""
        x = self._exchange
        if x is None:
            return []
        _row('M18')
        self._end(x, now)
        return [Failed(x.token, stage, detail)]

    def give_up(self, now: float) -> list[Event]:
        """End the exchange in progress as timed out now (the caller's deadline passed)."""
        x = self._exchange
        return [] if x is None else self._give_up(x, now)

    def receive(self, data: bytes, now: float) -> list[Event]:
        """A datagram from the rig (M6-M21)."""
        x = self._exchange if self._exchange is None or not self._exchange.held else None
        if data[:1] == b'{':
            return self._receive_tagged(data, x, now)
        if x is not None and not x.echoed and data in x.spellings and _row('M6'):
            x.echo_seen = data
            return self._echoed(x, now)
        if (data.endswith(protocol.RESEND_SUFFIX) or data in self._owed) and _row('M7'):
            if data in self._owed:
                self._owed.remove(data)
            return []
        parsed = _parse(data)
        if parsed is None:
            _row('M17')
            return []
        message, from_peer = parsed.message, data.endswith(protocol.PEER_SUFFIX)
        self.tagged = self.tagged or from_peer
        if x is not None and data not in self._sent:  # the rig sent a message of its own (M2)
            x.heard = True
        # an iblnet_sync rig sends plain only echoes, answers to plain requests, and error reports
        plain_x = x if x is not None and not x.tagged else None
        mine = self.tagged and message.event != protocol.ERROR_CODE
        if mine and not from_peer and (plain_x is None or data != plain_x.plain) and _row('M20'):
            return []  # a late echo of ours
        if mine and from_peer and (plain_x is None or not _answers(plain_x, message)) and _row('M19'):
            return [Send(data)]  # a late plain answer
        if message.event == protocol.ERROR_CODE and _row('M13'):
            return self._error_report(x if x is None or not x.tagged else None, message, now)
        if x is not None and x.echoed and data == x.plain and x.event in NEVER_REPEATED and _row('M14'):
            return []
        if x is not None and _answers(x, message) and _row('M15'):
            self._sent.add(data)
            return [Send(data)] + self._answered(x, message.data, now)
        if self._stormed(data, now) and _row('M21'):
            return []
        self._sent.add(data)
        return [Send(data), Delivered(message)] if _row('M16') else []

    # --- internals ---
    def _first_send(self, x: _Exchange, now: float) -> list[Event]:
        """Send exchange `x`'s request for the first time (M1, or M22 when the pause ends)."""
        x.held = False
        if not x.tagged:
            self._sent.add(x.plain)
        x.spellings.add(x.sent)
        self._requested = now
        if x.plain in self._owed:  # from now on these bytes are this exchange's echo
            self._owed.remove(x.plain)
        self._schedule(x, now)
        return [Send(x.sent)]

    def _receive_tagged(self, data: bytes, x: _Exchange | None, now: float) -> list[Event]:
        parsed = _parse(data)
        # (another main's tag, or none of a rig: a stranger's, echoed back to us or forged)
        if parsed is None or parsed.msg_id is None or not (parsed.msg_id.startswith(self._prefix)
                                                           or parsed.msg_id[:1] == 'r'):
            _row('M17')
            return []
        self.tagged = True
        if parsed.msg_id.startswith(self._prefix) and _row('M8'):
            if x is not None and not x.echoed and parsed.msg_id == x.ref:
                return self._echoed(x, now)
            return []
        if x is not None:
            x.heard = True
        events: list[Event] = [Send(data)]  # tagged datagrams are always echoed: echoes are never re-echoed
        if not self._seen.add(parsed.msg_id) and _row('M9'):
            return events
        message = parsed.message
        if parsed.reply_to is None and _row('M12'):
            return events + [Delivered(message)]
        if (x is None or parsed.reply_to != x.ref) and _row('M11'):
            log.debug('late answer %r dropped', data[:60])
            return events
        if x is None or not _row('M10'):
            return events
        if message.event == protocol.ERROR_CODE:
            return events + self._error_report(x, message, now, matched=True)
        return events + self._answered(x, message.data, now)

    def _stormed(self, data: bytes, now: float) -> bool:
        """Count a copy of the rig's plain message `data`: True once it has come more than STORM_ECHOES
        times, each within STORM_QUIET of the one before or with no request of ours in between (M21)."""
        key = _key(data)
        echoes, last = self._storm.pop(key, (0, now))
        echoes = 1 if now - last > STORM_QUIET and self._requested > last else echoes + 1
        self._storm[key] = (echoes, now)
        if len(self._storm) > SEEN_IDS:  # (a bound: a storm is a few datagrams bouncing)
            self._storm.popitem(last=False)
        if echoes == STORM_ECHOES + 1:
            log.warning('echo storm: %r came %d times in a burst; no longer echoed', data[:60], STORM_ECHOES + 1)
        return echoes > STORM_ECHOES

    def _schedule(self, x: _Exchange, now: float) -> None:
        x.next_send = now + self.resend_interval if x.resends_left > 0 else None
        x.echo_deadline = None if x.resends_left > 0 else now + self.echo_timeout

    def _echoed(self, x: _Exchange, now: float) -> list[Event]:
        x.echoed = x.heard = True
        x.next_send = None
        if not x.expect_answer:
            self._end(x, now)
            return [Echoed(x.token, now), Answered(x.token, None, now)]
        return [Echoed(x.token, now)]

    def _answered(self, x: _Exchange, data: list, now: float) -> list[Event]:
        events: list[Event] = [] if x.echoed else [Echoed(x.token, now)]
        x.echoed = True
        self._end(x, now)
        return events + [Answered(x.token, data, now)]

    def _error_report(self, x: _Exchange | None, message: Message, now: float, matched: bool = False) -> list[Event]:
        if x is not None and (matched or _is_about(x, message)):
            self._end(x, now)
            return [Failed(x.token, Stage.ERROR_REPORT, str(message.data[0]))]
        return [Delivered(message)]

    def _give_up(self, x: _Exchange, now: float) -> list[Event]:
        self._end(x, now)
        if x.echoed:
            return [Failed(x.token, Stage.NO_RESPONSE, 'echoed but no answer')]
        return [Failed(x.token, Stage.NO_ECHO, 'no echo')]

    def _end(self, x: _Exchange, now: float | None = None) -> None:
        """Forget the exchange; a plain echo that may still come is remembered as owed."""
        self._exchange = None
        self._ended = now
        if x.held:
            return
        if not x.tagged and x.echo_seen != x.plain:
            self._owed = (self._owed + [x.plain])[-OWED:]


def _is_about(x: _Exchange, report: Message) -> bool:
    """Plain error report `report` is about exchange `x`: it names no request, or x's event, or x's request."""
    named = protocol.reported_request(report)
    if named is None:
        return True
    if isinstance(named, bytes):
        return named == protocol.canonical(protocol.decode(x.plain))
    return type(named) is int and named == int(x.event)


def _answers(x: _Exchange, message: Message) -> bool:
    """`message` can be the answer to plain exchange `x`: the same event and, for EXPSTART, the same reference."""
    if not x.expect_answer or message.event != x.event:
        return False
    return x.event is not ExpMessage.EXPSTART or message.data[:1] == protocol.decode(x.plain).data[:1]


# --- the rig side ---
IDLE, HANDLING, ANSWERED, DONE = 'IDLE', 'HANDLING', 'ANSWERED', 'DONE'


class RigConversation:
    """An auxiliary rig's conversation with one main rig address (rows R1-R13).

    Parameters
    ----------
    nonce : str
        A random string unique to this rig: makes its tags unique across restarts.
    resend_interval : float
        Seconds between sends of a tagged answer that is not echoed.
    resends : int
        How many times a tagged answer is sent again.
    echo_timeout : float
        Seconds a plain answer waits for its echo.
    """

    def __init__(self, nonce: str, resend_interval: float = RESEND_INTERVAL, resends: int = ANSWER_RESENDS,
                 echo_timeout: float = ECHO_TIMEOUT):
        self.resend_interval, self.resends, self.echo_timeout = resend_interval, resends, echo_timeout
        self.tagged = False               # the main runs iblnet_sync
        self.state = IDLE
        self._prefix = f'r{nonce}.'
        self._count = 0
        self._request = 0                 # token of the current request
        self._plain = b''                 # the current plain request (no suffix)
        self._ref: str | None = None      # what our answer names: the request's tag or digest
        self._answer = b''                # our answer, while it awaits its echo
        self._answer_id: str | None = None
        self._resends_left = 0
        self._next_send: float | None = None
        self._deadline: float | None = None
        self._seen = _Window()
        self._repeats = 0                 # copies of the current plain request received (R6, R7)
        self._plains = _Window(8)         # digests of the last plain requests (R8)
        self._echoes: OrderedDict[bytes, tuple[float, int, bool]] = OrderedDict()  # R14: digest -> (last echo,
        #                                                               echoes, handled again at once)
        self._main: str | None = None     # the token of the main that announced itself (R9)
        self._owed: list[bytes] = []      # plain answers whose echo may still come, though we moved on (R3)

    @property
    def wakeup(self) -> float | None:
        """float: when :meth:`tick` must be called next (None: not needed)."""
        if self.state != ANSWERED:
            return None
        times = [t for t in (self._next_send, self._deadline) if t is not None]
        return min(times) if times else None

    def is_current(self, request: int) -> bool:
        """bool: `request` has not been superseded by a newer one (its handler may run)."""
        return request == self._request and self.state == HANDLING

    def receive(self, data: bytes, now: float) -> list[Event]:
        """A datagram from the main rig (R1-R9, R14)."""
        if self.state == ANSWERED and data == self._answer and _row('R2'):  # plain
            self.state = DONE
            return []
        # only a rig ends a datagram with a newline: a late echo of ours; or the late echo of an answer we
        # gave up on, or of a superseded request's
        if (data.endswith(protocol.PEER_SUFFIX) or data in self._owed) and _row('R3'):
            if data in self._owed:
                self._owed.remove(data)
            return []
        parsed = _parse(data)
        stranger = parsed is not None and parsed.msg_id is not None and not (
            parsed.msg_id[:1] == 'm' or parsed.msg_id.startswith(self._prefix))  # a tag no main sends
        if parsed is None or stranger or (parsed.msg_id is None and parsed.message.event == protocol.ERROR_CODE):
            _row('R1')
            report = parsed is not None and not stranger  # (the adapter logs a report)
            return [Delivered(parsed.message)] if report and parsed is not None else []
        if parsed.msg_id is not None:
            return self._receive_tagged(data, parsed, now)
        stripped = protocol.canonical(parsed.message)  # any other spelling is a resend
        main = protocol.announced_main(parsed.message)
        if main is not None and main != self._main:  # R9: another main at this address: no copy of ours
            self._main, self._plain = main, b''
            self._plains.clear()
            self._echoes.clear()
        if stripped == self._plain or (self.tagged and _key(stripped) in self._plains):
            open_ = stripped == self._plain and self.state in (HANDLING, ANSWERED)
            if ((self.tagged and not open_) or (not open_ and data != stripped)) and _row('R8'):
                return []
            if open_ and _row('R6' if data == stripped else 'R7'):  # asked again while we work on it, or a
                self._repeats += 1                                  # bounce of our echo (counted)
                if self._repeats > STORM_ECHOES:
                    return []
                events: list[Event] = [self._echo(data, now, self._repeats)]
                if self.state == ANSWERED and data != stripped:  # our main's resend: it lacks the answer
                    events.append(Send(self._answer))
                return events
        echoed_at, echoes, again = self._echoes.get(_key(data), (float('-inf'), 0, False))
        recent = now - echoed_at < REPEAT_WINDOW
        if not self.tagged and recent and again and _row('R14'):  # a bounce of our echo
            if echoes + 1 > STORM_ECHOES:  # silent: the bounce ends, and the window runs out
                self._echoes[_key(data)] = (echoed_at, echoes + 1, True)
                return []
            return [self._echo(data, now, echoes + 1)]
        if not _row('R9'):
            return []
        if protocol.announces_peer(parsed.message):  # (asked again at once: once, then R14)
            self.tagged = True
        echo = self._echo(data, now, echoes if recent else 0, again=recent)
        return [echo] + self._new_request(stripped, protocol.digest(stripped), parsed.message)

    def answer(self, request: int, answer: bytes | None, now: float) -> list[Event]:
        """The handler of `request` finished (R10, R13): `answer` is a plain datagram or None."""
        if not self.is_current(request):
            _row('R13')
            return []
        _row('R10')
        if answer is None:
            self.state = DONE
            return []
        if len(answer) + TAG_ROOM > protocol.MAX_PAYLOAD and answer[1:2] != b'0':  # the tag would not fit
            error = protocol.TooLarge(f'an answer of {len(answer):,} bytes leaves no room for the tag')
            answer = protocol.error_report(error, protocol.decode(answer).event)
        if self.tagged:
            self._count += 1
            self._answer_id = f'{self._prefix}{self._count}'
            self._answer = protocol.tag(answer, self._answer_id, self._ref)
            self._resends_left = self.resends
            self._next_send = now + self.resend_interval
            self._deadline = now + self.resend_interval * (self.resends + 1)
        elif answer[1:2] == b'0':  # a plain error report is never echoed
            self.state = DONE
            return [Send(answer + protocol.PEER_SUFFIX)]
        else:  # marked, but for an answer with the request's bytes: an iblutil main may take it for the echo
            self._answer_id = None
            self._answer = answer if answer == self._plain else answer + protocol.PEER_SUFFIX
            self._next_send, self._deadline = None, now + self.echo_timeout
            if answer == self._plain and _key(answer) in self._echoes:  # its copies look like the request's:
                echoed_at, echoes, again = self._echoes[_key(answer)]      # R14's window runs from now
                self._echoes[_key(answer)] = (now, echoes, again)
        self.state = ANSWERED
        return [Send(self._answer)]

    def tick(self, now: float) -> list[Event]:
        """The timer (R11, R12)."""
        if self.state != ANSWERED:
            return []
        if self._deadline is not None and now >= self._deadline and _row('R12'):
            self._owe_echo()
            self.state = DONE
            return [GaveUp(self._answer)]
        if self._next_send is not None and now >= self._next_send and self._resends_left > 0 and _row('R11'):
            self._resends_left -= 1
            self._next_send = now + self.resend_interval
            return [Send(self._answer)]
        return []

    # --- internals ---
    def _receive_tagged(self, data: bytes, parsed: protocol.Parsed, now: float) -> list[Event]:
        self.tagged = True
        msg_id = parsed.msg_id or ''
        if msg_id.startswith(self._prefix):
            if self.state == ANSWERED and msg_id == self._answer_id and _row('R2'):
                self.state = DONE
            else:
                _row('R3')
            return []
        if not self._seen.add(msg_id) and _row('R4'):
            return [Send(data), Send(self._answer)] if self.state == ANSWERED else [Send(data)]
        if not _row('R5'):
            return []
        return [Send(data)] + self._new_request(b'', msg_id, parsed.message)

    def _echo(self, data: bytes, now: float, count: int, again: bool | None = None) -> Send:
        """Echo a plain request of the main's, remembering when, how often, and whether it was handled
        again at once (R14)."""
        key = _key(data)
        if again is None:
            again = key in self._echoes and self._echoes[key][2]
        self._echoes[key] = (now, count, again)
        self._echoes.move_to_end(key)
        if len(self._echoes) > SEEN_IDS:  # (a peer may keep many requests bouncing at once)
            self._echoes.popitem(last=False)
        return Send(data)

    def _owe_echo(self) -> None:
        """We stop waiting for the echo of our plain answer: should it still come, it is no request."""
        if self.state == ANSWERED and self._answer_id is None and not self._answer.endswith(protocol.PEER_SUFFIX):
            self._owed = (self._owed + [self._answer])[-OWED:]  # (a marked answer's echo is told by its newline)

    def _new_request(self, plain: bytes, ref: str, message: Message) -> list[Event]:
        self._owe_echo()
        self._request += 1
        self._repeats = 0
        if plain:
            self._plain = plain  # the last plain request: its copies may still arrive
            self._plains.add(_key(plain))
        self._ref = ref
        self._answer, self._answer_id = b'', None
        self.state = HANDLING
        return [Handle(self._request, message)]


def _key(datagram: bytes) -> bytes:
    """A short fingerprint of a datagram, so that remembering one costs 16 bytes whatever its size."""
    return hashlib.blake2b(datagram, digest_size=16).digest()


def events_of(events: list[Event], kind: type) -> list[Any]:
    """The events of one kind, e.g. ``events_of(events, Send)``."""
    return [e for e in events if isinstance(e, kind)]
