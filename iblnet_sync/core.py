"""The conversation with one peer, as pure state machines: no sockets, no threads, no clock.

:class:`MainConversation` is the main rig's side of the conversation with one auxiliary rig;
:class:`RigConversation` is an auxiliary rig's side of the conversation with one main rig.
Each is fed inputs (a datagram received at time ``now``, the timer, a request or an answer
from the application, a failure of the socket) and returns events: :class:`Send` a datagram,
and what happened to the application's exchanges. The caller (an adapter holding the socket)
sends what it is told and calls :meth:`tick` at :attr:`wakeup`. Every rule about echoes,
resends, duplicates, late answers and storms is a row of the tables below, and nowhere else. In
the code the rows of a received datagram are data (:data:`MAIN_ROWS`, :data:`RIG_ROWS`: a name,
when the row applies, what it does), in the order of the tables; the first row that applies acts,
and :data:`ROWS` counts the rows taken.

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
  (:data:`~iblnet_sync.dialect.PEER_SUFFIX`), which JSON ignores and an iblutil main echoes
  unchanged; but for an answer with its request's very bytes, which an iblutil main may take for
  the echo it awaits (when the answer overtakes the echo), as it would iblutil's. A main that
  receives a marked datagram (or any tagged one) tags everything it sends that rig from then on.
- A main's EXPINFO info may say ``"iblnet_sync": 1`` (NetworkSession's does); a rig that reads
  it tags its answer at once, naming the plain request by :func:`~iblnet_sync.dialect.digest`.
- A rig that receives a tagged datagram tags everything it sends that main.

Main side (:class:`MainConversation`): one exchange at a time
------------------------------------------------------------
States of the exchange: IDLE (none), SENT (awaiting the echo), ECHOED (awaiting the answer). Each
input has its table; its rows are tried in the order they stand, and the first that applies acts.

A request of the application (:meth:`~MainConversation.request`):

====  ============  ===============================================  ==========================================
row   state         input                                            what happens
====  ============  ===============================================  ==========================================
M22   IDLE          request to a rig not known to be iblnet_sync,    held (-> HELD: sent by the timer at the end
      (HELD)        less than ``pause`` after the last exchange      of the pause, M2-M5 from then on; the
                    ended                                            caller's deadline still counts, M5)
M1    IDLE          request                                          send (tagged with a new ID once the rig is
                                                                     known to be iblnet_sync); -> SENT
====  ============  ===============================================  ==========================================

The timer (:meth:`~MainConversation.tick`), and an abort (:meth:`~MainConversation.abort`):

====  ============  ===============================================  ==========================================
M5    SENT/ECHOED   caller's deadline passed                         fail: 'no echo' or 'no response'
M22   HELD          the pause is over                                the request is sent (as M1)
M4    SENT          echo_timeout after the last send when no resend  fail: 'no echo'
                    is left or allowed (M2), no echo
M2    SENT          resends left, and nothing of the rig's own       send again: the plain bytes + tab
                    heard yet (copies of what we sent do not count)
                    or the rig known to be iblnet_sync
M3    SENT          tagged, not echoed, resends left                 send the same tagged bytes again
M18   SENT/ECHOED   abort (socket refused, closed, interrupted)      fail with that stage
====  ============  ===============================================  ==========================================

A plain datagram from the rig (:meth:`~MainConversation.receive`, :data:`MAIN_ROWS` ``'plain'``): first
the rows that look at its bytes only,

====  ============  ===============================================  ==========================================
M6    SENT          equal to a spelling we sent                      the echo; -> ECHOED (or done when no answer
                                                                     is expected); other spellings become stale
M7    any           ending with a tab, or equal to a request whose   late echo: dropped (the answer came before
                    echo is owed                                     the echo, or a resend's echo did)
M17   any           junk: not a message                              dropped, never echoed
====  ============  ===============================================  ==========================================

then, once the message taught what it tells (a newline: the rig runs iblnet_sync; anything but a copy
of what we sent: the rig sent something of its own, M2), the rows that read it:

====  ============  ===============================================  ==========================================
M20   rig known     not ending with a newline, not an error report,  a late echo of a plain request of ours, or
      to be         but the exchange's own plain request (its echo,  a late answer with its bytes: dropped
      iblnet_sync   or an answer with its bytes, M6/M15)
M19   same          ending with a newline, not an answer to the      a late plain answer: echoed (the rig
                    exchange (plain, M15) in progress, not an error  awaits it), not delivered
                    report
M13   any           error report ``[0, TEXT]``, ``[0, TEXT, EVENT]``  never echoed; fails a plain exchange that
                    or ``[0, TEXT, ORIGINAL]``                       it names (no name, its event, or its request
                                                                     in any spelling), else delivered as a message
M14   ECHOED        equal to the request, the event never answered   duplicate echo: dropped (such an answer
                    with the same bytes (EXPINFO)                    would carry the rig's own info)
M15   SENT/ECHOED   a message of the exchange's event (EXPSTART:     echoed; the answer (it implies the echo):
                    naming the request's reference)                  done
M21   any           a message whose copies in a burst (each within   an echo storm (both ends take the same
                    1 s of the one before, or with no request of     bytes for new, one datagram or several
                    ours in between) are more than 8, counting all   in turn): not echoed; the first copy after
                    but the first copy after each request of ours    a request of ours is (the count starts
                    (which may answer it); or the 2nd or 4th or      again after 1 s of quiet and a request);
                    later copy in a run, each within 4 round trips   one line logged a burst (a bounce: the
                    (20 ms to 0.1 s; 0.1 s until one is known) of    rig's echo of our echo, or a network
                    the one before (the first: the message or the    duplicate, which nobody awaits; not
                    answer), no request of ours in between, that     logged)
                    answers none of the last 4 requests we gave up
                    on; or a new message while 64 bursts, all
                    live, fill the table
M16   any           any other message                                echoed; delivered (iblutil's rule: what is
                                                                     not an awaited echo is new)
====  ============  ===============================================  ==========================================

A tagged datagram from the rig (:data:`MAIN_ROWS` ``'tagged'``): first

====  ============  ===============================================  ==========================================
M17   any           junk: not a message, or a tag no rig sends (not  dropped, never echoed
                    ``m`` + our nonce or ``r``)
====  ============  ===============================================  ==========================================

then, once it taught that the rig runs iblnet_sync,

====  ============  ===============================================  ==========================================
M8    any           with our ID                                      the echo if it is the current exchange's
                                                                     (M6), else a late echo: dropped
M9    any           with the rig's ID seen before                    duplicate or resend: echoed (a bounce cap:
                                                                     as R6), not delivered
M12   any           a message without REF                            echoed; the rig's message: delivered
M11   any           an answer with another REF than the exchange's   late answer: echoed, dropped
                    (or with no exchange in progress)
M10   SENT/ECHOED   an answer whose REF is the exchange's            echoed; the answer (or error report):
                                                                     done
====  ============  ===============================================  ==========================================

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
restart at each request added up to thousands of datagrams in a lifecycle). But the first copy after
each request of ours is echoed and not counted: it may be that request's answer (an echo-only
request answered by a message of the rig's own, as iblutil's ``confirmed_send`` with ``on_event``
polls; an answer after the caller's deadline). Requests are counted, not timed: a clock that ticks
every 15.6 ms (Windows before Python 3.13) puts a poll and the last answer at the same time. An
answer to the exchange in progress (M15) is never counted; a storm slower than 1 s (a peer that
echoes and answers everything, with handlers that take seconds) ends when no request of ours came
in between; the table remembers 64 bursts, and forgets one only after 1 s without a copy (so that
more datagrams bouncing than it holds cannot each start again at 1). So whatever the peer, each of
our requests lets at most one echo through per stormed datagram.

A bounce is cut at once: a peer that echoes what it takes for new (iblutil's rig, iblrig's video
program, a peer that echoes everything) sends our echo straight back, within a round trip, and awaits
no echo of that. So in a run of copies of one message, each within the bounce window of the one before
and with no request of ours in between, only the 1st and the 3rd are echoed. The window is four round
trips (``BOUNCE_ROUND_TRIPS``) of the slowest of the last 8 requests whose first send was echoed, 20 ms
at least (``BOUNCE_FLOOR``: a clock that ticks every 15.6 ms measures a quick round trip as 0), and
0.1 s at most and until a round trip is known (``BOUNCE_WINDOW``): on a lab's network, 20 ms (on
Windows before Python 3.13, whose clock ticks every 15.6 ms, 62.4 ms once a quick round trip spans a
tick). But a copy that may answer one of the last 4 requests that the rig echoed and we gave up on
(the caller's deadline passed before the answer) is echoed wherever it comes, once per such request: an
iblutil rig answers every request it took, however late, and awaits each echo, and the answers to polls
that timed out are alike and may come as close together as their handlers end. The 1st is
the message (or the exchange's answer, M15, which is not counted in a burst but remembered); the 2nd is
the peer's echo of our echo, or a network duplicate; the 3rd may be the rig's answer to a copy of our
echo that it took for a request, which it awaits and which often has the very same bytes (an iblutil
rig answers any EXPINIT with ``[1, 10, null]``, a copy of that answer included); anything after is a
bounce again. The place in the run is the order of arrival, not the clock's (a clock that ticks every
15.6 ms gives a whole run one time). An iblutil rig that gets a network duplicate of our echo of its
answer takes it for a request, echoes it and handles it again. Were that bounce echoed up to the storm
cut, each echo would be one more handler run with an answer of its own (one more echo for the network
to duplicate: on a network that duplicates a tenth of the datagrams, close to one new bounce per
bounce), and the rig would close at the cut, awaiting an echo past it. As it is, the rig runs its
handler once per network duplicate (iblutil's own rule, which no main can change), and each run of
quick copies draws two echoes at most, and one more per request given up on whose answer it may be.

Its price: a rig that sends the same bytes twice within the bounce window (an answer, then a message of
its own; two answers of two handler runs, as an iblutil rig gives when it took our resend and the request
both), with no request of ours in between, loses the echo of the second; a bounce slower than the window
(a rig that echoes our echo late, busy after its answer) is echoed as a new message, as iblutil's main
echoes it, and may go on to the storm cut below; an answer owed to a request given up on before the
last 4 is told by the window alone, and an owed answer that never comes (lost by the network, or by
iblrig's video program, which echoes a request it is too busy to take) lets one bounce through; a rig that
sends the same message of its own more than 8 times, with at most one of those copies after each
request of ours, and each within 1 s of the one before (or at any pace while we ask nothing: a status
pushed every few minutes through a run in which the main sends nothing), loses the echoes of the rest;
a rig that sends more than 64 different messages of its own within 1 s, none answering a request of
ours, loses the echoes of the newest. An iblutil rig closes when an echo it awaits does not come. No
program we know of does any of these (iblutil has no heartbeat, Timeline and iblrig's programs speak
when spoken to) but in cases of iblutil's making, where no rule can tell the answers from the bounces
they are mixed with (same bytes, same order): the iblutil rig above, when the network also loses its
echo of the copy, or duplicates it, or delivers it after the answer, so that its answer comes 2nd or
4th in the run; and an iblutil rig that takes our echo of its own duplicated echo for a request,
answers it with the same bytes, and so on, whose answers after the cut go unechoed. The rig then
closes; iblutil's main, which echoes everything, keeps it alive (storming, in the second case, until
the network loses a copy).

Rig side (:class:`RigConversation`): the last request of one main rig
----------------------------------------------------------------------
States: IDLE, HANDLING (the handler runs), ANSWERED (the answer awaits its echo), DONE. As on the main
side, each input has its table, tried in order.

A datagram from the main (:meth:`~RigConversation.receive`, :data:`RIG_ROWS`): first, whatever it is,

====  ============  ===============================================  ==========================================
row   state         input                                            what happens
====  ============  ===============================================  ==========================================
R2    ANSWERED      equal to our answer                              the echo: -> DONE, resends stop
R3    any           ending with a newline, or equal to an unmarked   late echo of one of our answers: dropped
                    plain answer (R10) whose echo we stopped
                    awaiting (R12, or superseded; last 4)
R1    any           junk, a tag no main sends (not ``m`` or ``r`` +  dropped, never echoed (junk makes no entry;
                    our nonce), or a plain error report              a report is delivered, to be logged)
====  ============  ===============================================  ==========================================

then, once it taught what it tells (a tag: the main runs iblnet_sync; an EXPINFO naming another main
than the last announced: a new connection at this address, whose requests are no copies of the
last one's), a tagged datagram:

====  ============  ===============================================  ==========================================
R2    ANSWERED      with our answer's ID                             the echo: -> DONE, resends stop
R3    any           with our ID, not awaited                         late echo of one of our answers: dropped
R4    any           a request with an ID seen before                 echoed (a bounce cap: as R6); not handled
                                                                     again; the answer is sent again if it
                                                                     awaits its echo (to the first 8 copies)
R5    any           a request with a new ID                          echoed; the current request is superseded
                                                                     (its answer is not sent); -> HANDLING
====  ============  ===============================================  ==========================================

or a plain one:

====  ============  ===============================================  ==========================================
R8    DONE          the last request in another spelling; once the   a late copy: dropped
                    main is tagged, any of the last 8
R6    HANDLING/     the current request again                        asked again, a duplicate or a bounce of our
      ANSWERED                                                       echo: echoed (8 times; then a copy 0.1 s
                                                                     or more after our last echo, and one
                                                                     that follows a copy left unechoed, up to
                                                                     16: a bounce ends), never handled again
R7    HANDLING/     the current request in another spelling (our     a resend: as R6, and the answer is sent
      ANSWERED      main's resend adds a tab)                        again (that main lacks it; to the first
                                                                     8 copies only)
R14   not working   the very bytes of a request we echoed less than  a bounce of our echo (an iblutil main takes
      on it         0.2 s ago and handled again at once already      a late copy of our echo for new, and echoes
                    (R9), from a main not known to be iblnet_sync    it): echoed, 8 times at most since it was
                                                                     handled, never handled again
R9    any other     a request                                        echoed; supersedes the current one;
                                                                     -> HANDLING (tagged from now on if its
                                                                     EXPINFO info announces iblnet_sync)
====  ============  ===============================================  ==========================================

The handler's answer (:meth:`~RigConversation.answer`), and the timer (:meth:`~RigConversation.tick`):

====  ============  ===============================================  ==========================================
R13   superseded    the handler's answer                             not sent
R10   HANDLING      the handler's answer                             sent (plain + newline, but for an answer
                                                                     with the request's bytes; or tagged with
                                                                     REF); -> ANSWERED, or DONE when there is
                                                                     none or it is a plain error report (an
                                                                     answer that leaves no room for the tag:
                                                                     an error report instead)
R12   ANSWERED      timer, deadline passed                           -> DONE (an iblutil rig would close here;
                                                                     we keep serving)
R11   ANSWERED      timer, tagged, resends left                      the answer is sent again
====  ============  ===============================================  ==========================================

Without R14 one late copy of our echo starts a storm with an iblutil main (or any peer that echoes
what it takes for new): the main echoes the copy, we took that for the same request asked again,
handled it, echoed it, and so on for ever, running the handler hundreds of times a second. With it,
the bounce ends after 8 echoes, and a handler runs at most twice for a request a plain main made once:
the first copy is handled again (byte for byte it is the main asking again, as iblutil's mains do, or
a new connection from the port of the last one), the copies that follow within 0.2 s of our echo are
not. Its price: a plain main that sends the very same request a third time in a row, each within
0.2 s of our echo of the one before, gets the echo but no answer to the third (its call times out;
the main's socket lives on). No program we know of repeats a request that fast; iblrig's main sends
one request every 0.2 s at most. Its limit: a bounce slower than that (a peer that echoes everything,
0.2 s or more away) is, byte for byte and in pace, a main polling the same request, and the rig
handles each copy as it would each poll: one handler run per round trip, for as long as the peer
keeps bouncing (on a lab's network a round trip takes a millisecond).

The bounce cap (R4, R6, R7, M9): a peer that echoes what it does not await bounces our echo of a
copy back, and that is the same message again. So the copies of one message (the current plain
request for R6 and R7, counted anew for each handler run; a tagged ID among the last 64 seen for R4
and M9) are echoed 8 times; after that, a copy that comes 0.1 s or more after our last echo of the
message (a bounce of our echo comes back within a round trip: this is the peer asking again), and
one that follows a copy left unechoed (no echo of ours is out to come back: the peer asking again, or
a network duplicate) until 16 echoes in all, spaced ones included. A bounce ends at the first copy
left unechoed; one that the network keeps alive by duplicating (two copies come back for each echo)
ends at 16 echoes; one slower than 0.1 s a round trip is a poll, byte for byte and in pace, and gets
at most one echo per 0.1 s (never a handler run) while the message is current (a plain request done
is R14's). iblrig's main, whose earlier call took a duplicate of our echo for its answer, bounced our
echoes 8 times, then asked the same EXPSTATUS again every 0.25 s while our handler ran: left
unechoed, it closed; now each ask is echoed. Past the 8th copy a request draws its echo only, not the
answer again: no copy then draws more than its own bytes back. Its price: every copy counts, asks,
resends, network duplicates and bounces alike; from the 9th on, a copy within 0.1 s of our last echo
of it is left unechoed, unless it follows one left unechoed and 16 echoes did not go yet. A plain
main that asks the same request again that fast, while the rig still works on it, gets no echo for
such an ask (an iblutil main closes then); iblrig's main asks 0.2 s apart at the least, and our main
resends 0.2 s apart, each resend past the 8th copy getting the echo but not the answer.

A rig never resends a plain answer unasked (R11 is for tagged ones), nor to a plain copy of the
request (R7): an iblutil main that asks again or got a copy awaits its echo, and would take the
answer, if it came first, for a wrong echo and close; only our main's resend gets it again.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Union

from iblutil.io.net.base import ExpMessage

from . import dialect, protocol
from .errors import Stage
from .options import ANSWER_RESENDS, ECHO_TIMEOUT, PAUSE, RESEND_INTERVAL, RESENDS, Options
from .protocol import DecodeError, Message

__all__ = ['MainConversation', 'RigConversation', 'Send', 'Echoed', 'Answered', 'Failed', 'Delivered',
           'Handle', 'GaveUp', 'Event', 'Row', 'MAIN_ROWS', 'RIG_ROWS', 'RESEND_INTERVAL', 'ECHO_TIMEOUT', 'RESENDS',
           'ANSWER_RESENDS', 'PAUSE']
log = logging.getLogger(__name__)

SEEN_IDS = 64
"""int: how many of the peer's message IDs are remembered to recognise duplicates."""
TAG_ROOM = 128
"""int: bytes a tag or a newline may add to a message (an answer that leaves less is refused)."""
REPEAT_WINDOW = 0.2
"""float: seconds after our echo of a plain request within which the same bytes again are a bounce of
that echo, not the main asking again (R14)."""
BOUNCE_WINDOW = 0.1
"""float: seconds after our last echo of a message within which a copy of it may be a bounce of that echo
(the bounce cap: R4, R6, R7, M9; the main's bounce cut, M21, at most); a later copy is the peer asking
again (a round trip on a lab's network takes a millisecond; iblrig's main asks 0.2 s apart at the least,
our main resends 0.2 s apart)."""
BOUNCE_ROUND_TRIPS = 4
"""int: the main's bounce cut (M21) takes a copy for a bounce within this many round trips of the copy before
(the slowest of the last ROUND_TRIPS_KEPT echoes of our requests), BOUNCE_FLOOR at least, BOUNCE_WINDOW at
most."""
BOUNCE_FLOOR = 0.02
"""float: seconds: the least bounce window of M21 (a clock that ticks every 15.6 ms, as Windows' before
Python 3.13, measures a quick round trip as 0, or as 15.6 ms when it spans a tick)."""
ROUND_TRIPS_KEPT = 8
"""int: round trips (first send of a request to its echo) the main remembers for M21's bounce window."""
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


class _Copies:
    """The bounce cap on echoing the copies of one message (R4, R6, R7, M9). The first STORM_ECHOES copies
    are echoed; after that, a copy that comes BOUNCE_WINDOW or more after our last echo of the message (the
    peer asking again), and one that follows a copy left unechoed (no echo of ours is out to come back: the
    peer asking again, or a network duplicate) until 2 * STORM_ECHOES echoes in all."""

    __slots__ = ('echoed', 'unechoed', 'last')

    def __init__(self, now: float = float('-inf')) -> None:
        self.echoed, self.unechoed, self.last = 0, False, now  # (`now`: when the message itself was echoed)

    def echo(self, now: float) -> bool:
        """One more copy came at `now`: whether to echo it."""
        echo = (self.echoed < STORM_ECHOES or now - self.last >= BOUNCE_WINDOW
                or (self.unechoed and self.echoed < 2 * STORM_ECHOES))
        self.unechoed = not echo
        if echo:
            self.echoed, self.last = self.echoed + 1, now
        return echo

    @property
    def may_answer(self) -> bool:
        """bool: the copy just echoed is among the first STORM_ECHOES, so it may draw the answer again (past
        them, a copy draws its echo only: no more than its own bytes)."""
        return self.echoed <= STORM_ECHOES


class _Window:
    """The last `size` message IDs, datagrams or digests, each with its copies (:class:`_Copies`): an ordered
    map with a bound (the oldest goes first)."""

    __slots__ = ('_ids', '_size')

    def __init__(self, size: int = SEEN_IDS):
        self._ids: OrderedDict[str | bytes, _Copies] = OrderedDict()
        self._size = size

    def add(self, msg_id: str | bytes, now: float = float('-inf')) -> bool:
        """Remember `msg_id` (echoed at `now`); False if it was seen already."""
        if msg_id in self._ids:
            return False
        self._ids[msg_id] = _Copies(now)
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True

    def copies(self, msg_id: str | bytes) -> _Copies:
        """The copies of `msg_id`, which was seen."""
        return self._ids[msg_id]

    def clear(self) -> None:
        self._ids.clear()

    def __contains__(self, msg_id: str | bytes) -> bool:
        return msg_id in self._ids


class _Burst(NamedTuple):
    """The copies of one plain message of the rig's in a burst (M21)."""

    copies: int
    last: float   # when the last copy came
    asked: int    # how many requests we had sent by then
    logged: bool  # the storm was logged
    in_a_row: int  # the last copy's place in its run of quick copies (see MainConversation._in_a_row)


class _Owed:
    """Datagrams whose echo may still come late, the last OWED of them: a list, since the same bytes may be
    owed twice (once per exchange)."""

    __slots__ = ('_datagrams',)

    def __init__(self) -> None:
        self._datagrams: list[bytes] = []

    def add(self, datagram: bytes) -> None:
        """One more echo of `datagram` is owed (the oldest owed is forgotten beyond OWED)."""
        self._datagrams = (self._datagrams + [datagram])[-OWED:]

    def settle(self, datagram: bytes) -> None:
        """One echo of `datagram` came (or is no longer owed), if one was."""
        if datagram in self._datagrams:
            self._datagrams.remove(datagram)

    def __contains__(self, datagram: bytes) -> bool:
        return datagram in self._datagrams


ROWS: collections.Counter[str] = collections.Counter()
"""How many datagrams each row of the tables took (the simulator reports which rows a sweep visited)."""
OFF: set[str] = set()
"""Rows switched off by name: a test shows that the simulator notices any of them missing. Empty in use.
The junk rows (M17, R1) stay on: the rows after them read the message that junk lacks."""
_ALWAYS_ON = frozenset({'M17', 'R1'})


def _row(name: str) -> bool:
    """Take row `name` for the datagram at hand (False when it is switched off: the next row is tried)."""
    if name in OFF and name not in _ALWAYS_ON:
        return False
    ROWS[name] += 1
    return True


@dataclass(frozen=True, slots=True)
class Row:
    """A row of a table: its name, whether it takes a datagram, and what it then does.

    ``applies`` and ``act`` are methods of the conversation, called with a :class:`_Datagram`;
    ``applies`` changes nothing.
    """

    name: str
    applies: Callable[[Any, _Datagram], bool]
    act: Callable[[Any, _Datagram], list[Event]]


def _classify(rows: tuple[Row, ...], conversation: Any, d: _Datagram) -> Row | None:
    """The first row of `rows` that takes `d` (rows switched off are passed over), counted in :data:`ROWS`."""
    for row in rows:
        if row.applies(conversation, d) and _row(row.name):
            return row
    return None


def _checked(options: Options) -> Options:
    if not isinstance(options, Options):
        raise TypeError(f'options must be an Options, not {type(options).__name__}')
    return options


class _Datagram:
    """A datagram received at `now`, with what the rows ask of it, each worked out once when first asked."""

    def __init__(self, data: bytes, now: float, exchange: _Exchange | None = None):
        self.data, self.now, self.x = data, now, exchange
        self.is_tagged = dialect.is_tagged(data)

    @functools.cached_property
    def parsed(self) -> dialect.Parsed | None:
        """The datagram decoded, or None for junk (logged at DEBUG)."""
        try:
            return dialect.parse(self.data)
        except DecodeError as ex:
            log.debug('dropped datagram %r: %s', self.data[:60], ex)
            return None

    @property
    def message(self) -> Message:
        assert self.parsed is not None  # (asked only once a row took junk)
        return self.parsed.message

    @property
    def msg_id(self) -> str:
        """The tag's ID ('' for a plain datagram)."""
        return '' if self.parsed is None or self.parsed.msg_id is None else self.parsed.msg_id

    @functools.cached_property
    def canonical(self) -> bytes:
        """The plain message as an encoder writes it (any other spelling is a resend or a copy)."""
        return protocol.canonical(self.message)

    @functools.cached_property
    def key(self) -> bytes:
        return _key(self.data)


# --- the main side ---
class _Exchange:
    """The main side's current request."""

    __slots__ = ('deadline', 'echo_deadline', 'echo_seen', 'echoed', 'event', 'expect_answer', 'first_sent', 'heard',
                 'held', 'next_send', 'plain', 'ref', 'resends_left', 'sent', 'spellings', 'tagged', 'token')

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
        self.first_sent: float | None = None  # when first sent, while not resent (an echo then times a round trip)


class MainConversation:
    """The main rig's conversation with one auxiliary rig (see the module's tables, rows M1-M22).

    Parameters
    ----------
    nonce : str
        A random string unique to this object: makes its tags unique across restarts.
    options : Options
        Seconds and counts: ``resend_interval`` without an echo before a request is sent again,
        ``resends`` at most (0: never, as iblutil), ``echo_timeout`` after the last send, ``pause``
        from the end of an exchange to the next request toward a rig not known to run iblnet_sync (M22).
    tagged : bool
        Whether the rig is already known to run iblnet_sync.
    """

    def __init__(self, nonce: str, options: Options = Options(), tagged: bool = False):
        self.options, self.tagged = _checked(options), tagged
        self._ended: float | None = None  # when the last exchange ended (M22)
        self._prefix = f'm{nonce}.'
        self._count = 0
        self._exchange: _Exchange | None = None
        self._seen = _Window()
        self._owed = _Owed()              # plain requests whose echo may still come after their exchange
        self._sent = _Window(16)          # the last plain datagrams we sent: their copies coming back are no news
        self._storm: OrderedDict[bytes, _Burst] = OrderedDict()  # M21: digest -> its burst, the latest last
        self._asked = 0                   # our requests sent so far (M21)
        self._answer: tuple[bytes, _Burst] | None = None  # the last answer echoed (M15): digest, its one copy
        self._round_trips: collections.deque[float] = collections.deque(maxlen=ROUND_TRIPS_KEPT)  # M21's window
        self._given_up: collections.deque[_Exchange] = collections.deque(maxlen=OWED)  # M21: answers still owed

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
            x.sent = dialect.tag(plain, x.ref)
            if len(x.sent) > protocol.MAX_PAYLOAD:
                raise protocol.TooLarge(f'a message of {len(plain):,} bytes leaves no room for the tag')
        else:
            x.ref, x.sent = dialect.digest(plain), plain
        x.resends_left = self.options.resends
        self._exchange = x
        if not self.tagged and self._ended is not None and now < self._ended + self.options.pause and _row('M22'):
            x.held, x.next_send = True, self._ended + self.options.pause
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
                x.first_sent = None  # (whichever send an echo then confirms, it times no round trip)
                if not x.tagged:
                    x.sent = x.plain + dialect.RESEND_SUFFIX
                x.spellings.add(x.sent)
                self._schedule(x, now)
                return [Send(x.sent)]
            x.next_send = None  # M4: no resend now; the echo is awaited echo_timeout more at most
            if not x.echoed and x.echo_deadline is None:
                x.echo_deadline = now + self.options.echo_timeout
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
        """A datagram from the rig: the first row of :data:`MAIN_ROWS` that takes it acts (M6-M21)."""
        exchange = self._exchange if self._exchange is None or not self._exchange.held else None
        d = _Datagram(data, now, exchange)
        unread, read = MAIN_ROWS['tagged' if d.is_tagged else 'plain']
        row = _classify(unread, self, d)
        if row is None:
            self._learn(d)
            row = _classify(read, self, d)
        return [] if row is None else row.act(self, d)

    # --- the rows: when each applies, and what it does ---
    def _is_echo(self, d: _Datagram) -> bool:  # M6
        return d.x is not None and not d.x.echoed and d.data in d.x.spellings

    def _take_echo(self, d: _Datagram) -> list[Event]:
        assert d.x is not None
        d.x.echo_seen = d.data
        return self._echoed(d.x, d.now)

    def _is_late_echo(self, d: _Datagram) -> bool:  # M7
        return dialect.is_resend(d.data) or d.data in self._owed

    def _is_junk(self, d: _Datagram) -> bool:  # M17: not a message, or a tag no rig of ours sends
        if d.parsed is None:
            return True
        return d.is_tagged and not (d.msg_id.startswith(self._prefix) or d.msg_id[:1] == 'r')

    def _learn(self, d: _Datagram) -> None:
        """What any message of the rig tells: that it runs iblnet_sync (tagged, or marked), that it sent
        something of its own (M2: plain resends stop)."""
        self.tagged = self.tagged or d.is_tagged or dialect.is_marked(d.data)
        if d.x is not None and (d.is_tagged or d.data not in self._sent):
            d.x.heard = True

    def _sends_plain_only_echoes(self, d: _Datagram) -> bool:
        """A rig known to run iblnet_sync sends plain only echoes, answers to plain requests, and error reports."""
        return self.tagged and d.message.event != protocol.ERROR_CODE

    def _plain_exchange(self, d: _Datagram) -> _Exchange | None:
        return d.x if d.x is not None and not d.x.tagged else None

    def _is_late_echo_to_a_known_rig(self, d: _Datagram) -> bool:  # M20
        x = self._plain_exchange(d)
        return (self._sends_plain_only_echoes(d) and not dialect.is_marked(d.data)
                and (x is None or d.data != x.plain))

    def _is_late_plain_answer(self, d: _Datagram) -> bool:  # M19
        x = self._plain_exchange(d)
        return (self._sends_plain_only_echoes(d) and dialect.is_marked(d.data)
                and (x is None or not _answers(x, d.message)))

    def _is_error_report(self, d: _Datagram) -> bool:  # M13
        return d.message.event == protocol.ERROR_CODE

    def _take_error_report(self, d: _Datagram) -> list[Event]:
        return self._error_report(self._plain_exchange(d), d.message, d.now)

    def _is_duplicate_echo(self, d: _Datagram) -> bool:  # M14
        x = d.x
        return x is not None and x.echoed and d.data == x.plain and x.event in NEVER_REPEATED

    def _is_answer(self, d: _Datagram) -> bool:  # M15
        return d.x is not None and _answers(d.x, d.message)

    def _take_answer(self, d: _Datagram) -> list[Event]:
        assert d.x is not None
        self._sent.add(d.data)
        # (not in the table: answers are never counted, nor fill it; but they bounce too)
        self._answer = (d.key, _Burst(0, d.now, self._asked, False, 1))
        return [Send(d.data)] + self._answered(d.x, d.message.data, d.now)

    def _is_storm(self, d: _Datagram) -> bool:  # M21
        return self._copies(d) > STORM_ECHOES or (self._is_bounce(d) and self._given_up_on(d) is None)

    def _drop_storm(self, d: _Datagram) -> list[Event]:
        if self._count_copy(d):  # (once a burst)
            log.warning('echo storm: %r came %d times in a burst; no longer echoed', d.data[:60], STORM_ECHOES + 1)
        else:
            log.debug('not echoed (a storm, a bounce of our echo, or a full table): %r', d.data[:60])
        return []

    def _take_message(self, d: _Datagram) -> list[Event]:  # M16
        given_up = self._given_up_on(d)
        if given_up is not None:
            self._given_up.remove(given_up)
        self._count_copy(d)
        self._sent.add(d.data)
        return [Send(d.data), Delivered(d.message)]

    def _is_ours(self, d: _Datagram) -> bool:  # M8
        return d.msg_id.startswith(self._prefix)

    def _take_ours(self, d: _Datagram) -> list[Event]:
        x = d.x
        if x is not None and not x.echoed and d.msg_id == x.ref:
            return self._echoed(x, d.now)
        return []

    def _is_seen(self, d: _Datagram) -> bool:  # M9
        return d.msg_id in self._seen

    def _echo_tagged(self, d: _Datagram) -> list[Event]:
        """Echo a tagged datagram of the rig's (our rig never echoes our echoes back) and remember its ID."""
        self._seen.add(d.msg_id, d.now)
        return [Send(d.data)]

    def _echo_copy(self, d: _Datagram) -> list[Event]:  # M9: a peer that echoes everything would bounce it
        return [Send(d.data)] if self._seen.copies(d.msg_id).echo(d.now) else []

    def _is_unasked(self, d: _Datagram) -> bool:  # M12
        return d.parsed is not None and d.parsed.reply_to is None

    def _take_unasked(self, d: _Datagram) -> list[Event]:
        return self._echo_tagged(d) + [Delivered(d.message)]

    def _is_late_answer(self, d: _Datagram) -> bool:  # M11
        return d.x is None or d.parsed is None or d.parsed.reply_to != d.x.ref

    def _drop_late_answer(self, d: _Datagram) -> list[Event]:
        log.debug('late answer %r dropped', d.data[:60])
        return self._echo_tagged(d)

    def _take_tagged_answer(self, d: _Datagram) -> list[Event]:  # M10
        assert d.x is not None
        events = self._echo_tagged(d)
        if d.message.event == protocol.ERROR_CODE:
            return events + self._error_report(d.x, d.message, d.now, matched=True)
        return events + self._answered(d.x, d.message.data, d.now)

    def _echo_plain(self, d: _Datagram) -> list[Event]:
        return [Send(d.data)]

    # --- internals ---
    def _first_send(self, x: _Exchange, now: float) -> list[Event]:
        """Send exchange `x`'s request for the first time (M1, or M22 when the pause ends)."""
        # (an echo owed by an earlier exchange with the same bytes may come first: it times no round trip)
        x.held, x.first_sent = False, None if x.sent in self._owed else now
        if not x.tagged:
            self._sent.add(x.plain)
        x.spellings.add(x.sent)
        self._asked += 1
        self._owed.settle(x.plain)  # from now on these bytes are this exchange's echo
        self._schedule(x, now)
        return [Send(x.sent)]

    def _copies(self, d: _Datagram) -> int:
        """How many times the rig's plain message `d` came in its burst, this copy included: copies each within
        STORM_QUIET of the one before, or with no request of ours in between (M21). The first copy since a
        request of ours may answer it: it never makes a storm (at most STORM_ECHOES), the next copy does. A new
        message while the table holds SEEN_IDS bursts, all live, is a storm too (more datagrams bouncing than
        the table remembers)."""
        burst = self._storm.get(d.key)
        if burst is None:
            return STORM_ECHOES + 1 if self._storm_full(d.now) else 1
        if self._asked > burst.asked:
            return 1 if d.now - burst.last > STORM_QUIET else min(burst.copies, STORM_ECHOES)
        return burst.copies + 1

    def _is_bounce(self, d: _Datagram) -> bool:
        """The rig's plain message `d` is a bounce of our echo or a network duplicate (M21): in a run of quick
        copies, the first is the message (or the answer, M15) and the third may be the rig's answer to a copy of
        our echo, which it took for a request (the same bytes, from a handler that answers any such request
        alike) and whose echo it awaits; the second and any after the third are the rig's echoes of ours, or
        network duplicates, which nobody awaits."""
        place = self._in_a_row(d)
        return place == 2 or place > 3

    def _in_a_row(self, d: _Datagram) -> int:
        """The place of the rig's plain message `d` in its run of copies, each within the bounce window of the
        one before (:meth:`_bounce_window`) and with no request of ours in between (1: the first). The order is
        that of arrival, not the clock's: a clock that ticks every 15.6 ms gives a whole run one time."""
        latest = self._storm.get(d.key)
        if (latest is None or latest.asked != self._asked) and self._answer is not None and self._answer[0] == d.key:
            latest = self._answer[1]  # (a copy with the answer's bytes counted since our last request came after it)
        if latest is None or latest.asked != self._asked or d.now - latest.last >= self._bounce_window():
            return 1
        return latest.in_a_row + 1

    def _given_up_on(self, d: _Datagram) -> _Exchange | None:
        """The oldest of the last OWED plain requests that the rig echoed and we gave up on (the caller's deadline
        passed before the answer) that the rig's message `d` may answer. An iblutil rig answers every request
        it took, however late, and awaits each echo: answers to polls that timed out come alike, in any order
        and as close together as their handlers end, which no clock tells from a bounce; their number does.
        Whichever copy comes first takes the place of such an answer."""
        return next((x for x in self._given_up if _answers(x, d.message)), None)

    def _bounce_window(self) -> float:
        """Seconds after a copy within which the next may be a bounce of our echo of it (M21): BOUNCE_ROUND_TRIPS
        of the slowest of the last round trips, BOUNCE_FLOOR at least, BOUNCE_WINDOW at most and until a round
        trip is known. A bounce comes back within a round trip; a rig's second answer with the same bytes comes
        when its handler ends, mostly later."""
        if not self._round_trips:
            return BOUNCE_WINDOW
        return min(BOUNCE_WINDOW, max(BOUNCE_FLOOR, BOUNCE_ROUND_TRIPS * max(self._round_trips)))

    def _storm_full(self, now: float) -> bool:
        """The table of bursts is full, and its oldest burst is still live (a copy less than STORM_QUIET ago)."""
        return len(self._storm) >= SEEN_IDS and now - next(iter(self._storm.values())).last <= STORM_QUIET

    def _count_copy(self, d: _Datagram) -> bool:
        """Count copy `d` of a message in its burst (M21); True if it starts a storm not yet logged."""
        copies, in_a_row = self._copies(d), self._in_a_row(d)
        burst = self._storm.pop(d.key, None)
        if burst is None and len(self._storm) >= SEEN_IDS:
            if self._storm_full(d.now):
                return False  # (no room: the table's bursts are all live)
            self._storm.popitem(last=False)
        logged = burst is not None and burst.logged and copies > 1
        log_now = copies > STORM_ECHOES and not logged
        self._storm[d.key] = _Burst(copies, d.now, self._asked, logged or log_now, in_a_row)
        return log_now

    def _schedule(self, x: _Exchange, now: float) -> None:
        x.next_send = now + self.options.resend_interval if x.resends_left > 0 else None
        x.echo_deadline = None if x.resends_left > 0 else now + self.options.echo_timeout

    def _echoed(self, x: _Exchange, now: float) -> list[Event]:
        if x.first_sent is not None:
            self._round_trips.append(now - x.first_sent)
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
        if not x.echoed:
            return [Failed(x.token, Stage.NO_ECHO, 'no echo')]
        if x.expect_answer and not x.tagged:
            self._given_up.append(x)  # (the rig took it: its answer may still come, M21 lets it through)
        return [Failed(x.token, Stage.NO_RESPONSE, 'echoed but no answer')]

    def _end(self, x: _Exchange, now: float | None = None) -> None:
        """Forget the exchange; a plain echo that may still come is remembered as owed."""
        self._exchange = None
        self._ended = now
        if x.held:
            return
        if not x.tagged and x.echo_seen != x.plain:
            self._owed.add(x.plain)


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


def _always(conversation: Any, d: _Datagram) -> bool:
    return True


def _drop(conversation: Any, d: _Datagram) -> list[Event]:
    return []


def _drop_late_echo(conversation: Any, d: _Datagram) -> list[Event]:
    """M7, R3: the late echo an owed datagram awaited, or another: dropped."""
    conversation._owed.settle(d.data)
    return []


_M = MainConversation
MAIN_ROWS: dict[str, tuple[tuple[Row, ...], tuple[Row, ...]]] = {
    # rows tried before the datagram teaches anything (its bytes, or whether it parses), then the others
    'plain': ((Row('M6', _M._is_echo, _M._take_echo),
               Row('M7', _M._is_late_echo, _drop_late_echo),
               Row('M17', _M._is_junk, _drop)),
              (Row('M20', _M._is_late_echo_to_a_known_rig, _drop),
               Row('M19', _M._is_late_plain_answer, _M._echo_plain),
               Row('M13', _M._is_error_report, _M._take_error_report),
               Row('M14', _M._is_duplicate_echo, _drop),
               Row('M15', _M._is_answer, _M._take_answer),
               Row('M21', _M._is_storm, _M._drop_storm),
               Row('M16', _always, _M._take_message))),
    'tagged': ((Row('M17', _M._is_junk, _drop),),
               (Row('M8', _M._is_ours, _M._take_ours),
                Row('M9', _M._is_seen, _M._echo_copy),
                Row('M12', _M._is_unasked, _M._take_unasked),
                Row('M11', _M._is_late_answer, _M._drop_late_answer),
                Row('M10', _always, _M._take_tagged_answer))),
}
"""The main side's rows for a datagram, plain or tagged, in the order they are tried: first those that
need no more than its bytes, then (once :meth:`MainConversation._learn` took what it tells) the rest."""


# --- the rig side ---
IDLE, HANDLING, ANSWERED, DONE = 'IDLE', 'HANDLING', 'ANSWERED', 'DONE'


class RigConversation:
    """An auxiliary rig's conversation with one main rig address (see the module's tables, rows R1-R14).

    Parameters
    ----------
    nonce : str
        A random string unique to this rig: makes its tags unique across restarts.
    options : Options
        ``resend_interval`` between sends of a tagged answer that is not echoed, ``resends`` of it at
        most, ``echo_timeout`` a plain answer waits for its echo (``pause`` is the main side's).
    """

    def __init__(self, nonce: str, options: Options = Options(resends=ANSWER_RESENDS)):
        self.options = _checked(options)
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
        self._copies = _Copies()          # of the current plain request (R6, R7)
        self._plains = _Window(8)         # digests of the last plain requests (R8)
        self._echoes: OrderedDict[bytes, tuple[float, int, bool]] = OrderedDict()  # R14: digest -> (last echo,
        #                                                               echoes, handled again at once)
        self._main: str | None = None     # the token of the main that announced itself (R9)
        self._owed = _Owed()              # plain answers whose echo may still come, though we moved on (R3)

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
        """A datagram from the main rig: the first row of :data:`RIG_ROWS` that takes it acts (R1-R9, R14)."""
        d = _Datagram(data, now)
        row = _classify(RIG_ROWS['any'], self, d)
        if row is None:
            self._learn(d)
            row = _classify(RIG_ROWS['tagged' if d.is_tagged else 'plain'], self, d)
        return [] if row is None else row.act(self, d)

    # --- the rows: when each applies, and what it does ---
    def _is_echo_of_answer(self, d: _Datagram) -> bool:  # R2, plain (or tagged, byte for byte)
        return self.state == ANSWERED and d.data == self._answer

    def _done(self, d: _Datagram) -> list[Event]:
        self.state = DONE
        return []

    def _is_late_echo(self, d: _Datagram) -> bool:  # R3
        # only a rig ends a datagram with a newline: a late echo of ours; or the late echo of an answer we
        # gave up on, or of a superseded request's
        return dialect.is_marked(d.data) or d.data in self._owed

    def _is_stranger(self, d: _Datagram) -> bool:
        """A tagged datagram with a tag that no main sends (nor we: ours echoed back)."""
        return d.is_tagged and not (d.msg_id[:1] == 'm' or d.msg_id.startswith(self._prefix))

    def _is_junk(self, d: _Datagram) -> bool:  # R1: junk, a stranger's tag, or a plain error report
        if d.parsed is None or self._is_stranger(d):
            return True
        return not d.is_tagged and d.message.event == protocol.ERROR_CODE

    def _take_junk(self, d: _Datagram) -> list[Event]:
        report = d.parsed is not None and not self._is_stranger(d)
        return [Delivered(d.message)] if report else []  # (the adapter logs a report)

    def _learn(self, d: _Datagram) -> None:
        """What a main's message tells: that it runs iblnet_sync (tagged), or that a new main speaks from
        this address (its EXPINFO names another main: no copy of the last one's requests is ours)."""
        if d.is_tagged:
            self.tagged = True
            return
        main = dialect.announced_main(d.message)
        if main is not None and main != self._main:
            self._main, self._plain = main, b''
            self._plains.clear()
            self._echoes.clear()

    def _is_tagged_echo_of_answer(self, d: _Datagram) -> bool:  # R2, tagged
        return d.msg_id.startswith(self._prefix) and self.state == ANSWERED and d.msg_id == self._answer_id

    def _is_ours(self, d: _Datagram) -> bool:  # R3, tagged
        return d.msg_id.startswith(self._prefix)

    def _is_seen(self, d: _Datagram) -> bool:  # R4
        return d.msg_id in self._seen

    def _echo_seen(self, d: _Datagram) -> list[Event]:
        copies = self._seen.copies(d.msg_id)
        if not copies.echo(d.now):
            return []
        again = self.state == ANSWERED and copies.may_answer
        return [Send(d.data), Send(self._answer)] if again else [Send(d.data)]

    def _take_tagged_request(self, d: _Datagram) -> list[Event]:  # R5
        self._seen.add(d.msg_id, d.now)
        return [Send(d.data)] + self._new_request(b'', d.msg_id, d.message, d.now)

    def _is_open(self, d: _Datagram) -> bool:
        """`d` is the current plain request (in any spelling), while we work on it or await our answer's echo."""
        return d.canonical == self._plain and self.state in (HANDLING, ANSWERED)

    def _is_late_copy(self, d: _Datagram) -> bool:  # R8
        known = d.canonical == self._plain or (self.tagged and _key(d.canonical) in self._plains)
        return known and not self._is_open(d) and (self.tagged or d.data != d.canonical)

    def _is_asked_again(self, d: _Datagram) -> bool:  # R6
        return self._is_open(d) and d.data == d.canonical

    def _is_resent(self, d: _Datagram) -> bool:  # R7
        return self._is_open(d) and d.data != d.canonical

    def _echo_again(self, d: _Datagram) -> list[Event]:
        """R6, R7: never handled again; echoed under the bounce cap (:class:`_Copies`); our main's resend
        (another spelling) gets the answer again, to the first STORM_ECHOES copies: that main lacks it."""
        if not self._copies.echo(d.now):
            return []
        events: list[Event] = [self._echo(d.data, d.now, self._copies.echoed)]
        if self.state == ANSWERED and d.data != d.canonical and self._copies.may_answer:
            events.append(Send(self._answer))
        return events

    def _last_echo(self, d: _Datagram) -> tuple[float, int, bool, bool]:
        """When we last echoed these bytes, how often, whether they were handled again at once, and whether
        that was less than REPEAT_WINDOW ago (R14)."""
        echoed_at, echoes, again = self._echoes.get(d.key, (float('-inf'), 0, False))
        return echoed_at, echoes, again, d.now - echoed_at < REPEAT_WINDOW

    def _is_bounce(self, d: _Datagram) -> bool:  # R14
        _, _, again, recent = self._last_echo(d)
        return not self.tagged and recent and again

    def _echo_bounce(self, d: _Datagram) -> list[Event]:
        echoed_at, echoes, _, _ = self._last_echo(d)
        if echoes + 1 > STORM_ECHOES:  # silent: the bounce ends, and the window runs out
            self._echoes[d.key] = (echoed_at, echoes + 1, True)
            return []
        return [self._echo(d.data, d.now, echoes + 1)]

    def _take_plain_request(self, d: _Datagram) -> list[Event]:  # R9
        _, echoes, _, recent = self._last_echo(d)
        if dialect.announces_peer(d.message):  # (asked again at once: once, then R14)
            self.tagged = True
        echo = self._echo(d.data, d.now, echoes if recent else 0, again=recent)
        return [echo] + self._new_request(d.canonical, dialect.digest(d.canonical), d.message, d.now)

    def answer(self, request: int, answer: bytes | None, now: float) -> list[Event]:
        """The handler of `request` finished (R10, R13): `answer` is a plain datagram or None."""
        if not self.is_current(request):
            _row('R13')
            return []
        _row('R10')
        if answer is None:
            self.state = DONE
            return []
        if len(answer) + TAG_ROOM > protocol.MAX_PAYLOAD and not dialect.is_error_report(answer):  # no room for a tag
            error = protocol.TooLarge(f'an answer of {len(answer):,} bytes leaves no room for the tag')
            answer = protocol.error_report(error, protocol.decode(answer).event)
        if self.tagged:
            self._count += 1
            self._answer_id = f'{self._prefix}{self._count}'
            self._answer = dialect.tag(answer, self._answer_id, self._ref)
            self._resends_left = self.options.resends
            self._next_send = now + self.options.resend_interval
            self._deadline = now + self.options.resend_interval * (self.options.resends + 1)
        elif dialect.is_error_report(answer):  # a plain error report is never echoed
            self.state = DONE
            return [Send(answer + dialect.PEER_SUFFIX)]
        else:  # marked, but for an answer with the request's bytes: an iblutil main may take it for the echo
            self._answer_id = None
            self._answer = answer if answer == self._plain else answer + dialect.PEER_SUFFIX
            self._next_send, self._deadline = None, now + self.options.echo_timeout
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
            self._next_send = now + self.options.resend_interval
            return [Send(self._answer)]
        return []

    # --- internals ---
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
        if self.state == ANSWERED and self._answer_id is None and not dialect.is_marked(self._answer):
            self._owed.add(self._answer)  # (a marked answer's echo is told by its newline)

    def _new_request(self, plain: bytes, ref: str, message: Message, now: float) -> list[Event]:
        self._owe_echo()
        self._request += 1
        self._copies = _Copies(now)
        if plain:
            self._plain = plain  # the last plain request: its copies may still arrive
            self._plains.add(_key(plain))
        self._ref = ref
        self._answer, self._answer_id = b'', None
        self.state = HANDLING
        return [Handle(self._request, message)]


_R = RigConversation
RIG_ROWS: dict[str, tuple[Row, ...]] = {
    'any': (Row('R2', _R._is_echo_of_answer, _R._done),  # rows that need no more than the bytes, or parsing
            Row('R3', _R._is_late_echo, _drop_late_echo),
            Row('R1', _R._is_junk, _R._take_junk)),
    'tagged': (Row('R2', _R._is_tagged_echo_of_answer, _R._done),
               Row('R3', _R._is_ours, _drop),
               Row('R4', _R._is_seen, _R._echo_seen),
               Row('R5', _always, _R._take_tagged_request)),
    'plain': (Row('R8', _R._is_late_copy, _drop),
              Row('R6', _R._is_asked_again, _R._echo_again),
              Row('R7', _R._is_resent, _R._echo_again),
              Row('R14', _R._is_bounce, _R._echo_bounce),
              Row('R9', _always, _R._take_plain_request)),
}
"""The rig side's rows in the order they are tried: those for any datagram, then (once
:meth:`RigConversation._learn` took what it tells) those of its kind, tagged or plain."""


def _key(datagram: bytes) -> bytes:
    """A short fingerprint of a datagram, so that remembering one costs 16 bytes whatever its size."""
    return hashlib.blake2b(datagram, digest_size=16).digest()

