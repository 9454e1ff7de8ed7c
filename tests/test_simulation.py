"""The deterministic network simulator: a fixed-seed sweep keeps every invariant, and the sweep
does find violations when a rule of the core is switched off (so that its silence means something)."""
from __future__ import annotations

import time

import pytest
import simulation

from iblnet_sync import core
from iblnet_sync.core import Send

SWEEP = 20000
"""int: scenarios in the fixed-seed sweep (about 20 s on one core of a laptop)."""


def test_a_fixed_seed_sweep_keeps_every_invariant():
    started = time.perf_counter()
    counts, first = simulation.soak(SWEEP, seed=0)
    elapsed = time.perf_counter() - started
    assert not counts, f'violations {dict(counts)}; first seeds {first} (replay: tests/simulation.py --replay SEED -v)'
    assert elapsed < 60, f'{SWEEP} scenarios took {elapsed:.0f} s'


def test_a_scenario_replays_exactly():
    traces: list[list[str]] = [[], []]
    for trace in traces:
        simulation.simulate(3970, trace=trace.append)
    assert traces[0] == traces[1] and len(traces[0]) > 20


def test_the_command_line_soaks_and_replays(capsys):
    assert simulation.main(['--scenarios', '200', '--seed', '5']) == 0
    out = capsys.readouterr().out
    assert '200 scenarios from seed 5' in out
    assert all(f'{name:14s} violated in 0 scenarios' in out for name in simulation.INVARIANTS)
    assert simulation.main(['--replay', '3970', '-v']) == 0
    assert 'main->rig' in capsys.readouterr().out


# --- the simulator can fail: switch a rule off, and the sweep must notice ---
def handle_every_tagged_copy(self: core.RigConversation, data: bytes, parsed, now: float) -> list[core.Event]:
    """R4 off: the rig takes every copy of a tagged request for a new one."""
    self.tagged = True
    if (parsed.msg_id or '').startswith(self._prefix):
        return []
    return [Send(data), *self._new_request(b'', parsed.msg_id or '', parsed.message)]


def never_resend(self: core.MainConversation, x, now: float) -> None:
    """M2 and M3 off: the main waits for the echo of its first send only."""
    x.next_send, x.echo_deadline = None, now + self.echo_timeout


def echo_no_plain_datagram(receive):
    """M15 and M16 off: the main echoes nothing that an iblutil rig sends (it then dies awaiting the echo)."""
    def patched(self: core.MainConversation, data: bytes, now: float) -> list[core.Event]:
        events = receive(self, data, now)
        return events if data[:1] == b'{' else [e for e in events if not isinstance(e, Send)]
    return patched


@pytest.mark.parametrize('rule, patch, invariant', [
    ('R4', lambda mp: mp.setattr(core.RigConversation, '_receive_tagged', handle_every_tagged_copy), 'handled_once'),
    ('M2', lambda mp: mp.setattr(core.MainConversation, '_schedule', never_resend), 'no_failure'),
    ('M16', lambda mp: mp.setattr(core.MainConversation, 'receive',
                                  echo_no_plain_datagram(core.MainConversation.receive)), 'iblutil_alive'),
])
def test_the_sweep_finds_a_rule_switched_off(monkeypatch, rule, patch, invariant):
    patch(monkeypatch)
    counts, first = simulation.soak(3000, seed=0)
    assert counts[invariant] > 0, f'with {rule} off the sweep saw {dict(counts)}'


def test_without_the_storm_guard_a_known_seed_storms(monkeypatch):
    """M21 and the rig's cap of R6/R7 off: seed 2050949 (plain peers that never learn of each other,
    several requests bouncing in turn) never falls silent."""
    assert not simulation.simulate(2050949)[1]
    monkeypatch.setattr(core, 'STORM_ECHOES', 10 ** 9)
    assert 'bounded' in simulation.simulate(2050949)[1]
