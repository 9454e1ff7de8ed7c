"""The simulator's models of iblutil against the real iblutil, datagram for datagram, on loopback.

Each test plays the same script twice: once from a raw UDP socket against iblutil 1.20's own
``EchoProtocol`` (the rig in the server role, the main in the client role, each on an asyncio loop
thread of its own), once against :mod:`tests.iblutil_models`, and checks that both echo the same
datagrams and close their socket in the same cases.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import socket
import sys
import time
from collections.abc import Iterator

import pytest
from iblutil.io.net.app import EchoProtocol
from iblutil.io.net.base import ExpMessage

from iblnet_sync import core, protocol
from iblnet_sync.core import Send
from tests.events import events_of
from tests.iblutil_models import ECHO_TIMEOUT, IblutilMain, IblutilRig
from tests.peers import LOOPBACK, LoopThread

STATUS = b'[32, 20]'  # EXPSTATUS as iblutil's main sends it; a rig of peers.IblutilRig answers b'[32, 0]'
ANSWER = b'[32, 0]'
TOKEN = protocol.encode(protocol.ExpMessage.ALYX, 'https://alyx.example.org', {'u': 't'})  # echoed, not answered
JUNK = [b'', b'x', b'hello', b'[]', b'[32]', b'[999, 1]', b'[0, "KeyError: k", 2]', b'{"id": 3}', b'\xff\xfe']
DEADLINE = 5.0


class Raw:
    """A raw UDP socket on loopback, read with a deadline."""

    def __init__(self, connect: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(DEADLINE)
        if connect is not None:
            self.sock.connect((LOOPBACK, connect))
        self.peer: tuple[str, int] | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        if self.peer is None:
            self.sock.send(data)
        else:
            self.sock.sendto(data, self.peer)

    def recv(self) -> bytes:
        data, self.peer = self.sock.recvfrom(65535)
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def rig(iblutil_rigs) -> Iterator[tuple[object, Raw]]:
    """A real iblutil rig (``peers.IblutilRig``) and a raw socket connected to it, as its main."""
    real = iblutil_rigs('model_check')
    raw = Raw(connect=real.port)
    yield real, raw
    raw.close()


@pytest.fixture
def main() -> Iterator[tuple[EchoProtocol, LoopThread, Raw]]:
    """A real iblutil main (``EchoProtocol.client``) talking to a raw socket that plays its rig."""
    raw = Raw()
    loops = LoopThread()
    client = loops.run(EchoProtocol.client(f'udp://{LOOPBACK}:{raw.port}', name='model_check',
                                           log=logging.getLogger('iblutil_main.model_check')))
    yield client, loops, raw

    async def close() -> None:
        client.close()
        await asyncio.sleep(0)  # one turn of the loop, in which the transport closes its socket

    loops.run(close())
    loops.close()
    raw.close()


def model_rig_answers(model: IblutilRig, request: bytes, answer: bytes, now: float) -> list[core.Event]:
    """The model rig takes `request`, echoes it and answers it: the events of both steps."""
    events = model.receive(request, now)
    (handle,) = events_of(events, core.Handle)
    return events + model.answer(handle.request, answer, now)


def sent(events: list[core.Event]) -> list[bytes]:
    return [e.datagram for e in events_of(events, Send)]


# --- the rig (server role) ---
def test_rig_echoes_a_message_answers_and_lives_on_when_the_answer_is_echoed(rig):
    real, raw = rig
    raw.send(STATUS)
    assert [raw.recv(), raw.recv()] == [STATUS, ANSWER]
    raw.send(ANSWER)
    assert real.wait_for(lambda r: r.answered, DEADLINE) and real.is_connected and not real.errors

    model = IblutilRig()
    assert sent(model_rig_answers(model, STATUS, ANSWER, 0.0)) == [STATUS, ANSWER]
    assert model.receive(ANSWER, 0.01) == []
    model.tick(10.0)
    assert model.alive


def test_iblutil_passes_the_event_to_a_callback_of_several_events_only_before_python_3_12(rig):
    """The one behaviour of iblutil that depends on Python (see iblutil_models): ``event not in ExpMessage``."""
    real, raw = rig
    calls: queue.Queue = queue.Queue()

    async def register() -> None:
        real.protocol.assign_callback(ExpMessage.EXPSTATUS | ExpMessage.EXPEND, lambda *args: calls.put(args))

    real.loops.run(register())
    raw.send(STATUS)
    assert raw.recv() == STATUS  # its echo
    arguments = calls.get(timeout=DEADLINE)
    assert arguments[0] == [20]
    if sys.version_info < (3, 12):
        assert len(arguments) == 3 and arguments[2] is ExpMessage.EXPSTATUS
    else:
        assert len(arguments) == 2
    assert raw.recv() == ANSWER  # peers.IblutilRig's own per-event callback got the event all the same
    raw.send(ANSWER)
    assert real.wait_for(lambda r: r.answered, DEADLINE) and not real.errors


def test_rig_closes_when_its_answer_is_not_echoed_in_time(rig):
    real, raw = rig
    asked = time.monotonic()  # (before its answer, whenever this thread gets to read it)
    raw.send(STATUS)
    raw.recv()
    raw.recv()
    assert real.wait_for(lambda r: r.errors, DEADLINE)
    waited = time.monotonic() - asked
    assert isinstance(real.errors[0], TimeoutError) and not real.is_connected
    assert ECHO_TIMEOUT - 0.01 < waited < ECHO_TIMEOUT + 2.0
    real.loops.run(asyncio.sleep(0))  # a turn of its loop, in which the transport closes the socket
    raw.send(STATUS)  # its port is closed now: the system says so to a connected socket
    with pytest.raises(ConnectionRefusedError):
        raw.recv()

    model = IblutilRig()
    model_rig_answers(model, STATUS, ANSWER, 0.0)
    model.tick(ECHO_TIMEOUT - 0.01)
    assert model.alive
    model.tick(ECHO_TIMEOUT)
    assert not model.alive and model.cause is not None and model.cause[0] == 'no echo'


def test_rig_closes_on_another_datagram_while_it_awaits_its_echo(rig):
    real, raw = rig
    raw.send(STATUS)
    raw.recv()
    raw.recv()
    raw.send(TOKEN)  # not the echo of its answer
    assert real.wait_for(lambda r: r.errors, DEADLINE)
    assert isinstance(real.errors[0], RuntimeError) and not real.is_connected

    model = IblutilRig()
    model_rig_answers(model, STATUS, ANSWER, 0.0)
    assert model.receive(TOKEN, 0.01) == []  # taken for the wrong echo: neither echoed nor handled
    assert not model.alive and model.cause is not None and model.cause[0] == 'wrong echo'


def test_rig_that_answers_twice_at_once_closes(iblutil_rigs):
    real = iblutil_rigs('model_check', delay=0.2)  # both requests arrive before either answer
    raw = Raw(connect=real.port)
    try:
        raw.send(STATUS)
        raw.send(STATUS)
        assert [raw.recv(), raw.recv(), raw.recv(), raw.recv()] == [STATUS, STATUS, ANSWER, ANSWER]
        raw.send(ANSWER)  # the newer wait takes it; the older one can no longer end but by its timeout
        assert real.wait_for(lambda r: r.errors, DEADLINE) and not real.is_connected
        assert isinstance(real.errors[0], TimeoutError)
    finally:
        raw.close()

    model = IblutilRig()
    (first,) = events_of(model.receive(STATUS, 0.0), core.Handle)
    (second,) = events_of(model.receive(STATUS, 0.001), core.Handle)
    model.answer(first.request, ANSWER, 0.2)
    model.answer(second.request, ANSWER, 0.2)
    assert model.receive(ANSWER, 0.21) == []
    model.tick(0.2 + ECHO_TIMEOUT)
    assert not model.alive and model.cause == ('replaced', ANSWER, 0.2)  # (what the replaced wait awaited)


@pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::RuntimeWarning')  # iblutil's, on junk
@pytest.mark.parametrize('junk', JUNK)
def test_rig_echoes_junk_or_not_as_the_model_says(rig, junk, caplog):
    real, raw = rig
    with caplog.at_level(logging.CRITICAL):  # iblutil logs what it cannot decode
        raw.send(junk)
        raw.send(TOKEN)  # a message it echoes and does not answer: after it, nothing is on its way
        first = raw.recv()
        echoed = first == junk and junk != TOKEN
        assert first == (junk if echoed else TOKEN)
        if echoed:
            assert raw.recv() == TOKEN
    assert real.is_connected

    model = IblutilRig()
    events = model.receive(junk, 0.0)
    assert (Send(junk) in events) == echoed
    assert not events_of(events, core.Handle) and model.alive


# --- the main (client role) ---
def confirmed_send(loops: LoopThread, client: EchoProtocol, data: bytes):
    """Start iblutil's confirmed send on its loop; return the concurrent future of its outcome."""
    return asyncio.run_coroutine_threadsafe(client.confirmed_send(data), loops.loop)


def test_main_send_completes_on_the_echo(main):
    client, loops, raw = main
    done = confirmed_send(loops, client, STATUS)
    assert raw.recv() == STATUS
    raw.send(STATUS)
    assert done.result(DEADLINE) is None and client.is_connected

    model = IblutilMain()
    assert sent(model.request(STATUS, 0.0)) == [STATUS]
    assert events_of(model.receive(STATUS, 0.001), core.Echoed) and model.alive


def test_main_closes_on_another_datagram_than_the_echo(main):
    client, loops, raw = main
    done = confirmed_send(loops, client, STATUS)
    raw.recv()
    raw.send(ANSWER)  # the answer overtook the echo
    with pytest.raises(RuntimeError):
        done.result(DEADLINE)
    assert not client.is_connected

    model = IblutilMain()
    model.request(STATUS, 0.0)
    assert model.receive(ANSWER, 0.001) == [core.Failed(1, 'closed', 'wrong echo')]
    assert not model.alive


def test_main_closes_when_no_echo_comes(main):
    client, loops, raw = main
    done = confirmed_send(loops, client, STATUS)
    raw.recv()
    with pytest.raises(TimeoutError):
        done.result(DEADLINE)
    assert not client.is_connected

    model = IblutilMain()
    model.request(STATUS, 0.0)
    assert model.tick(ECHO_TIMEOUT - 0.01) == [] and model.alive
    model.tick(ECHO_TIMEOUT)
    assert not model.alive


@pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::RuntimeWarning')
@pytest.mark.parametrize('datagram', [ANSWER, b'[0, "KeyError: k", 2]', b'[999, 1]', b'hello'])
def test_main_echoes_what_it_does_not_await_unless_an_error_report(main, datagram, caplog):
    client, loops, raw = main
    done = confirmed_send(loops, client, STATUS)  # first learn the address iblutil sends from
    raw.recv()
    raw.send(STATUS)
    done.result(DEADLINE)
    with caplog.at_level(logging.CRITICAL):
        raw.send(datagram)
        done = confirmed_send(loops, client, TOKEN)  # its next send shows what came before it
        first = raw.recv()
        echoed = first == datagram
        if echoed:
            first = raw.recv()
        assert first == TOKEN
        raw.send(TOKEN)
        done.result(DEADLINE)
    assert client.is_connected

    model = IblutilMain()
    model.request(STATUS, 0.0)
    model.receive(STATUS, 0.001)
    assert (Send(datagram) in model.receive(datagram, 0.002)) == echoed and model.alive
