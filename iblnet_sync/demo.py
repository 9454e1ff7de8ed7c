"""A complete experiment on this machine: three local rigs and a legacy task, as a timeline.

Run it with ``python -m iblnet_sync.demo``. No configuration and no real rigs are needed:
the auxiliary rigs are :class:`~iblnet_sync.RigServer` instances on loopback, one of them
the main sync that decides the experiment reference. ``--rigs FILE`` runs the same task
against the real rigs named in a remote rigs file. ``-v`` logs every datagram sent and
every message received.

Exit code: 0 after the experiment, 1 when it failed (a rig did not answer, no rig or more than
one is the main sync), 2 for a bad command line or remote rigs file, 130 after Ctrl-C. A failure
is told in one line on stderr, not a traceback (``-v`` adds the traceback of a failed experiment).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import sys
import time
from typing import Any

from iblnet_sync import BroadcastError, ClosedError, ConfigError, ExpMessage, ExpStatus, NetworkSession, RigServer
from iblnet_sync.config import load_remote_rigs
from iblnet_sync.protocol import exp_ref_to_str
from iblnet_sync.verbs import verb_of
from iblnet_sync.version import __version__

log = logging.getLogger('iblnet_sync.demo')
PROG = 'python -m iblnet_sync.demo'
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class BehaviourTask:
    """A legacy task as iblrig writes them: host attributes set, then every ``init_mixin_*`` run."""

    def __init__(self, subject: str = 'demo_mouse', trials: int = 3):
        self.hardware_settings = {'MAIN_SYNC': False}
        self.session_info = {'SUBJECT_NAME': subject, 'SESSION_START_TIME': datetime.datetime.now().isoformat(),
                             'SESSION_NUMBER': 0}
        self.experiment_description: dict = {'devices': {'cameras': {'left': {}}, 'neuropixel': {'probe00': {}}}}
        self.n_trials = trials
        for name in sorted(dir(self)):
            if name.startswith('init_mixin'):
                getattr(self, name)()

    def run(self) -> int:
        for trial in range(self.n_trials):  # a Bpod state machine loop would run here
            log.info('trial %d', trial + 1)
        self.check_rigs()
        return self.n_trials

    def check_rigs(self) -> None:
        """A task may ask its rigs how they are between trials; a task without a network does nothing."""


class DemoTask(NetworkSession, BehaviourTask):
    """The behaviour task with the network lifecycle mixed in, timing each step.

    Parameters
    ----------
    timeline : list
        Gets ``(step, milliseconds, answers)`` for each network step.
    log_received : bool
        Log every message a rig sends (the communicator logs what it sends).
    """

    def __init__(self, *args: Any, timeline: list, log_received: bool = False, **kwargs: Any):
        self.timeline = timeline
        self.log_received = log_received
        super().__init__(*args, **kwargs)

    def connect(self, *args: Any, **kwargs: Any):
        rigs = super().connect(*args, **kwargs)
        if self.log_received and rigs.services is not None:
            for name, rig in rigs.services.items():
                rig.assign_callback(ExpMessage.any(), functools.partial(_log_received, name))
        return rigs

    def communicate(self, message, *args, **kwargs):
        start = time.perf_counter()
        result = super().communicate(message, *args, **kwargs)
        name = verb_of(message).event.name
        self.timeline.append((name, (time.perf_counter() - start) * 1e3, result))
        return result

    def check_rigs(self) -> None:
        self.communicate('status', ExpStatus.RUNNING)


def _log_received(rig: str, data: list, addr: Any, event: ExpMessage) -> None:
    """Log a message from a rig as it was on the wire: ``[code, *data]``."""
    log.debug('%s: received %s from %s:%s', rig, json.dumps([int(event), *data], default=str), *addr[:2])


def main(argv: list[str] | None = None) -> int:
    """Run the demo experiment and print its timeline; returns the exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument('--subject', default='demo_mouse')
    parser.add_argument('--rigs', metavar='FILE', help='run against the real rigs of this remote rigs '
                        'file (one of them must be the main sync) instead of three local ones')
    parser.add_argument('--verbose', '-v', action='store_true',
                        help='log every datagram sent and every message received')
    parser.add_argument('--version', action='version', version=f'%(prog)s (iblnet_sync {__version__})')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(relativeCreated)8.1f ms %(threadName)s %(name)s: %(message)s')
    logging.getLogger('iblnet_sync').setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        if args.rigs:
            try:
                remote_rigs = load_remote_rigs(args.rigs)
            except (ConfigError, OSError) as ex:
                return _fail(EXIT_USAGE, ex)
            print(f'Rigs from {args.rigs}: ' + ', '.join(f'{name} ({uri})' for name, uri in remote_rigs.items()))
            return _experiment(args, [], remote_rigs)
        return _experiment(args, [RigServer('udp://127.0.0.1:0', name='cameras', main_sync=True),
                                  RigServer('udp://127.0.0.1:0', name='neuropixel'),
                                  RigServer('udp://127.0.0.1:0', name='widefield')], None)
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BroadcastError, ClosedError, RuntimeError, ValueError, OSError) as ex:
        if args.verbose:
            log.exception('The experiment failed')
        return _fail(EXIT_FAILED, ex)


def _fail(code: int, error: BaseException) -> int:
    """Say what went wrong, without a traceback, and return the exit code.

    The message is one line, but for the lines that belong to it: a YAML error's line, column
    and caret, and a BroadcastError's line per failed rig.
    """
    print(f'{PROG}: error: {error or type(error).__name__}', file=sys.stderr)
    return code


def _experiment(args: argparse.Namespace, rigs: list[RigServer], remote_rigs: dict[str, str] | None) -> int:
    """The task against `rigs` (local, closed at the end) or the rigs of a file; prints the timeline."""
    timeline: list = []
    task = None
    try:
        if rigs:
            print('Local rigs:')
        for rig in rigs:
            print(f'  {rig.name:<11} {rig.uri}{"  (main sync)" if rig.main_sync else ""}')
        task = DemoTask(remote_rigs=remote_rigs or {rig.name: rig.uri for rig in rigs}, subject=args.subject,
                        timeline=timeline, log_received=args.verbose)
        print(f'Experiment {exp_ref_to_str(task.exp_ref)}, decided by {task.main_sync_rig} (the main sync): '
              f'session number {task.session_info["SESSION_NUMBER"]}')
        trials = task.run()
        print(f'\nTimeline ({trials} trials run between EXPSTART and EXPEND):')
        for step, milliseconds, responses in timeline:
            lines = [f'failed, asked again: {str(responses).splitlines()[0]}'] if isinstance(responses, Exception) \
                else [f'{name:<11} {_describe(step, data)}' for name, data in responses.items()]
            for i, line in enumerate(lines):
                print(f'  {step:<9} {milliseconds:7.2f} ms   {line}' if i == 0 else f'{"":25}{line}')
        if rigs:
            print('\nFinal rig states: ' + ', '.join(f'{rig.name}={rig.status.name}' for rig in rigs))
    finally:
        if task is not None:
            task.cleanup_mixin_network()  # idempotent: a no-op after a whole run
        for rig in rigs:
            rig.close()
    return EXIT_OK


def _status_name(code: Any) -> str:
    """CONNECTED, INITIALIZED, RUNNING, STOPPED... for a status code; anything else as it is."""
    try:
        return ExpStatus(code).name
    except ValueError:
        return repr(code)


def _describe(step: str, answer: Any) -> str:
    """A rig's answer to one step in words: its status by name, the reference, any extra data."""
    data = answer if isinstance(answer, list) else [answer]
    extra = [repr(d) for d in data[1:] if d is not None]
    if step in ('EXPINFO', 'EXPINIT', 'EXPSTATUS') and data:
        words = [_status_name(data[0])]
        if step == 'EXPINFO' and len(data) > 1 and isinstance(data[1], dict):
            info = data[1]
            words += ['main sync'] * bool(info.get('main_sync'))
            words += [f'reference {exp_ref_to_str(info["exp_ref"])}'] * bool(info.get('exp_ref'))
            extra = []
        return ', '.join(words + extra)
    if step == 'EXPSTART' and data:
        return ', '.join([f'started {exp_ref_to_str(data[0])}', *extra])
    if step in ('EXPEND', 'EXPINTERRUPT', 'EXPCLEANUP'):
        return ', '.join(['done', *(repr(d) for d in data if d is not None)])
    return repr(answer)


if __name__ == '__main__':
    sys.exit(main())
