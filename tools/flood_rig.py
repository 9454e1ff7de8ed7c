#!/usr/bin/env python3
"""Measure what the floods of issue 15 cost a rig: its memory (RSS) and the log it writes.

For each flood, a fresh :class:`~iblnet_sync.rig_server.RigServer` runs in a child process from
the source tree given (``--tree``; the child prints which ``iblnet_sync`` it imported), logging
to a file as the agent does (logger ``iblnet_sync`` at INFO, DEBUG with ``--debug``). This
process floods it from loopback sockets for a bounded time and count, sampling the child's
``VmRSS`` in ``/proc`` meanwhile, then reads the log: its size, its longest line, and the lines
that carry a raw ``\\r``, ESC or U+2028 (forged lines). Linux only; traffic to 127.0.0.1 only.

    python tools/flood_rig.py                                  # this checkout, every flood
    python tools/flood_rig.py --tree OLD --tree .              # side by side: before | after
    python tools/flood_rig.py --floods a,f --seconds 3 -v      # some floods, shorter

Floods: a) 65 KB error reports from a main with a conversation; b) a 65 KB reference and
``\\r``/ESC/U+2028 in values (EXPINIT, error reports); b2) the same to ``iblnet-rig`` running
``[false, "{exp_ref}"]`` at EXPINIT (its log: its console, which gets every line); c1, c2) a
handler that sleeps 5 s and 65 KB requests of many small objects, from one sender and from 64;
d) 65 KB tag ids from 64 senders; e) a main-sync rig sent EXPINFOs, each with a new 30 KB
subject; f) 20,000 senders of one request each. ``-v`` adds the rig's tables after each flood
(the dispatcher's timer heap, mains, alarms; always for f). Nothing here asserts a target.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = '127.0.0.1'
MIB = 2 ** 20
FORGED = '\r2026-11-24 12:00:00.000 ERROR   forged line\x1b[2K\x1b[31m\u2028forged too'
"""Text that forges log lines if logged raw: a carriage return, ESC sequences, U+2028."""

CHILD = r'''
import inspect, json, logging, os, sys, time
tree, log_path, level, kind = sys.argv[1:5]
sys.path.insert(0, tree)
import iblnet_sync
from iblnet_sync.rig_server import RigServer

print('FILE', iblnet_sync.__file__, flush=True)
if kind == 'agent':  # iblnet-rig itself, with the rig.yaml beside the log; its log lines go to stderr
    import threading
    from iblnet_sync import rig

    def leave():
        for line in sys.stdin:
            print('STATS {}', flush=True)
        time.sleep(0.5)  # (newer agents log through a queue: let it drain)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)
    threading.Thread(target=leave, daemon=True).start()
    rig.main([os.path.join(os.path.dirname(log_path), 'rig.yaml')] + (['-v'] if level == 'debug' else []))
    sys.exit('iblnet-rig ended')
handler = logging.FileHandler(log_path, encoding='utf-8')
handler.setFormatter(logging.Formatter('%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s', '%Y-%m-%d %H:%M:%S'))
logger = logging.getLogger('iblnet_sync')
logger.addHandler(handler)
logger.setLevel(logging.DEBUG if level == 'debug' else logging.INFO)
accepted = inspect.signature(RigServer).parameters
options = {'main_sync': kind == 'main_sync'}
if 'session_numbers' in accepted:  # (not in older code) never the user's own file
    options['session_numbers'] = os.path.join(os.path.dirname(log_path), 'session_numbers.json')
if 'allow' in accepted:
    options['allow'] = ['127.0.0.1']
server = RigServer('udp://127.0.0.1:0', name='flooded', **options)
if kind == 'slow':
    server.assign_handler('EXPINIT', lambda data: time.sleep(5))
print('READY', server.uri.rsplit(':', 1)[1], flush=True)


def kept_bytes(main):
    """Bytes of the datagrams a conversation remembers (its last plain requests, answers whose echo is owed)."""
    values = [getattr(main, '_plain', b''), *getattr(main, '_plains', ()), *getattr(main, '_owed', ())]
    return sum(len(value) for value in values if isinstance(value, bytes))


for line in sys.stdin:  # each line asks for the rig's tables; end of input: leave at once
    timers, mains, alarms = server._dispatcher._timers, dict(server._peers), dict(server._alarms)
    print('STATS', json.dumps({
        'timers': len(timers), 'mains': len(mains), 'alarms': len(alarms),
        'alarms of forgotten mains': len(alarms.keys() - mains.keys()),
        'MiB kept by conversations': round(sum(map(kept_bytes, mains.values())) / 2 ** 20, 1)}), flush=True)
handler.flush()
os._exit(0)  # not close(): a handler may sleep with a thousand requests queued behind it
'''


AGENT_CONFIG = '''name: flooded
listen: udp://127.0.0.1:{port}
on:
  EXPINIT:
    run: ["false", "{{exp_ref}}"]
'''
"""iblnet-rig's configuration in flood b2: a command that fails (so it is logged at ERROR) with the reference."""


@dataclass
class Budget:
    """When a flood stops: after `seconds`, `count` datagrams, or when `stop` is set (a cap was reached)."""

    seconds: float
    count: int
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def more(self) -> bool:
        """bool: whether another datagram may go."""
        return self.sent < self.count and not self.stop.is_set() and time.monotonic() < self.deadline


@dataclass
class Flood:
    """One attack: its key, what it does, the kind of rig it needs and the function that sends it."""

    key: str
    description: str
    rig: str  # 'plain', 'slow' (an EXPINIT handler that sleeps 5 s) or 'main_sync'
    send: Callable[[tuple[str, int], Budget], None]


@dataclass
class Result:
    """What one flood cost the rig."""

    file: str
    log: Path
    sent: int
    rss_base: int
    rss_peak: int
    rss_end: int
    log_bytes: int
    longest_line: int
    forged_lines: int
    stats_end: dict
    stats_settled: dict
    capped: str = ''


# --- the floods (this process sends) ---
@contextlib.contextmanager
def senders(count: int) -> Iterator[list[socket.socket]]:
    """`count` non-blocking UDP sockets on loopback, closed at the end."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(sock := socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((LOOPBACK, 0))
            sock.setblocking(False)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def send(sock: socket.socket, data: bytes, rig: tuple[str, int], budget: Budget) -> None:
    """Send one datagram; a full buffer or an error only loses it (as a flood would)."""
    budget.sent += 1
    with contextlib.suppress(OSError):
        sock.sendto(data, rig)


def round_robin(rig: tuple[str, int], budget: Budget, socks: list[socket.socket],
                datagram: Callable[[int, int], bytes]) -> None:
    """Send ``datagram(sender index, n)`` from each socket in turn, its n-th, until the budget ends."""
    n = 0
    while True:
        for index, sock in enumerate(socks):
            if not budget.more():
                return
            send(sock, datagram(index, n), rig, budget)
        n += 1


def open_conversation(sock: socket.socket, rig: tuple[str, int], budget: Budget) -> None:
    """One real request (EXPSTATUS), so that the rig keeps a conversation with this main."""
    send(sock, b'[32, 0]', rig, budget)
    time.sleep(0.2)


def error_reports(rig: tuple[str, int], budget: Budget) -> None:
    """Flood a: the same 65 KB error report again and again, from a main the rig has a conversation with."""
    report = json.dumps([0, 'x' * 65000, 2]).encode()
    with senders(1) as socks:
        open_conversation(socks[0], rig, budget)
        round_robin(rig, budget, socks, lambda index, n: report)


def forged_values(rig: tuple[str, int], budget: Budget) -> None:
    """Flood b: in turn an EXPINIT with a new 65 KB reference, one with a forging reference, a forging error report."""
    def datagram(index: int, n: int) -> bytes:
        if n % 3 == 0:  # a 65 KB reference, a new one each time
            return json.dumps([1, {'exp_ref': f'2026-11-24_1_{"m" * 64980}{n:010d}'}]).encode()
        if n % 3 == 1:
            return json.dumps([1, {'exp_ref': f'2026-11-24_1_m{n}{FORGED}'}]).encode()
        return json.dumps([0, f'report {n}{FORGED}', 1]).encode()
    with senders(1) as socks:
        open_conversation(socks[0], rig, budget)
        round_robin(rig, budget, socks, datagram)


SMALL_OBJECTS = b'[1, [' + b', '.join([b'{}'] * 16200) + b'], '
"""The start of an EXPINIT of 65 KB holding 16,200 empty dicts; a counter and ``]`` make each new."""


def small_objects(count: int) -> Callable[[tuple[str, int], Budget], None]:
    """Flood c from `count` senders: new 65 KB EXPINITs of 16,200 empty dicts each, as fast as they go."""
    def flood(rig: tuple[str, int], budget: Budget) -> None:
        with senders(count) as socks:
            round_robin(rig, budget, socks, lambda index, n: SMALL_OBJECTS + b'%d]' % n)
    return flood


def tag_ids(rig: tuple[str, int], budget: Budget) -> None:
    """Flood d: tagged EXPSTATUS requests, each with a new 65 KB id, from 64 senders."""
    filler = 'x' * 64980
    with senders(64) as socks:
        round_robin(rig, budget, socks, lambda index, n: json.dumps(
            {'id': f'{filler}{index:02d}{n:010d}', 're': None, 'msg': [32, 0]}).encode())


def subjects(rig: tuple[str, int], budget: Budget) -> None:
    """Flood e: EXPINFOs, each naming a new 30 KB subject."""
    filler = 's' * 30000
    with senders(1) as socks:
        round_robin(rig, budget, socks, lambda index, n: json.dumps([64, 0, {'subject': f'{filler}{n:08d}'}]).encode())


def many_senders(rig: tuple[str, int], budget: Budget, total: int = 20000, batch: int = 200) -> None:
    """`total` senders of one EXPSTATUS each, `batch` sockets open at a time (paced: the rig's buffer is small)."""
    for _ in range(0, total, batch):
        with senders(batch) as socks:
            for sock in socks:
                if not budget.more():
                    return
                send(sock, b'[32, 0]', rig, budget)
        time.sleep(0.01)


FLOODS = [
    Flood('a', '65 KB error reports, after one real request', 'plain', error_reports),
    Flood('b', '65 KB reference; \\r, ESC, U+2028 in values', 'plain', forged_values),
    Flood('b2', 'b) against iblnet-rig running [false, {exp_ref}] at EXPINIT', 'agent', forged_values),
    Flood('c1', 'slow handler + 65 KB of small objects, 1 sender', 'slow', small_objects(1)),
    Flood('c2', 'slow handler + 65 KB of small objects, 64 senders', 'slow', small_objects(64)),
    Flood('d', '65 KB tag ids, 64 senders', 'plain', tag_ids),
    Flood('e', 'main sync: a new 30 KB subject per EXPINFO', 'main_sync', subjects),
    Flood('f', '20,000 senders, one request each', 'plain', many_senders),
]


# --- the rig (a child process) and its measures ---
def rss(pid: int) -> int:
    """Bytes of resident memory of process `pid` (0 once it is gone)."""
    try:
        with open(f'/proc/{pid}/status') as status:
            for line in status:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def read_line(child: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """The rest of the child's next stdout line starting with `prefix` (RuntimeError if none comes in time)."""
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
            line = child.stdout.readline()
            if not line:
                break
            if line.startswith(prefix + ' '):
                return line[len(prefix) + 1:].strip()
    raise RuntimeError(f'the rig gave no {prefix} line (exit code {child.poll()})')


def wait_for(path: Path, text: bytes, timeout: float = 20.0) -> None:
    """Wait until the file at `path` contains `text` (RuntimeError if it does not in time)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_bytes():
        if time.monotonic() > deadline:
            raise RuntimeError(f'{path} never said {text!r}')
        time.sleep(0.05)


def stats(child: subprocess.Popen) -> dict:
    """The rig's table sizes (timers in the dispatcher's heap, mains, alarms), as the child reports them."""
    assert child.stdin is not None
    child.stdin.write('stats\n')
    child.stdin.flush()
    return json.loads(read_line(child, 'STATS'))


def log_lines(path: Path) -> tuple[int, int]:
    """The longest line of the log in bytes, and how many lines carry a raw ``\\r``, ESC or U+2028."""
    longest = forged = 0
    with open(path, 'rb') as log:
        for line in log:  # (lines end at \n only)
            longest = max(longest, len(line.rstrip(b'\n')))
            forged += any(mark in line for mark in (b'\r', b'\x1b', '\u2028'.encode()))
    return longest, forged


def measure(flood: Flood, tree: Path, args: argparse.Namespace) -> Result:
    """Start a fresh rig from `tree`, flood it, and measure it."""
    with contextlib.ExitStack() as stack:
        folder = (tempfile.mkdtemp(prefix=f'flood_rig-{flood.key}-') if args.keep
                  else stack.enter_context(tempfile.TemporaryDirectory(prefix='flood_rig-')))
        log_path = Path(folder, 'stderr' if flood.rig == 'agent' else 'rig.log')
        errors = stack.enter_context(open(Path(folder, 'stderr'), 'w+'))
        if flood.rig == 'agent':
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a free port
                probe.bind((LOOPBACK, 0))
                port = probe.getsockname()[1]
            Path(folder, 'rig.yaml').write_text(AGENT_CONFIG.format(port=port))
        child = subprocess.Popen([sys.executable, '-c', CHILD, str(tree), str(log_path),
                                  'debug' if args.debug else 'info', flood.rig],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                                 cwd=folder)
        try:
            file = read_line(child, 'FILE')
            if flood.rig == 'agent':
                wait_for(log_path, b' listening on ')
            else:
                port = int(read_line(child, 'READY'))
            time.sleep(0.5)
            base = rss(child.pid)
            budget = Budget(args.seconds, args.count)
            peak, capped = base, []

            def sample() -> None:  # every 50 ms until the flood and its settling are over
                nonlocal peak
                while not done.wait(0.05):
                    peak = max(peak, now := rss(child.pid))
                    if now - base > args.max_rss * MIB and not budget.stop.is_set():
                        capped.append(f'RSS over {args.max_rss} MiB')
                        budget.stop.set()
                    if log_path.stat().st_size > args.max_log * MIB and not budget.stop.is_set():
                        capped.append(f'log over {args.max_log} MiB')
                        budget.stop.set()
            done = threading.Event()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            flood.send((LOOPBACK, port), budget)
            stats_end = stats(child)
            time.sleep(args.settle)
            done.set()
            sampler.join()
            end = rss(child.pid)
            peak = max(peak, end)
            stats_settled = stats(child)
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(20)
            longest, forged = log_lines(log_path)
            return Result(file, log_path, budget.sent, base, peak, end, log_path.stat().st_size, longest, forged,
                          stats_end, stats_settled, ', '.join(capped))
        except Exception:
            errors.seek(0)
            sys.stderr.write(errors.read()[-2000:])
            raise
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


def describe(tree: Path) -> str:
    """The tree's path and commit (with ``+`` when it has changes)."""
    try:
        commit = subprocess.run(['git', '-C', str(tree), 'describe', '--always', '--dirty=+'], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = '?'
    return f'{tree} ({commit})'


def summary(result: Result) -> str:
    """Peak RSS growth, log size, longest line and forged lines, as one table cell."""
    return (f'{(result.rss_peak - result.rss_base) / MIB:8.1f} {result.log_bytes / MIB:8.2f} '
            f'{result.longest_line:8,d} {result.forged_lines:7,d}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--tree', action='append', type=Path,
                        help='a source tree to import iblnet_sync from (default: this repository); twice: before, '
                             'after')
    parser.add_argument('--floods', default=','.join(flood.key for flood in FLOODS),
                        help='which floods, comma-separated (default: all)')
    parser.add_argument('--seconds', type=float, default=4.0, help='how long each flood lasts at most')
    parser.add_argument('--count', type=int, default=200_000, help='datagrams per flood at most')
    parser.add_argument('--settle', type=float, default=1.5, help='seconds waited after a flood before "end"')
    parser.add_argument('--max-rss', type=float, default=3072, help='MiB of RSS growth that stops a flood early')
    parser.add_argument('--max-log', type=float, default=1024, help='MiB of log that stop a flood early')
    parser.add_argument('--debug', action='store_true', help='the rig logs at DEBUG (as the agent with -v)')
    parser.add_argument('--keep', action='store_true', help='keep each rig\'s folder (its log), and say where')
    parser.add_argument('-v', '--verbose', action='store_true', help='also the rig\'s tables, per flood')
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.tree or [ROOT]]
    floods = {flood.key: flood for flood in FLOODS}
    chosen = [floods[key] for key in args.floods.split(',')]
    results: dict[str, list[Result]] = {}
    for index, tree in enumerate(trees):
        print(f'tree {index + 1}: {describe(tree)}', flush=True)
        for flood in chosen:
            result = measure(flood, tree, args)
            results.setdefault(flood.key, []).append(result)
            if flood is chosen[0]:
                print(f'  imported {result.file}')
            print(f'  {flood.key:2} {flood.description}: {result.sent:,} datagrams; RSS '
                  f'{result.rss_base / MIB:.0f} MiB, peak +{(result.rss_peak - result.rss_base) / MIB:.1f}, '
                  f'{args.settle:g} s after +{(result.rss_end - result.rss_base) / MIB:.1f}; log '
                  f'{result.log_bytes / MIB:.2f} MiB, longest line {result.longest_line:,} B, '
                  f'{result.forged_lines:,} forged lines' + (f'; stopped early: {result.capped}' if result.capped
                                                             else ''), flush=True)
            if args.keep:
                print(f'     its log: {result.log}')
            if args.verbose or flood.key == 'f':
                print(f'     tables at the end {result.stats_end}, {args.settle:g} s later {result.stats_settled}')
    header = ' | '.join(f'{"RSS MiB":>8} {"log MiB":>8} {"line B":>8} {"forged":>7}' for _ in trees)
    print(f'\n{"flood":5} | {header}    (RSS: peak growth; line: longest; forged: lines with \\r, ESC, U+2028)')
    if len(trees) == 2:
        print(f'{"":5} | {"before":^34} | {"after":^34}')
    for flood in chosen:
        print(f'{flood.key:5} | ' + ' | '.join(summary(result) for result in results[flood.key]))


if __name__ == '__main__':
    main()
