#!/usr/bin/env python3
"""How many back-to-back requests iblrig's video program loses, with and without the pause.

The video program (``tests.program_peers.VideoPeer``: iblutil's real EchoProtocol on its own asyncio
loop, shaped as iblrig's ``CameraSessionNetworked``) starts waiting for its next message only a
few loop turns after the echo of its previous answer (or `--rearm` seconds); a request that
arrives sooner is echoed and never handled: its exchange ends in stage 'no response'. Our
Communicator sends EXPSTATUS again and again, each as soon as the previous ended (and the
pause), and counts those. With the real program's few loop turns, how many are lost depends on
which thread the machine runs first, so this is a measurement, not a test.

Usage, from the repository root (a module of the ``tests`` package, on this checkout's ``iblnet_sync``)::

    python -m tests.measure_video_loss --requests 1000 --pause 0
    python -m tests.measure_video_loss --requests 1000              # the library's default pause
"""
from __future__ import annotations

import argparse
import collections
import sys

from iblnet_sync import Communicator, RigError, core
from tests.program_peers import VideoPeer


def count_lost(requests: int, pause: float | None = None, timeout: float = 0.2,
               rearm: float = 0.0) -> collections.Counter:
    """Send `requests` EXPSTATUS back to back to a fresh video program; count the outcomes.

    Parameters
    ----------
    requests : int
        How many requests.
    pause : float, optional
        The Communicator's pause (seconds); None: the library's default.
    timeout : float
        Seconds each request waits for its answer (a lost one costs that much).
    rearm : float
        Seconds the program takes to wait again after the echo of its answer (0: one loop step).

    Returns
    -------
    collections.Counter
        'answered', and the stage of each failure ('no response' for a lost request).
    """
    options = {} if pause is None else {'pause': pause}
    outcomes: collections.Counter = collections.Counter()
    video = VideoPeer(rearm=rearm)
    try:
        with Communicator(video.uri, name='cameras', timeout=timeout, **options) as rig:
            for _ in range(requests):
                try:
                    rig.status('CONNECTED')
                    outcomes['answered'] += 1
                except RigError as ex:
                    outcomes[ex.stage] += 1
        outcomes['program ended'] = int(not video.is_connected)
    finally:
        video.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m tests.measure_video_loss',
                                     description="Count the back-to-back requests iblrig's video program loses.")
    parser.add_argument('--requests', type=int, default=1000)
    parser.add_argument('--pause', type=float, default=None,
                        help=f'seconds (default: the library default, {getattr(core, "PAUSE", 0.0)})')
    parser.add_argument('--timeout', type=float, default=0.2, help='seconds each request waits (default 0.2)')
    parser.add_argument('--rearm', type=float, default=0.0,
                        help='seconds the program takes to wait again (default 0: one loop step)')
    args = parser.parse_args(argv)
    outcomes = count_lost(args.requests, args.pause, args.timeout, args.rearm)
    lost = outcomes['no response']
    pause = getattr(core, 'PAUSE', 0.0) if args.pause is None else args.pause
    print(f'pause {pause * 1e3:g} ms: {lost} of {args.requests} requests lost ({100 * lost / args.requests:.1f}%);'
          f' outcomes {dict(outcomes)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
