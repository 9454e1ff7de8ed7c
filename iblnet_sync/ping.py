"""iblnet-ping: ask every remote rig for its clock and status, and say in plain words which ones answer.

Installed as the console command ``iblnet-ping``; ``python tools/ping_rigs.py``, in a checkout, runs
the same program (of the installed package).

The first round is EXPINFO: each iblnet_sync rig reports its wall-clock time, from which its
offset from this PC's clock is estimated (rig clock minus the midpoint of this PC's clock at
send and at answer, true within half the round trip). Then come ``--count`` rounds of
EXPSTATUS, as a main rig sends them. ``--watch`` instead redraws a live table every second
until Ctrl-C.

Examples
--------
    iblnet-ping                                        # rigs from the default remote rigs file
    iblnet-ping ~/remote_rigs.yaml --count 10
    iblnet-ping --rig cameras=10.0.0.7 --rig ephys=udp://10.0.0.8:11001 --json
    iblnet-ping --watch                                # live table; Ctrl-C ends it

Exit code: 0 when every rig answered every EXPSTATUS round, 1 when any did not, 2 for a usage
or configuration error (missing or malformed file, invalid address, a --rig name given twice).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, TextIO

from iblutil.io.net.base import ExpMessage, ExpStatus

from . import dialect, protocol
from .clock import clock_offset
from .config import ENV_VARIABLE, FILE_NAMES, ConfigError, default_folder, load_remote_rigs
from .errors import RigError, Stage
from .exchange import Exchange, wait_all
from .services import Services
from .version import __version__

__all__ = ['EXIT_CONFIG', 'EXIT_INTERRUPTED', 'EXIT_OK', 'EXIT_UNANSWERED', 'main']

EXIT_OK, EXIT_UNANSWERED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
LOSS_WINDOW = 60.0
"""float: seconds of history behind the loss shown by ``--watch``."""

ADVICE = {  # stage -> what a technician should check
    Stage.REFUSED: 'nothing is listening on that port: is the rig\'s acquisition software running?',
    Stage.NO_ECHO: 'no reply at all: is the PC on, the address right, UDP port {port} open in its firewall?',
    Stage.NO_RESPONSE: 'the rig received the message but did not answer: its software may be busy or stuck',
    Stage.ERROR_REPORT: 'the rig\'s software reported an error: {detail}',
    Stage.BUSY: 'the rig was still busy with an earlier message',
}
# ANSI terminal controls for --watch: cursor home, clear screen, clear to end of line / of screen, cursor off / on
HOME, CLEAR, CLEAR_LINE, CLEAR_BELOW, HIDE_CURSOR, SHOW_CURSOR = '\x1b[H', '\x1b[2J', '\x1b[K', '\x1b[J', \
    '\x1b[?25l', '\x1b[?25h'


class UsageError(ValueError):
    """The command line is wrong (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of exiting, so that ``--json`` can report it."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the files looked for and the exit codes in ``--help``.

    Returns
    -------
    argparse.ArgumentParser
        A parser whose ``error`` raises :class:`UsageError`.
    """
    either = ' or '.join(FILE_NAMES)
    parser = _Parser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Send EXPINFO, then EXPSTATUS, to every remote rig and report who answers, how fast,\n'
                    'how far its clock is from this PC\'s, and what went wrong.',
        epilog=f'The remote rigs file maps rig names to URIs ("cameras: udp://10.0.0.7:11001").\n'
               f'It is named {either} (iblrig\'s name).\n'
               f'Without FILE it is looked for in the path named by ${ENV_VARIABLE}\n'
               f'(a file or a folder), else in the folder {default_folder()}.\n\n'
               f'Exit code: {EXIT_OK} when every rig answered every round, {EXIT_UNANSWERED} when any did not,\n'
               f'{EXIT_CONFIG} for a bad file, address or option. --watch ends with {EXIT_OK} on Ctrl-C.')
    parser.add_argument('file', nargs='?',
                        help=f'remote rigs file, or a folder holding {either} (default: ${ENV_VARIABLE}, '
                             f'then {default_folder()})')
    parser.add_argument('--rig', action='append', default=[], metavar='NAME=URI',
                        help='a rig to ping (repeatable, each name once; replaces the file\'s entry of that name); '
                             'with no file given, only these are pinged')
    parser.add_argument('--count', type=int, default=None,
                        help='EXPSTATUS rounds to send (default 1); with --watch, refreshes before stopping '
                             '(default: until Ctrl-C)')
    parser.add_argument('--timeout', type=float, default=2.0, help='seconds to wait each round (default 2)')
    parser.add_argument('--resends', type=int, default=0,
                        help='resend a message this often before giving up (default 0: show the raw link)')
    parser.add_argument('--max-offset', type=float, default=1.0, metavar='SECONDS',
                        help='warn when a rig\'s clock is further than this from this PC\'s (default 1)')
    parser.add_argument('--watch', action='store_true',
                        help='redraw a live table (status, round trip, loss over the last minute, clock offset) '
                             'until Ctrl-C')
    parser.add_argument('--interval', type=float, default=1.0, help='seconds between --watch refreshes (default 1)')
    parser.add_argument('--json', action='store_true',
                        help='print JSON for machines instead of a table (with --watch: one line per refresh)')
    parser.add_argument('--version', action='version', version=f'%(prog)s (iblnet_sync {__version__})')
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the command line.

    Raises
    ------
    UsageError
        An unknown option or a value out of range.
    """
    args = build_parser().parse_args(argv)
    wrong = [f'{option} must be {rule}, not {value:g}' for option, value, rule, right in [
        ('--count', args.count, '>= 1', args.count is None or args.count >= 1),
        ('--timeout', args.timeout, '> 0', args.timeout > 0),
        ('--resends', args.resends, '>= 0', args.resends >= 0),
        ('--max-offset', args.max_offset, '>= 0', args.max_offset >= 0),
        ('--interval', args.interval, '> 0', args.interval > 0),
    ] if not right]
    if wrong:
        raise UsageError('; '.join(wrong))
    return args


def load_rigs(args: argparse.Namespace) -> dict[str, str]:
    """Rigs from the file (unless only --rig was given) and from --rig pairs.

    Raises
    ------
    ConfigError
        The file is missing or malformed.
    ValueError
        A --rig that is not NAME=URI or whose URI is invalid, a name given twice, or no rigs at all.
    """
    rigs = load_remote_rigs(args.file) if args.file or not args.rig else {}
    given: set[str] = set()
    for pair in args.rig:
        name, sep, uri = pair.partition('=')
        if not (sep and name and uri):
            raise ValueError(f'--rig expects NAME=URI, got {pair!r}')
        if name in given:
            raise ValueError(f'--rig {name!r} is given twice; give each rig once')
        given.add(name)
        rigs[name] = uri
    if not rigs:
        raise ValueError('No rigs to ping: the file is empty and no --rig was given')
    return rigs


# --- rounds ---
def _info_request() -> bytes:
    """EXPINFO CONNECTED with a small info, marked ``"ping": true``: our rigs answer with their ``clock``.

    The subject is empty: Rigbox's Timeline answers no EXPINFO without a ``subject`` field (another
    subject only makes it warn), and a main-sync rig prepares no reference for an empty one.
    """
    return protocol.info_message('CONNECTED', {'subject': '', dialect.PEER_KEY: dialect.PEER_VERSION,
                                               'ping': True, 'rig_version': __version__})


def _send_round(services: Services, datagrams: Mapping[str, bytes],
                timeout: float) -> tuple[dict[str, Exchange], float]:
    """Send one datagram to each rig at once and wait until all are answered or `timeout` passed.

    Returns
    -------
    dict of str to Exchange
        Every exchange ended: those still running at the deadline are given up.
    float
        This PC's wall clock minus its monotonic clock, read just before sending: adding it
        to an exchange's ``time.monotonic()`` readings gives ``time.time()`` readings.
    """
    wall_minus_monotonic = time.time() - time.monotonic()
    exchanges = {name: services[name].submit(datagram, timeout=timeout) for name, datagram in datagrams.items()}
    wait_all(exchanges.values(), None if timeout is None else time.monotonic() + timeout)
    return exchanges, wall_minus_monotonic


def _clock_report(name: str, exchange: Exchange, wall_minus_monotonic: float, max_offset: float) -> dict[str, Any]:
    """The rig's clock offset from an EXPINFO exchange, with warnings when it is too far or on another date."""
    report: dict[str, Any] = {'clock_offset_s': None, 'clock_offset_bound_s': None, 'rig_time': None,
                              'clock_note': None, 'warnings': []}
    error = exchange.outcome.exception()
    if error is not None:
        report['clock_note'] = f'unknown: no answer to EXPINFO ({getattr(error, "stage", Stage.FAILED)})'
        return report
    answer = exchange.outcome.result()
    info = answer[1] if isinstance(answer, list) and len(answer) > 1 else None
    if exchange.response_at is None:  # only an echo was expected: no answer to read a clock from
        report['clock_note'] = 'unknown: no answer to EXPINFO'
        return report
    sent, answered = exchange.sent_at + wall_minus_monotonic, exchange.response_at + wall_minus_monotonic
    estimate = clock_offset(info, sent, answered)
    if estimate is None:
        report['clock_note'] = 'unknown: the rig sends no clock (not an iblnet_sync rig)'
        return report
    offset, bound = estimate
    here = (sent + answered) / 2
    rig_time = datetime.datetime.fromtimestamp(here + offset).astimezone()
    report.update(clock_offset_s=offset, clock_offset_bound_s=bound,
                  rig_time=rig_time.isoformat(timespec='milliseconds'))
    if abs(offset) > max_offset:
        report['warnings'].append(f'{name}: clock {abs(offset):.3f} s {"ahead of" if offset > 0 else "behind"} this '
                                  f'PC\'s (± {bound * 1e3:.1f} ms), more than {max_offset:g} s')
    own_date = datetime.date.fromtimestamp(here)
    if rig_time.date() != own_date:
        report['warnings'].append(f'{name}: the rig\'s date is {rig_time.date()}, this PC\'s is {own_date}: '
                                  'an experiment reference made there would carry the wrong date')
    return report


def _advice(error: BaseException, port: int) -> str:
    template = ADVICE.get(getattr(error, 'stage', Stage.FAILED))
    return template.format(port=port, detail=getattr(error, 'detail', error)) if template else str(error)


def _status_name(status: Any) -> str | None:
    try:
        return ExpStatus(status).name
    except (ValueError, TypeError):
        return None if status is None else repr(status)


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {'min': min(values), 'median': statistics.median(values), 'max': max(values)}


def _status_report(name: str, uri: str, port: int, exchanges: list[Exchange]) -> dict[str, Any]:
    """What the EXPSTATUS rounds to one rig showed; echo times count also when the rig then did not answer."""
    ok = [e for e in exchanges if e.outcome.exception() is None]
    failures = [error for e in exchanges if (error := e.outcome.exception()) is not None]
    status = ok[-1].outcome.result()[0] if ok else None
    problem = None
    if failures:
        problem = {'stage': getattr(failures[-1], 'stage', Stage.FAILED), 'advice': _advice(failures[-1], port)}
    return {
        'name': name, 'uri': uri, 'sent': len(exchanges), 'answered': len(ok),
        'loss_percent': 100.0 * (len(exchanges) - len(ok)) / len(exchanges), 'status': _status_name(status),
        'echo_ms': _summary([(e.echo_at - e.sent_at) * 1e3 for e in exchanges if e.echo_at is not None]),
        'response_ms': _summary([(e.response_at - e.sent_at) * 1e3 for e in ok if e.response_at is not None]),
        'problem': problem,
    }


def ping(rigs: Mapping[str, str], count: int, timeout: float, resends: int, max_offset: float) -> list[dict]:
    """EXPINFO once, then EXPSTATUS `count` times, to all rigs at once.

    Returns
    -------
    list of dict
        One report per rig: the EXPSTATUS rounds (``sent``, ``answered``, ``loss_percent``,
        ``status``, ``echo_ms``, ``response_ms``, ``problem``) and the clock (``clock_offset_s``,
        ``clock_offset_bound_s``, ``rig_time``, ``clock_note``, ``warnings``).
    """
    rounds: dict[str, list[Exchange]] = {name: [] for name in rigs}
    with Services(rigs, timeout=timeout, resends=resends, echo_timeout=timeout) as services:
        info, wall_minus_monotonic = _send_round(services, dict.fromkeys(rigs, _info_request()), timeout)
        datagram = protocol.status_message('CONNECTED')
        for _ in range(count):
            exchanges, _ = _send_round(services, dict.fromkeys(rigs, datagram), timeout)
            for name, exchange in exchanges.items():
                rounds[name].append(exchange)
        return [{**_status_report(name, services[name].server_uri, services[name].port, rounds[name]),
                 **_clock_report(name, info[name], wall_minus_monotonic, max_offset)} for name in rigs]


# --- output ---
def _ms(summary: dict[str, float] | None, count: int) -> str:
    if summary is None:
        return '-'
    if count == 1:
        return f'{summary["median"]:.2f}'
    return f'{summary["min"]:.2f}/{summary["median"]:.2f}/{summary["max"]:.2f}'


def _clock_cell(report: Mapping[str, Any]) -> str:
    if report['clock_offset_s'] is None:
        return (report['clock_note'] or 'unknown').split(' (')[0]  # the full note is in the JSON
    return f'{report["clock_offset_s"]:+.3f} s ± {report["clock_offset_bound_s"] * 1e3:.1f} ms'


def _result_cell(problem: Mapping[str, str] | None) -> str:
    return 'OK' if problem is None else f'{problem["stage"].upper()}: {problem["advice"]}'


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned lines; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)) + '  ' + row[-1] for row in rows]


def table_lines(reports: list[dict], count: int) -> list[str]:
    """The report as a table, then one line per warning."""
    timing = 'ms' if count == 1 else 'ms min/med/max'
    rows = [('RIG', 'URI', 'STATUS', f'ECHO {timing}', f'RESPONSE {timing}', 'LOSS', 'CLOCK OFFSET', 'RESULT')]
    for r in reports:
        rows.append((r['name'], r['uri'], r['status'] or '-', _ms(r['echo_ms'], count), _ms(r['response_ms'], count),
                     f'{r["loss_percent"]:.0f}%', _clock_cell(r), _result_cell(r['problem'])))
    return _table(rows) + [f'WARNING {w}' for r in reports for w in r['warnings']]


# --- --watch ---
class _Watched:
    """One rig as ``--watch`` follows it: the last round, the last minute's rounds, its clock."""

    def __init__(self, name: str, uri: str, port: int):
        self.name, self.uri, self.port = name, uri, port
        self.history: deque[tuple[float, bool]] = deque()  # (time.monotonic(), answered)
        self.clock: dict[str, Any] | None = None  # from its EXPINFO answer; asked again until it answers
        self.last: Exchange | None = None

    def record(self, exchange: Exchange, wall_minus_monotonic: float, max_offset: float) -> None:
        answered = exchange.outcome.exception() is None
        if exchange.event is ExpMessage.EXPINFO and answered:
            self.clock = _clock_report(self.name, exchange, wall_minus_monotonic, max_offset)
        self.last = exchange
        self.history.append((exchange.sent_at, answered))
        while self.history and self.history[0][0] < exchange.sent_at - LOSS_WINDOW:
            self.history.popleft()

    def report(self) -> dict[str, Any]:
        exchange = self.last
        assert exchange is not None
        error = exchange.outcome.exception()
        answer = exchange.outcome.result() if error is None else None
        failed = sum(1 for _, answered in self.history if not answered)
        clock = self.clock or {'clock_offset_s': None, 'clock_offset_bound_s': None, 'rig_time': None,
                               'clock_note': 'unknown: no answer to EXPINFO yet', 'warnings': []}
        return {
            'name': self.name, 'uri': self.uri, 'status': _status_name(answer[0] if answer else None),
            'echo_ms': None if exchange.echo_at is None else (exchange.echo_at - exchange.sent_at) * 1e3,
            'round_trip_ms': None if exchange.response_at is None else (exchange.response_at - exchange.sent_at) * 1e3,
            'rounds_last_minute': len(self.history), 'loss_percent_last_minute': 100.0 * failed / len(self.history),
            'problem': None if error is None else {'stage': getattr(error, 'stage', Stage.FAILED),
                                                   'advice': _advice(error, self.port)},
            **clock,
        }


def watch_lines(reports: list[dict], refresh: int, interval: float) -> list[str]:
    """The ``--watch`` screen: a title line, the table, the warnings."""
    title = f'iblnet-ping  {datetime.datetime.now():%Y-%m-%d %H:%M:%S}  refresh {refresh}, every {interval:g} s  ' \
            '(Ctrl-C to stop)'
    rows = [('RIG', 'STATUS', 'ROUND TRIP', 'LOSS 1 MIN', 'CLOCK OFFSET', 'RESULT')]
    for r in reports:
        trip = '-' if r['round_trip_ms'] is None else f'{r["round_trip_ms"]:.2f} ms'
        if r['round_trip_ms'] is None and r['echo_ms'] is not None:
            trip = f'echo {r["echo_ms"]:.2f} ms'
        loss = f'{r["loss_percent_last_minute"]:.0f}% of {r["rounds_last_minute"]}'
        rows.append((r['name'], r['status'] or '-', trip, loss, _clock_cell(r), _result_cell(r['problem'])))
    return [title, ''] + _table(rows) + [f'WARNING {w}' for r in reports for w in r['warnings']]


def watch(rigs: Mapping[str, str], args: argparse.Namespace, out: TextIO) -> int:
    """Redraw the table every ``args.interval`` seconds until Ctrl-C (or ``args.count`` refreshes).

    Each refresh asks each rig EXPSTATUS, or EXPINFO while its clock is not known yet. On a
    terminal the table is redrawn in place (ANSI controls); otherwise, or with ``--json``,
    each refresh is appended.

    Returns
    -------
    int
        0 after Ctrl-C; after ``args.count`` refreshes, 0 when every rig answered the last one, else 1.
    """
    live = out.isatty() and not args.json
    info, status = _info_request(), protocol.status_message('CONNECTED')
    refresh, all_answered = 0, True
    with Services(rigs, timeout=args.timeout, resends=args.resends, echo_timeout=args.timeout) as services:
        watched = {name: _Watched(name, services[name].server_uri, services[name].port) for name in rigs}
        if live:
            out.write(HIDE_CURSOR + HOME + CLEAR)
        try:
            next_at = time.monotonic()
            while args.count is None or refresh < args.count:
                datagrams = {name: status if w.clock else info for name, w in watched.items()}
                exchanges, wall_minus_monotonic = _send_round(services, datagrams, args.timeout)
                for name, exchange in exchanges.items():
                    watched[name].record(exchange, wall_minus_monotonic, args.max_offset)
                refresh += 1
                reports = [w.report() for w in watched.values()]
                all_answered = all(r['problem'] is None for r in reports)
                if args.json:
                    out.write(json.dumps({'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                                          'refresh': refresh, 'rigs': reports}) + '\n')
                elif live:
                    lines = watch_lines(reports, refresh, args.interval)
                    out.write(HOME + ''.join(line + CLEAR_LINE + '\n' for line in lines) + CLEAR_BELOW)
                else:
                    out.write('\n'.join(watch_lines(reports, refresh, args.interval)) + '\n\n')
                out.flush()
                if args.count is not None and refresh >= args.count:
                    break
                next_at = max(next_at + args.interval, time.monotonic())
                time.sleep(max(0.0, next_at - time.monotonic()))  # the next refresh's time; Ctrl-C interrupts it
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            if live:
                out.write(SHOW_CURSOR)
                out.flush()
    return EXIT_OK if all_answered else EXIT_UNANSWERED


# --- main ---
def _config_error(message: str, as_json: bool, prog: str) -> int:
    print(f'{prog}: {message}', file=sys.stderr)
    if as_json:
        print(json.dumps({'error': message, 'exit_code': EXIT_CONFIG}, indent=2))
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run the program.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: 0 all answered, 1 some did not, 2 usage or configuration error, 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = build_parser().prog
    try:
        args = parse_args(argv)
    except UsageError as ex:
        build_parser().print_usage(sys.stderr)
        return _config_error(str(ex), '--json' in argv, prog)
    try:
        rigs = load_rigs(args)
        if args.watch:
            return watch(rigs, args, sys.stdout)
        reports = ping(rigs, args.count or 1, args.timeout, args.resends, args.max_offset)
    except RigError:
        raise  # a rig's failure is reported in the table, never here
    except (ConfigError, ValueError, TypeError, OSError) as ex:  # a bad file or address
        return _config_error(str(ex), args.json, prog)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print('\n'.join(table_lines(reports, args.count or 1)))
    return EXIT_OK if all(r['answered'] == r['sent'] for r in reports) else EXIT_UNANSWERED


if __name__ == '__main__':
    sys.exit(main())
