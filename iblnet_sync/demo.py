"""A complete experiment on this machine: three local rigs and a legacy task, as a timeline.

Run it with ``python -m iblnet_sync.demo``. No configuration and no real rigs are needed:
the auxiliary rigs are :class:`~iblnet_sync.RigServer` instances on loopback, one of them
the main sync that decides the experiment reference. ``--rigs FILE`` runs the same task
against the real rigs named in a remote rigs file.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time

from iblnet_sync import NetworkSession, RigServer
from iblnet_sync.config import load_remote_rigs

log = logging.getLogger('iblnet_sync.demo')
_EVENT_NAMES = {'info': 'EXPINFO', 'init': 'EXPINIT', 'start': 'EXPSTART', 'stop': 'EXPEND'}


class BehaviourTask:
    """A legacy task as iblrig writes them: host attributes set, then every ``init_mixin_*`` run."""

    def __init__(self, subject: str = 'demo_mouse', trials: int = 3):
        self.hardware_settings = {'MAIN_SYNC': False}
        self.session_info = {'SUBJECT_NAME': subject, 'SESSION_START_TIME': datetime.datetime.now().isoformat()}
        self.experiment_description = {'devices': {'cameras': {'left': {}}, 'neuropixel': {'probe00': {}}}}
        self.n_trials = trials
        for name in sorted(dir(self)):
            if name.startswith('init_mixin'):
                getattr(self, name)()

    def run(self) -> int:
        for trial in range(self.n_trials):  # a Bpod state machine loop would run here
            log.info('trial %d', trial + 1)
        return self.n_trials


class DemoTask(NetworkSession, BehaviourTask):
    """The behaviour task with the network lifecycle mixed in, timing each step."""

    def __init__(self, *args, timeline: list, **kwargs):
        self.timeline = timeline
        super().__init__(*args, **kwargs)

    def communicate(self, message, *args, **kwargs):
        start = time.perf_counter()
        result = super().communicate(message, *args, **kwargs)
        name = _EVENT_NAMES.get(message, getattr(message, 'name', str(message)))
        self.timeline.append((name, (time.perf_counter() - start) * 1e3, result))
        return result


def main(argv: list[str] | None = None) -> int:
    """Run the demo experiment and print its timeline; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--subject', default='demo_mouse')
    parser.add_argument('--rigs', metavar='FILE', help='run against the real rigs of this remote rigs '
                        'file (one of them must be the main sync) instead of three local ones')
    parser.add_argument('--verbose', '-v', action='store_true', help='log every datagram')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format='%(relativeCreated)8.1f ms %(threadName)s %(name)s: %(message)s')
    if args.rigs:
        rigs, remote_rigs = [], load_remote_rigs(args.rigs)
        print(f'Rigs from {args.rigs}: ' + ', '.join(f'{name} ({uri})' for name, uri in remote_rigs.items()))
    else:
        rigs = [RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True),
                RigServer('udp://127.0.0.1:0', name='neuropixel'),
                RigServer('udp://127.0.0.1:0', name='widefield')]
        remote_rigs = {rig.name: rig.uri for rig in rigs}
    timeline: list = []
    try:
        if rigs:
            print('Local rigs:')
        for rig in rigs:
            print(f'  {rig.name:<11} {rig.uri}{"  (main sync)" if rig.main_sync else ""}')
        task = DemoTask(remote_rigs=remote_rigs, subject=args.subject, timeline=timeline)
        print(f'Experiment reference from the main sync: {task.exp_ref["date"]}_{task.exp_ref["sequence"]}_'
              f'{task.exp_ref["subject"]}')
        trials = task.run()
        print(f'\nTimeline ({trials} trials run between EXPSTART and EXPEND):')
        for step, milliseconds, responses in timeline:
            if isinstance(responses, Exception):  # a failed attempt that was asked again
                answers = f'failed, asked again: {str(responses).splitlines()[0]}'
            else:
                answers = ', '.join(f'{name}={_short(data)}' for name, data in responses.items())
            print(f'  {step:<9} {milliseconds:7.2f} ms   {answers}')
        if rigs:
            print('\nFinal rig states: ' + ', '.join(f'{rig.name}={rig.status.name}' for rig in rigs))
    finally:
        for rig in rigs:
            rig.close()
    return 0


def _short(data) -> str:
    if isinstance(data, list) and len(data) == 2 and isinstance(data[1], dict) and 'main_sync' in data[1]:
        return f'[status {data[0]}, main_sync={data[1]["main_sync"]}, exp_ref={data[1]["exp_ref"]}]'
    return str(data)


if __name__ == '__main__':
    sys.exit(main())
