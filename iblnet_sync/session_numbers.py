"""The session numbers a main-sync rig hands out, kept on disk so that none is handed out twice.

A main-sync rig *offers* a reference when a task asks for one (EXPINFO naming a subject) and the
task *claims* it when it initialises the experiment (EXPINIT). Only claims are written down: an
EXPINFO asked again, by a retry or by any other host, gets the same offer and advances nothing.
A restarted rig reads what was claimed and goes on from there.

The file (``~/.iblnet_sync/session_numbers.json`` by default) holds, for each of the last few
dates, the highest sequence claimed per subject::

    {"2026-11-30": {"mouse": 3, "rat": 1}}
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

__all__ = ['SessionNumbers', 'default_path']
log = logging.getLogger(__name__)

DAYS_KEPT = 3
"""int: dates kept in the file (a reference is made with today's date; a task may start before midnight)."""
MAX_SEQUENCE = 999
"""int: the highest session number (iblrig numbers session folders with three digits)."""
MAX_SUBJECTS = 1000
"""int: subjects numbered in one day at most."""
OFFERS_KEPT = 64
"""int: subjects whose offered reference is remembered (the least recently asked is forgotten first)."""


def default_path() -> Path:
    """The file a main-sync rig keeps its session numbers in unless told otherwise."""
    return Path.home() / '.iblnet_sync' / 'session_numbers.json'


class SessionNumbers:
    """Offers the next reference per subject and date; records the claimed ones in a file.

    Parameters
    ----------
    path : str, os.PathLike
        The JSON file of claimed numbers; made (with its folder) at the first claim.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     numbers = SessionNumbers(Path(folder) / 'numbers.json')
    ...     ref = numbers.offer('mouse', datetime.date(2026, 11, 30))  # asked again: the same offer
    ...     numbers.claim(ref, datetime.date(2026, 11, 30))             # written down
    ...     print(ref['sequence'], numbers.offer('mouse', datetime.date(2026, 11, 30))['sequence'])
    1 2
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offers: OrderedDict[str, dict] = OrderedDict()

    def offer(self, subject: str, day: datetime.date) -> dict:
        """The reference for `subject` on `day`: the one offered before while it is not claimed."""
        offered = self._offers.get(subject)
        if offered is None or offered['date'] != day:
            last = self._read().get(day.isoformat(), {}).get(subject, 0)
            offered = {'subject': subject, 'date': day, 'sequence': last + 1}
        self._offers[subject] = offered
        self._offers.move_to_end(subject)
        while len(self._offers) > OFFERS_KEPT:
            self._offers.popitem(last=False)
        return dict(offered)

    def claim(self, exp_ref: dict, today: datetime.date) -> None:
        """Write down that `exp_ref`'s sequence is used: no later offer for its subject and date repeats it.

        Only references of the last :data:`DAYS_KEPT` days up to `today` are taken, with a sequence
        from 1 to :data:`MAX_SEQUENCE`, and :data:`MAX_SUBJECTS` subjects a day: nobody can push the
        real days out of the file, nor make the next number absurd.

        Raises
        ------
        ValueError
            A reference of another day, a sequence out of range, or one subject too many that day.
        OSError
            The file could not be written (the rig must then not start an experiment under it).
        """
        day, subject, sequence = exp_ref['date'], str(exp_ref['subject']), int(exp_ref['sequence'])
        if not today - datetime.timedelta(days=DAYS_KEPT - 1) <= day <= today:
            raise ValueError(f'The reference {day}_{sequence}_{subject} is not of the last {DAYS_KEPT} days '
                             f'(this rig\'s date is {today}): check the clocks')
        if not 1 <= sequence <= MAX_SEQUENCE:
            raise ValueError(f'Session number {sequence} is out of range (1 to {MAX_SEQUENCE})')
        claimed = self._read()
        kept_days = {(today - datetime.timedelta(days=n)).isoformat() for n in range(DAYS_KEPT)}
        claimed = {date: subjects for date, subjects in claimed.items() if date in kept_days}
        subjects = claimed.setdefault(day.isoformat(), {})
        if subject not in subjects and len(subjects) >= MAX_SUBJECTS:
            raise ValueError(f'{MAX_SUBJECTS} subjects already have a session on {day}: no more are numbered')
        if subjects.get(subject, 0) < sequence:
            subjects[subject] = sequence
            kept = claimed
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + '.partial')
            partial.write_text(json.dumps(kept, indent=1, sort_keys=True))
            os.replace(partial, self.path)  # all or nothing, also when the rig is killed while writing
        offered = self._offers.get(subject)
        if offered is not None and offered['date'] == day and offered['sequence'] <= sequence:
            del self._offers[subject]

    def _read(self) -> dict[str, dict[str, int]]:
        try:
            claimed = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as ex:
            raise OSError(f'Cannot read the session numbers in {self.path}: {ex}; fix or move the file') from None
        if not isinstance(claimed, dict) or not all(isinstance(v, dict) for v in claimed.values()):
            raise OSError(f'{self.path} is not a file of session numbers; fix or move it')
        return claimed
