"""The real programs of :mod:`tests.real_programs` as loopback peers for the tests.

- :class:`TimelinePeer`: the sans-I/O :class:`tests.real_programs.Timeline` behind a real UDP socket,
  served by a thread of its own (blocked in ``select``; a socketpair wakes it to stop).
- :class:`VideoPeer`: iblrig's video program as an asyncio program on iblutil's REAL
  ``EchoProtocol`` (server role) in its own event loop thread, shaped as the real one: a loop that
  starts a task awaiting the next message, awaits it, runs the handler, which answers with iblutil's
  confirmed send, then starts the next wait. So the real race exists: a request that arrives right
  after the echo of the previous answer is echoed by iblutil and never handled. The answers' content
  comes from the sans-I/O :class:`tests.real_programs.VideoProgram`, so both say the same bytes.
- :class:`IblrigMainPeer`: iblrig's main: iblutil's REAL asyncio ``Services`` behind a request queue
  that its loop looks at every :data:`tests.real_programs.POLL` seconds, passing the task's arguments as a
  tuple (EXPEND ``[4, []]``, EXPINTERRUPT ``[16, [DETAILS]]``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import selectors
import socket
import threading
import time
from typing import Any

from iblutil.io.net.app import EchoProtocol
from iblutil.io.net.app import Services as IblutilServices
from iblutil.io.net.base import ExpMessage

from iblnet_sync import core, protocol
from tests.events import events_of
from tests.peers import LOOPBACK, LoopThread, Recorder
from tests.real_programs import POLL, Timeline, VideoProgram

log = logging.getLogger('program_peers')


class TimelinePeer(Recorder):
    """Rigbox's Timeline listener on a loopback UDP socket (port 0).

    Parameters
    ----------
    exp_ref : str, None
        The reference set in Timeline by its operator.
    """

    def __init__(self, exp_ref: str | None = None):
        super().__init__()
        self.model = Timeline(exp_ref)
        self.datagrams: list[tuple[bytes, tuple]] = []  # everything received, with its source
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.uri = f'udp://{LOOPBACK}:{self.port}'
        self._stop_reader, self._stop_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name='timeline-peer', daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._stop_reader, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._stop_reader:
                        return
                    try:
                        data, addr = self.sock.recvfrom(65535)
                    except OSError:
                        continue  # e.g. port unreachable from an earlier send
                    with self._changed:
                        self.datagrams.append((data, addr))
                        events = self.model.receive(data, time.monotonic())
                        for send in events_of(events, core.Send):
                            self.sock.sendto(send.datagram, addr)
                        self._changed.notify_all()

    @property
    def received(self) -> list[int]:
        """The event codes Timeline read, in order."""
        with self._changed:
            return [code for code, _ in self.model.received]

    def close(self) -> None:
        self._stop_writer.send(b'x')
        self._thread.join(5)
        for sock in (self.sock, self._stop_reader, self._stop_writer):
            sock.close()


class VideoPeer(Recorder):
    """iblrig's video program on iblutil's real EchoProtocol, listening on loopback (port 0).

    Parameters
    ----------
    delay : float
        Seconds each handler works before it answers (Bonsai starting, say).
    rearm : float
        Seconds between the echo of an answer and the program's next wait for a message (0: one
        event-loop step, as the real program on an idle PC).

    Attributes
    ----------
    model : real_programs.VideoProgram
        Its state (``status``, ``exp_ref``) and the messages it handled (``handled``).
    errors : list of BaseException
        What ended the program (a confirmed send not echoed in time, or a wrong echo).
    """

    def __init__(self, delay: float = 0.0, rearm: float = 0.0):
        super().__init__()
        self.delay = delay
        self.rearm = rearm
        self.model = VideoProgram()
        self.errors: list[BaseException] = []
        self.loops = LoopThread()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.uri = f'udp://{LOOPBACK}:{self.port}'
        self._waiter: asyncio.Future | None = None  # the run loop waits for a message on it
        self._closing = False
        self.protocol: EchoProtocol = self.loops.run(self._listen())
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self.loops.loop)
        self.loops.run(_turns(5))  # the loop starts and its first wait for a message is registered

    async def _listen(self) -> EchoProtocol:
        factory = functools.partial(EchoProtocol, self.uri, 'server', name='cameras',
                                    logger=logging.getLogger('video_peer'))
        _, proto = await asyncio.get_running_loop().create_datagram_endpoint(factory, sock=self.sock)
        return proto

    async def _run(self) -> None:
        """The program's main loop: wait for a message, handle it, wait again.

        The real program waits with ``on_event(ExpMessage.any())``; iblutil passes such a wait the
        event only on Python < 3.12, so the model waits on one callback per event instead, with the
        same loss: a message that comes while the loop is not waiting is echoed, never handled.
        """
        for flag in ExpMessage:
            self.protocol.assign_callback(flag, functools.partial(self._arrived, flag))
        try:
            while self.protocol.is_connected and not self._closing:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    data, addr, event = await self._waiter
                except asyncio.CancelledError:  # the communicator closed
                    return
                finally:
                    self._waiter = None
                await self._handle(data, addr, event)
                await asyncio.sleep(self.rearm)  # as the real program's new wait task: one loop step later
        except Exception as ex:  # as the real program, which lets it end its run loop
            self.errors.append(ex)
            self._notify()

    def _arrived(self, event: ExpMessage, data: list, addr: tuple, *_: Any) -> None:
        """iblutil's callback: the message reaches the loop only if it waits for one now."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((data, addr, event))

    async def _handle(self, data: list, addr: tuple, event: ExpMessage) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._changed:
            answer = self.model.respond(protocol.Message(event, data))
            self._changed.notify_all()
        if not self.model.alive:
            raise RuntimeError(f'the handler of {event.name} failed')
        if answer is not None:
            await self.protocol.confirmed_send(answer, addr=addr)

    @property
    def handled(self) -> list[ExpMessage]:
        """The events it handled, in order."""
        with self._changed:
            return [event for event, _ in self.model.handled]

    @property
    def is_connected(self) -> bool:
        return bool(self.protocol.is_connected) and not self._main.done()

    def close(self) -> None:
        async def closing() -> None:
            self._closing = True
            if self._waiter is not None:
                self._waiter.cancel()
            self.protocol.close()
            await _turns(3)  # the run loop ends, the transport closes its socket
        self.loops.run(closing())
        self._main.result(5)
        self.loops.close()
        self.sock.close()


async def _turns(n: int) -> None:
    """Let the event loop run `n` turns."""
    for _ in range(n):
        await asyncio.sleep(0)


class IblrigMainPeer:
    """iblrig's main rig: iblutil's asyncio ``Services`` fed from a queue polled every `poll` seconds.

    :meth:`push` blocks until the request was sent to every rig and answered (or failed), as
    iblrig's ``Auxiliaries.push(..., wait=True)`` does, and returns the responses (or the error).

    Parameters
    ----------
    remote_rigs : dict
        Rig name to URI.
    timeout : float
        Seconds iblutil's ``Services`` waits for the answers.
    poll : float
        Seconds between two looks at the queue.
    """

    def __init__(self, remote_rigs: dict[str, str], timeout: float = 10.0, poll: float = POLL):
        self.timeout, self.poll = timeout, poll
        self.loops = LoopThread()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._stop = asyncio.Event()

        async def connect() -> IblutilServices:
            rigs = [await EchoProtocol.client(uri, name, log=logging.getLogger(f'iblrig_main.{name}'))
                    for name, uri in remote_rigs.items()]
            return IblutilServices(rigs, timeout=timeout)

        self.services = self.loops.run(connect())
        self._listening = asyncio.run_coroutine_threadsafe(self._listen(), self.loops.loop)

    async def _listen(self) -> None:
        while not self._stop.is_set():
            if not self._queue.empty():
                (event, args), future = self._queue.get_nowait()
                try:
                    future.set_result(await self._send(event, args))
                except Exception as ex:
                    future.set_exception(ex)
            await asyncio.sleep(self.poll)

    async def _send(self, event: ExpMessage, args: tuple) -> Any:
        services = self.services
        if event is ExpMessage.EXPSTART:
            return await services.start(*args)
        if event is ExpMessage.EXPINIT:
            return await services.init(*args)
        if event in (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT):  # the arguments as they are: a tuple
            return await services.stop(args, immediately=event is ExpMessage.EXPINTERRUPT)
        if event is ExpMessage.EXPINFO:
            return await services.info(*args)
        if event is ExpMessage.EXPSTATUS:
            return await services.status(*args)
        if event is ExpMessage.EXPCLEANUP:
            return await services.cleanup(*args)
        return await services.alyx(*args)

    def push(self, event: ExpMessage | str, *args: Any, timeout: float | None = None) -> Any:
        """Queue a request and wait for the rigs' responses (a dict), or raise what the request raised."""
        event = ExpMessage.validate(event, allow_bitwise=False)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.loops.loop.call_soon_threadsafe(self._queue.put_nowait, ((event, args), future))
        return future.result(self.timeout + 2 * self.poll + 5 if timeout is None else timeout)

    def close(self) -> None:
        self.loops.loop.call_soon_threadsafe(self._stop.set)
        self._listening.result(self.poll + 5)
        self.loops.close_soon(self.services.close)
        self.loops.close()
