"""Real iblutil peers for the tests: iblutil's own asyncio EchoProtocol on its own event loop thread."""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import time

from iblutil.io.net.app import EchoProtocol
from iblutil.io.net.app import Services as IblutilServices
from iblutil.io.net.base import ExpMessage, ExpStatus

from iblnet_sync import protocol

LOOPBACK = '127.0.0.1'


class LoopThread:
    """An asyncio event loop running in a thread of its own; `run` executes a coroutine on it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name='iblutil-loop', daemon=True)
        self._thread.start()

    def run(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def close_soon(self, close) -> None:
        """Run `close` on the loop and let the loop finish what it starts (a transport's last callbacks)."""
        async def closing():
            close()
            for _ in range(3):
                await asyncio.sleep(0)
        self.run(closing())


class Recorder:
    """A peer that records what it received, with a condition to wait on it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` holds (checked at each change); False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True


class IblutilRig(Recorder):
    """An auxiliary rig built on iblutil's EchoProtocol in the server role, answering like iblrig's rigs.

    Every message is recorded in `received`; the response is sent with iblutil's own
    ``confirmed_send``, so a response that our side does not echo kills this rig just as it
    kills a real one (`errors` then holds the TimeoutError and `is_connected` turns False).

    Parameters
    ----------
    name : str
        The rig's name.
    main_sync : bool
        Whether this rig claims to decide the experiment reference.
    exp_ref : str, dict, None
        The reference it reports in its EXPINFO answer.
    respond : bool
        False makes a rig that echoes but never answers.
    delay : float
        Seconds to wait before answering.
    """

    def __init__(self, name='rig', main_sync=False, exp_ref=None, respond=True, delay=0.0, loop=None,
                 subject=None):
        super().__init__()
        self.name, self.main_sync, self.exp_ref = name, main_sync, exp_ref
        self.respond, self.delay, self.subject = respond, delay, subject
        self.status = ExpStatus.CONNECTED
        self.received: list[tuple[ExpMessage, list]] = []
        self.errors: list[BaseException] = []
        self.answered: list[ExpMessage] = []  # events whose response our side echoed
        self._own_loop = loop is None
        self.loops = loop or LoopThread()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.uri = f'udp://{LOOPBACK}:{self.port}'
        self.protocol = self.loops.run(self._serve())

    async def _serve(self):
        factory = functools.partial(EchoProtocol, self.uri, 'server', name=self.name,
                                    logger=logging.getLogger(f'iblutil_rig.{self.name}'))
        _, proto = await asyncio.get_running_loop().create_datagram_endpoint(factory, sock=self.sock)
        # One callback per event, bound to it: registered for several events at once (ExpMessage.any()),
        # iblutil passes the event as a third argument on Python < 3.12 only (see iblutil_models).
        for event in ExpMessage:
            proto.assign_callback(event, functools.partial(self._on_message, event=event))
        return proto

    @property
    def is_connected(self) -> bool:
        return bool(self.protocol.is_connected)

    def ask(self, datagram: bytes):
        """Send our own message to the main rig that last wrote to us (iblutil's confirmed_send)."""
        self.loops.run(self._send(datagram, self.main_address))

    def _on_message(self, data, addr, event):
        self.main_address = addr
        with self._changed:
            self.received.append((event, data))
            self._changed.notify_all()
        response = self.answer(event, data)
        if self.respond and response is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(self.delay, lambda: loop.create_task(self._send(response, addr)))

    async def _send(self, response, addr):
        try:
            await self.protocol.confirmed_send(response, addr=addr)
            outcome = self.answered, protocol.decode(response).event
        except BaseException as ex:
            outcome = self.errors, ex
        with self._changed:
            outcome[0].append(outcome[1])
            self._changed.notify_all()

    def answer(self, event, data) -> bytes | None:
        """The response iblrig's auxiliary rigs give to each event."""
        if event is ExpMessage.EXPINFO:
            info = {'exp_ref': self.exp_ref, 'main_sync': self.main_sync, 'subject': self.subject}
            return protocol.encode(event, int(self.status), info)
        if event is ExpMessage.EXPSTATUS:
            return protocol.encode(event, int(self.status))
        if event is ExpMessage.EXPINIT:
            self.status = ExpStatus.INITIALIZED
            return protocol.encode(event, int(self.status), None)
        if event is ExpMessage.EXPSTART:
            self.status = ExpStatus.RUNNING
            return protocol.encode(event, data[0], None)
        if event in (ExpMessage.EXPEND, ExpMessage.EXPINTERRUPT):
            self.status = ExpStatus.STOPPED
            return protocol.encode(event, None)
        if event is ExpMessage.EXPCLEANUP:
            return protocol.encode(event, None)
        if event is ExpMessage.ALYX and not data[1]:
            return protocol.encode(event, 'https://alyx.example.org', {'rig-user': {'token': 'rig-token'}})
        return None

    def close(self):
        self.loops.close_soon(self.protocol.close)
        if self._own_loop:
            self.loops.close()
        self.sock.close()


class IblutilMain:
    """iblutil's asyncio ``Services`` as the main rig, driven from a test's blocking code."""

    def __init__(self, remote_rigs: dict, timeout=5.0):
        self.loops = LoopThread()

        async def connect():
            rigs = [await EchoProtocol.client(uri, name, log=logging.getLogger(f'iblutil_main.{name}'))
                    for name, uri in remote_rigs.items()]
            return IblutilServices(rigs, timeout=timeout)

        self.services = self.loops.run(connect())

    def call(self, method, *args, **kwargs):
        return self.loops.run(getattr(self.services, method)(*args, **kwargs))

    def close(self):
        self.loops.close_soon(self.services.close)
        self.loops.close()
