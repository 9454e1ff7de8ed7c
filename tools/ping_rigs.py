#!/usr/bin/env python3
"""Ask every remote rig for its status and say, in plain words, which ones answer.

Examples
--------
    python tools/ping_rigs.py                          # rigs from the default remote rigs file
    python tools/ping_rigs.py ~/remote_rigs.yaml --count 10
    python tools/ping_rigs.py --rig cameras=10.0.0.7 --rig ephys=udp://10.0.0.8:11001 --json

Exit code: 0 when every rig answered every round, 1 when any did not, 2 for a usage or
configuration error (missing or malformed file, invalid address).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

EXIT_OK, EXIT_UNANSWERED, EXIT_CONFIG = 0, 1, 2

ADVICE = {  # stage -> what a technician should check
    'refused': 'nothing is listening on that port: is the rig\'s acquisition software running?',
    'no echo': 'no reply at all: is the PC on, the address right, UDP port {port} open in its firewall?',
    'no response': 'the rig received the message but did not answer: its software may be busy or stuck',
    'error report': 'the rig\'s software reported an error: {detail}',
    'busy': 'the rig was still busy with an earlier message',
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Send EXPSTATUS to every remote rig and report who answers, how fast, and what went wrong.')
    parser.add_argument('file', nargs='?', help='remote rigs YAML file or folder (default: '
                        '$IBLNET_SYNC_REMOTE_RIGS, then ~/.iblnet_sync/remote_rigs.yaml)')
    parser.add_argument('--rig', action='append', default=[], metavar='NAME=URI',
                        help='a rig to ping (repeatable); with no file given, only these are pinged')
    parser.add_argument('--count', type=int, default=1, help='rounds to send (default 1)')
    parser.add_argument('--timeout', type=float, default=2.0, help='seconds to wait each round (default 2)')
    parser.add_argument('--resends', type=int, default=0,
                        help='resend a message this often before giving up (default 0: show the raw link)')
    parser.add_argument('--json', action='store_true', help='print JSON for machines instead of a table')
    args = parser.parse_args(argv)
    if args.count < 1 or args.timeout <= 0 or args.resends < 0:
        parser.error('--count must be >= 1, --timeout > 0 and --resends >= 0')
    return args


def load_rigs(args: argparse.Namespace) -> dict[str, str]:
    """Rigs from the file (unless only --rig was given) and from --rig pairs."""
    from iblnet_sync.config import load_remote_rigs
    rigs = load_remote_rigs(args.file) if args.file or not args.rig else {}
    for pair in args.rig:
        name, sep, uri = pair.partition('=')
        if not (sep and name and uri):
            raise ValueError(f'--rig expects NAME=URI, got {pair!r}')
        rigs[name] = uri
    if not rigs:
        raise ValueError('No rigs to ping: the file is empty and no --rig was given')
    return rigs


def ping(rigs: dict[str, str], count: int, timeout: float, resends: int) -> list[dict]:
    """Send EXPSTATUS `count` times to all rigs at once; return one report per rig."""
    from concurrent.futures import wait

    from iblnet_sync import ExpStatus, Services
    from iblnet_sync.protocol import status_message

    datagram = status_message(ExpStatus.CONNECTED)
    rounds = {name: [] for name in rigs}
    with Services(rigs, timeout=timeout, resends=resends, echo_timeout=timeout) as services:
        for _ in range(count):
            exchanges = {name: rig.submit(datagram, timeout=timeout) for name, rig in services.items()}
            wait([e.outcome for e in exchanges.values()], timeout=timeout)
            for name, exchange in exchanges.items():
                if not exchange.done:
                    exchange.give_up()
                rounds[name].append(exchange)
        return [_report(name, services[name].server_uri, services[name].port, rounds[name]) for name in rigs]


def _advice(error, port: int) -> str:
    template = ADVICE.get(error.stage)
    return template.format(port=port, detail=error.detail) if template else error.detail


def _report(name: str, uri: str, port: int, exchanges: list) -> dict:
    ok = [e for e in exchanges if e.outcome.exception() is None]
    echo_ms = [(e.echo_at - e.sent_at) * 1e3 for e in ok]
    response_ms = [(e.response_at - e.sent_at) * 1e3 for e in ok]
    failures = [e.outcome.exception() for e in exchanges if e.outcome.exception() is not None]
    status = ok[-1].outcome.result()[0] if ok else None
    problem = {'stage': failures[-1].stage, 'advice': _advice(failures[-1], port)} if failures else None
    return {
        'name': name, 'uri': uri, 'sent': len(exchanges), 'answered': len(ok),
        'loss_percent': 100.0 * (len(exchanges) - len(ok)) / len(exchanges),
        'status': _status_name(status), 'echo_ms': _summary(echo_ms), 'response_ms': _summary(response_ms),
        'problem': problem,
    }


def _status_name(status) -> str | None:
    from iblnet_sync import ExpStatus
    try:
        return ExpStatus(status).name
    except (ValueError, TypeError):
        return None if status is None else repr(status)


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {'min': min(values), 'median': statistics.median(values), 'max': max(values)}


def print_table(reports: list[dict], count: int) -> None:
    def ms(summary):
        if summary is None:
            return '-'
        if count == 1:
            return f'{summary["median"]:.2f}'
        return f'{summary["min"]:.2f}/{summary["median"]:.2f}/{summary["max"]:.2f}'

    timing = 'ms' if count == 1 else 'ms min/med/max'
    rows = [('RIG', 'URI', 'STATUS', f'ECHO {timing}', f'RESPONSE {timing}', 'LOSS', 'RESULT')]
    for r in reports:
        result = 'OK' if r['problem'] is None else f'{r["problem"]["stage"].upper()}: {r["problem"]["advice"]}'
        rows.append((r['name'], r['uri'], r['status'] or '-', ms(r['echo_ms']), ms(r['response_ms']),
                     f'{r["loss_percent"]:.0f}%', result))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)) + '  ' + row[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too
    from iblnet_sync import RigError
    from iblnet_sync.config import ConfigError
    try:
        rigs = load_rigs(args)
        reports = ping(rigs, args.count, args.timeout, args.resends)
    except RigError:
        raise  # a rig's failure is reported in the table, never here
    except (ConfigError, ValueError, TypeError, OSError) as ex:  # a bad file or address
        print(f'ping_rigs: {ex}', file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print_table(reports, args.count)
    return EXIT_OK if all(r['answered'] == r['sent'] for r in reports) else EXIT_UNANSWERED


if __name__ == '__main__':
    sys.exit(main())
