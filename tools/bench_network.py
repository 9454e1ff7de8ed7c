#!/usr/bin/env python3
"""Benchmark iblnet_sync against the raw-socket floor and iblutil's asyncio Services.

All three clients talk to the same real iblutil rigs (EchoProtocol, server role), which run in
a child process on loopback. One round is: send EXPSTATUS to every rig, receive each echo and
response, echo each response back. With ``--gap`` each client idles that long before each round
(as a task that sends a request now and then; the gap is not part of the round time measured). The
three clients run in interleaved blocks of rounds, so that a change in the machine's load during
the run affects all three alike. Also measured:
idle CPU, timeout lateness, time to report a refused port, threads, leaks over connect/close
cycles, memory over many exchanges, and import times. Figures go to stdout; nothing here
asserts a target. It measures the installed ``iblnet_sync`` (``pip install .``, or ``pip install -e .``
for a checkout's code) and says which one.

    python tools/bench_network.py              # the full run (a few minutes)
    python tools/bench_network.py --quick      # a smoke run (seconds)
    python tools/bench_network.py --gap 0.002 --sizes 1,8,64   # rounds 2 ms apart
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent

RIG_PROCESS = r'''
import asyncio, functools, json, logging, socket, sys
from iblutil.io.net.app import EchoProtocol
logging.disable(logging.CRITICAL)

async def main(n):
    loop = asyncio.get_running_loop()
    ports = []
    for i in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
        factory = functools.partial(EchoProtocol, f'udp://127.0.0.1:{port}', 'server', name=f'rig{i}',
                                    logger=logging.getLogger('rig'))
        _, proto = await loop.create_datagram_endpoint(factory, sock=sock)
        def answer_status(data, addr, proto=proto):
            loop.create_task(proto.confirmed_send(json.dumps([32, 0]).encode(), addr=addr))
        def answer_start(data, addr, proto=proto):
            loop.create_task(proto.confirmed_send(json.dumps([2, data[0], None]).encode(), addr=addr))
        proto.assign_callback('EXPSTATUS', answer_status)
        proto.assign_callback('EXPSTART', answer_start)
        ports.append(port)
    print(json.dumps(ports), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # serve until the parent closes stdin

asyncio.run(main(int(sys.argv[1])))
'''

REQUEST = b'[32, 0]'


class RigProcess:
    """N iblutil rigs in a child process."""

    def __init__(self, n: int):
        self.process = subprocess.Popen([sys.executable, '-c', RIG_PROCESS, str(n)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        ports = json.loads(self.process.stdout.readline())
        self.uris = {f'rig{i}': f'udp://127.0.0.1:{port}' for i, port in enumerate(ports)}

    def close(self):
        self.process.stdin.close()
        self.process.wait(10)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(one_round, rounds: int, gap: float = 0.0) -> list[float]:
    """Seconds each of `rounds` calls of ``one_round()`` takes, each after `gap` seconds idle (not counted)."""
    times = []
    for _ in range(rounds):
        if gap:
            time.sleep(gap)
        start = time.perf_counter()
        one_round()
        times.append(time.perf_counter() - start)
    return times


# --- the three clients: context managers yielding block(n) -> n round times ---
@contextlib.contextmanager
def raw_floor(uris: dict, gap: float = 0.0):
    """Blocking sockets and select(), no library: the least any client can do."""
    socks = []
    for uri in uris.values():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(('127.0.0.1', int(uri.rsplit(':', 1)[1])))
        socks.append(sock)

    def one_round():
        for sock in socks:
            sock.send(REQUEST)
        stage = dict.fromkeys(socks, 0)  # 0: awaiting echo, 1: awaiting response
        pending = set(socks)
        while pending:
            for sock in select.select(list(pending), [], [], 5)[0]:
                data = sock.recv(65535)
                if stage[sock] == 0 and data == REQUEST:
                    stage[sock] = 1
                else:
                    sock.send(data)
                    pending.discard(sock)
    try:
        yield lambda n: timed(one_round, n, gap)
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def ours(uris: dict, gap: float = 0.0, **options):
    from iblnet_sync import Services
    with Services(uris, timeout=10, **options) as services:
        yield lambda n: timed(lambda: services.status(0), n, gap)


@contextlib.contextmanager
def iblutil_services(uris: dict, gap: float = 0.0):
    """iblutil's asyncio Services driven the usual way: rounds awaited inside its event loop."""
    import logging

    from iblutil.io.net.app import EchoProtocol
    from iblutil.io.net.app import Services as AsyncServices
    logging.getLogger('bench').setLevel(logging.CRITICAL)
    loop = asyncio.new_event_loop()

    async def connect():
        rigs = [await EchoProtocol.client(uri, name, log=logging.getLogger('bench')) for name, uri in uris.items()]
        return AsyncServices(rigs, timeout=10)

    async def block(n):
        times = []
        for _ in range(n):
            if gap:
                await asyncio.sleep(gap)
            start = time.perf_counter()
            await services.status(0)
            times.append(time.perf_counter() - start)
        return times

    services = loop.run_until_complete(connect())
    try:
        yield lambda n: loop.run_until_complete(block(n))
    finally:
        services.close()
        loop.run_until_complete(asyncio.sleep(0))  # let the transports close
        loop.close()


def round_times(uris: dict, rounds: int, block: int = 50, gap: float = 0.0) -> dict[str, list[float]]:
    """Round times of the three clients, in interleaved blocks so that load drift hits all alike."""
    times: dict[str, list[float]] = {'raw': [], 'ours': [], 'ours0': [], 'iblutil': []}
    with (raw_floor(uris, gap) as raw, ours(uris, gap) as our, ours(uris, gap, pause=0) as our0,
          iblutil_services(uris, gap) as theirs):
        clients = {'raw': raw, 'ours': our, 'ours0': our0, 'iblutil': theirs}
        for client in clients.values():
            client(3)  # warm up
        for _ in range(max(1, rounds // block)):
            for name, client in clients.items():
                times[name] += client(block)
    return times


# --- the other figures ---
def idle_cpu(uris: dict, seconds: float) -> float:
    from iblnet_sync import Services
    with Services(uris) as services:
        services.status(0)
        before = time.process_time()
        threading.Event().wait(seconds)
        return time.process_time() - before


def timeout_lateness(trials: int, timeout: float = 0.2) -> list[float]:
    from iblnet_sync import Services
    mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mute.bind(('127.0.0.1', 0))  # never reads: no echo, no ICMP, nothing
    late = []
    with Services({'mute': f'udp://127.0.0.1:{mute.getsockname()[1]}'}, timeout=timeout, resends=0) as services:
        for _ in range(trials):
            start = time.perf_counter()
            try:
                services.status(0)
            except TimeoutError:
                pass
            late.append(time.perf_counter() - start - timeout)
    mute.close()
    return late


def start_times(uris: dict, rounds: int) -> list[float]:
    """Seconds each ``Services.start(exp_ref)`` takes: the call a task makes when it starts."""
    from iblnet_sync import Services
    with Services(uris, timeout=10) as services:
        services.start('2026-11-24_0_mouse')
        return timed(lambda: services.start('2026-11-24_1_mouse'), rounds)


def refused_seconds(trials: int) -> list[float]:
    """How long a broadcast to a port nobody listens on takes to fail as refused (timeout 10 s)."""
    from iblnet_sync import BroadcastError, Services
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(('127.0.0.1', 0))
    uri = f'udp://127.0.0.1:{closed.getsockname()[1]}'
    closed.close()
    times = []
    for _ in range(trials):
        with Services({'ghost': uri}, timeout=10) as services:
            start = time.perf_counter()
            try:
                services.status(0)
            except BroadcastError:
                times.append(time.perf_counter() - start)
    return times


def leaks_after_cycles(uri: str, cycles: int) -> tuple[int, int]:
    """Open files and threads gained over `cycles` connect, broadcast, close cycles."""
    from iblnet_sync import Services

    def open_files():
        return len(os.listdir('/proc/self/fd')) if os.path.isdir('/proc/self/fd') else 0

    with Services({'rig': uri}) as services:
        services.status(0)
    files, threads = open_files(), threading.active_count()
    for _ in range(cycles):
        with Services({'rig': uri, 'same': uri}) as services:
            services.status(0)
    return open_files() - files, threading.active_count() - threads


def threads_for(uris: dict) -> int:
    from iblnet_sync import Services
    before = threading.active_count()
    with Services(uris) as services:
        services.status(0)  # callbacks are not used here: the callback thread is made on first use
        return threading.active_count() - before


def rss_kib() -> int:
    try:
        with open('/proc/self/statm') as statm:
            return int(statm.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_growth(uri: str, exchanges: int) -> tuple[int, int, float]:
    """RSS after 1,000 exchanges and after all, and the time of one (pause=0: with the pause between
    back-to-back exchanges this would take minutes)."""
    from iblnet_sync import Services
    with Services({'rig': uri}, pause=0) as services:
        for _ in range(1000):
            services.status(0)
        gc.collect()
        after_1k = rss_kib()
        start = time.perf_counter()
        for _ in range(exchanges - 1000):
            services.status(0)
        elapsed = time.perf_counter() - start
        gc.collect()
        return after_1k, rss_kib(), elapsed / max(1, exchanges - 1000)


def command_seconds(arguments: list[str], runs: int = 7) -> float:
    """Median wall time of ``python ARGUMENTS`` in a new process, in this folder (``-c`` code then imports the
    installed ``iblnet_sync``, as this process does, whatever the caller's folder)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *arguments], check=True, cwd=TOOLS, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='few rounds, short waits: a smoke run')
    parser.add_argument('--sizes', default='1,8,64,256', help='numbers of rigs (default 1,8,64,256)')
    parser.add_argument('--gap', type=float, default=0.0, metavar='SECONDS',
                        help='idle time before each round, not counted in it (default 0: back to back)')
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(',')]
    rounds = {1: 1000, 8: 300, 64: 100, 256: 50} if not args.quick else {}
    idle_seconds, memory_exchanges = (10.0, 100_000) if not args.quick else (1.0, 3_000)

    import iblnet_sync
    print(f'# iblnet_sync benchmark, {datetime.date.today()}, Python {platform.python_version()}, '
          f'{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs (a shared machine: ratios matter)')
    print(f'(iblnet_sync {iblnet_sync.__version__} from {Path(iblnet_sync.__file__).parent})')
    print('\n## Round time: EXPSTATUS to N iblutil rigs (child process), echo, response, echo back')
    from iblnet_sync import core
    pause = getattr(core, 'PAUSE', 0.0)
    idle = f'{args.gap * 1e3:g} ms idle before each round, not counted' if args.gap else 'back to back'
    paid = f'pays what is left of the {pause * 1e3:g} ms pause' if pause > args.gap else 'pays no pause'
    print(f'({idle}: each of our rounds to an iblutil rig {paid}; "pause=0" leaves it out)')
    print(f'{"N":>4} {"rounds":>6} | {"raw floor med/p90 ms":>21} | {"iblnet_sync med/p90 ms":>23} {"ratio":>6} | '
          f'{"pause=0 med/p90 ms":>19} {"ratio":>6} | {"iblutil med/p90 ms":>19} {"ratio":>6}')
    for n in sizes:
        count = rounds.get(n, 20)
        rigs = RigProcess(n)
        try:
            figures = {name: (statistics.median(t) * 1e3, percentile(t, 0.9) * 1e3)
                       for name, t in round_times(rigs.uris, count, gap=args.gap).items()}
        finally:
            rigs.close()
        floor = figures['raw'][0]
        print(f'{n:>4} {count:>6} | {figures["raw"][0]:>10.3f} {figures["raw"][1]:>10.3f} | '
              f'{figures["ours"][0]:>11.3f} {figures["ours"][1]:>11.3f} {figures["ours"][0] / floor:>6.2f} | '
              f'{figures["ours0"][0]:>9.3f} {figures["ours0"][1]:>9.3f} {figures["ours0"][0] / floor:>6.2f} | '
              f'{figures["iblutil"][0]:>9.3f} {figures["iblutil"][1]:>9.3f} {figures["iblutil"][0] / floor:>6.2f}')

    for n in (1, 8):
        rigs = RigProcess(n)
        try:
            times = start_times(rigs.uris, 20 if args.quick else 200)
        finally:
            rigs.close()
        print(f'{"" if n > 1 else chr(10)}## Services.start() to {n} iblutil rig(s): median '
              f'{statistics.median(times) * 1e3:.3f} ms, p90 {percentile(times, 0.9) * 1e3:.3f} ms')
    rigs = RigProcess(8)
    try:
        cpu = idle_cpu(rigs.uris, idle_seconds)
        print(f'## Idle: CPU used by a connected Services (8 rigs) over {idle_seconds:.0f} s: {cpu * 1e3:.2f} ms')
    finally:
        rigs.close()
    late = timeout_lateness(5 if args.quick else 20)
    print(f'## Timeout lateness (returned minus deadline, mute rig): median {statistics.median(late) * 1e3:.2f} ms, '
          f'max {max(late) * 1e3:.2f} ms')
    refused = refused_seconds(5)
    print(f'## Refused port reported after: median {statistics.median(refused) * 1e3:.2f} ms '
          f'(timeout 10 s)')
    largest = max(sizes)
    rigs = RigProcess(largest)
    try:
        print(f'## Threads added by a Services of {largest} rigs: {threads_for(rigs.uris)}')
    finally:
        rigs.close()
    rigs = RigProcess(1)
    try:
        after_1k, after_all, per_exchange = memory_growth(rigs.uris['rig0'], memory_exchanges)
        cycles = 300
        files, threads = leaks_after_cycles(rigs.uris['rig0'], cycles)
        print(f'## Leaks after {cycles} connect/broadcast/close cycles: {files:+d} open files, {threads:+d} threads')
        print(f'## Memory (RSS): {after_1k} KiB after 1k exchanges, {after_all} KiB after {memory_exchanges:,} '
              f'({after_all - after_1k:+d} KiB); {per_exchange * 1e6:.0f} us per exchange (pause=0)')
    finally:
        rigs.close()
    started = command_seconds(['-c', 'pass'])
    imported = command_seconds(['-c', 'import iblnet_sync'])
    helped = command_seconds(['ping_rigs.py', '--help'])
    print(f'## Import: `import iblnet_sync` {imported - started:.3f} s beyond interpreter start '
          f'({started:.3f} s); `ping_rigs.py --help` {helped:.3f} s in all')
    return 0


if __name__ == '__main__':
    sys.exit(main())
