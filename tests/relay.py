"""A lossy UDP relay for fault tests: seeded random drops, duplicates and reordering.

The main side talks to the relay's address as if it were the rig; the relay forwards each
datagram to the rig and back, losing, repeating or delaying some on purpose.

From the repository root (a module of the ``tests`` package, on this checkout's ``iblnet_sync``)::

    python -m tests.relay --loss 0.2 --rounds 500     # a soak between Services and a RigServer
"""
from __future__ import annotations

import collections
import random
import selectors
import socket
import threading
import time


class LossyRelay:
    """Forward datagrams between one main side and one rig, badly.

    Parameters
    ----------
    rig_address : (str, int)
        Where the rig listens.
    loss, duplicate, reorder : float
        Probability, for each datagram and each direction, to drop it, send it twice, or hold
        it back until after the next one (at most `hold` seconds).
    seed : int
        Seed of the random generator, so a failure can be replayed.
    """

    def __init__(self, rig_address, loss=0.0, duplicate=0.0, reorder=0.0, seed=0, hold=0.005):
        self.loss, self.duplicate, self.reorder, self.hold = loss, duplicate, reorder, hold
        self.random = random.Random(seed)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(('127.0.0.1', 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(rig_address)
        self.uri = f'udp://127.0.0.1:{self.front.getsockname()[1]}'
        self.counts = {'forwarded': 0, 'dropped': 0, 'duplicated': 0, 'reordered': 0}
        self._main_address = None
        self._held: list = []  # (deadline, send function, data)
        self._stop_reader, self._stop_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name='lossy-relay', daemon=True)
        self._thread.start()

    def _forward(self, send, data):
        roll = self.random.random()
        if roll < self.loss:
            self.counts['dropped'] += 1
            return
        if roll < self.loss + self.reorder:
            self.counts['reordered'] += 1
            self._held.append((time.monotonic() + self.hold, send, data))
            return
        send(data)
        self.counts['forwarded'] += 1
        if self.random.random() < self.duplicate:
            self.counts['duplicated'] += 1
            send(data)
        self._release_held(everything=True)  # held ones go out after the next datagram

    def _release_held(self, everything=False):
        now = time.monotonic()
        keep = []
        for deadline, send, data in self._held:
            if everything or deadline <= now:
                send(data)
            else:
                keep.append((deadline, send, data))
        self._held = keep

    def _to_main(self, data):
        if self._main_address:
            self.front.sendto(data, self._main_address)

    def _serve(self):
        with selectors.DefaultSelector() as selector:
            selector.register(self.front, selectors.EVENT_READ)
            selector.register(self.back, selectors.EVENT_READ)
            selector.register(self._stop_reader, selectors.EVENT_READ)
            while True:
                timeout = min((d for d, _, _ in self._held), default=None)
                timeout = None if timeout is None else max(0.0, timeout - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.fileobj is self._stop_reader:
                        return
                    try:
                        data, addr = key.fileobj.recvfrom(65535)
                    except OSError:
                        continue  # e.g. the rig is gone: ICMP port unreachable
                    if key.fileobj is self.front:
                        self._main_address = addr
                        self._forward(self.back.send, data)
                    else:
                        self._forward(self._to_main, data)
                self._release_held()

    def close(self):
        self._stop_writer.send(b'x')
        self._thread.join(5)
        for sock in (self.front, self.back, self._stop_reader, self._stop_writer):
            sock.close()


class CopyOnce(LossyRelay):
    """A relay that loses nothing and sends one datagram, `copied`, once more, `after` seconds later (a network
    duplicate, or a late copy): toward the rig if `to_rig`, else toward the main. It tells when any datagram
    went through (`activity`) and when the copy went (`released`), and counts what the rig sent (`from_rig`)."""

    def __init__(self, rig_address, copied: bytes, to_rig: bool, after: float = 0.0):
        self.copied, self.to_rig, self.after = copied, to_rig, after
        self.released, self.activity = threading.Event(), threading.Event()
        self.from_rig: collections.Counter = collections.Counter()
        self.from_rig_changed = threading.Condition()
        super().__init__(rig_address)

    def _forward(self, send, data):
        send(data)
        self.counts['forwarded'] += 1
        self.activity.set()
        if send == self._to_main:
            with self.from_rig_changed:
                self.from_rig[data] += 1
                self.from_rig_changed.notify_all()
        if data == self.copied and (send == self._to_main) != self.to_rig:
            self.copied = None
            self._held.append((time.monotonic() + self.after, send, data))
            self._release_held()

    def _release_held(self, everything=False):
        held = bool(self._held)
        super()._release_held(everything)
        if held and not self._held:
            self.released.set()

    def wait_quiet(self, quiet=0.2, deadline=5.0) -> bool:
        """Wait until nothing went through for `quiet` seconds (False: still busy after `deadline`)."""
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            self.activity.clear()
            if not self.activity.wait(quiet):
                return True
        return False


def handshake(services) -> None:
    """EXPINFO as NetworkSession sends it first: its info says that this main runs iblnet_sync,
    so our rig tags its answer and both sides tag from then on (resent until echoed)."""
    services.info('CONNECTED', {})


def soak(loss: float, rounds: int, seed: int = 1, duplicate: float = 0.0, reorder: float = 0.0,
         resend_interval: float = 0.2, resends: int | None = None, iblutil_rig: bool = False) -> dict:
    """Run `rounds` EXPSTART rounds from Services to a rig through a lossy relay.

    The rig is a RigServer, or with `iblutil_rig` iblutil's own EchoProtocol (which closes its
    socket for good when an answer of its is not echoed within a second).
    """
    from iblnet_sync import RigError, RigServer, Services

    if iblutil_rig:
        from tests.peers import IblutilRig
        rig = IblutilRig('rig')
    else:
        rig = RigServer('udp://127.0.0.1:0', name='rig', resend_interval=resend_interval)
    options = {'resend_interval': resend_interval, 'echo_timeout': 5 * resend_interval}
    if resends is not None:
        options['resends'] = resends
    failures = []
    host, port = rig.uri[len('udp://'):].rsplit(':', 1)
    relay = LossyRelay((host, int(port)), loss=loss, duplicate=duplicate, reorder=reorder, seed=seed)
    try:
        with Services({'rig': relay.uri}, timeout=2, **options) as services:
            handshake(services)
            for i in range(rounds):
                ref = f'2026-11-24_{i + 1}_mouse'
                try:
                    answer = services['rig'].start(ref)
                    if answer != [ref, None]:
                        failures.append((i, f'wrong answer {answer}'))
                except RigError as ex:
                    failures.append((i, str(ex)))
    finally:
        relay.close()
        rig.close()
    return {'loss': loss, 'duplicate': duplicate, 'reorder': reorder, 'rounds': rounds,
            'failed': len(failures), 'first_failure': failures[0][0] if failures else None,
            'failures': failures[:3], **relay.counts}


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(prog='python -m tests.relay',
                                     description='Soak Services against a RigServer through a lossy relay.')
    parser.add_argument('--loss', type=float, default=0.1)
    parser.add_argument('--rounds', type=int, default=300)
    parser.add_argument('--duplicate', type=float, default=0.0)
    parser.add_argument('--reorder', type=float, default=0.0)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--resend-interval', type=float, default=0.2)
    parser.add_argument('--resends', type=int, default=None, help='default: the library default')
    parser.add_argument('--iblutil-rig', action='store_true', help="iblutil's EchoProtocol as the rig")
    options = parser.parse_args()
    start = time.perf_counter()
    print(soak(options.loss, options.rounds, options.seed, options.duplicate, options.reorder,
               options.resend_interval, options.resends, options.iblutil_rig),
          f'{time.perf_counter() - start:.1f} s')
