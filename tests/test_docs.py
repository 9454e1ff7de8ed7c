"""The project's docs show the core's state tables as the core itself states them.

``python -m tests.test_docs``, from the repository root, rewrites the tables in docs/protocol.md from this
checkout's iblnet_sync/core.py.
"""
import doctest
import importlib
import sys
from pathlib import Path

import pytest

from iblnet_sync import core

DOC = Path(__file__).resolve().parent.parent / 'docs' / 'protocol.md'
BEGIN, END = '<!-- tables from iblnet_sync/core.py: begin -->', '<!-- tables from iblnet_sync/core.py: end -->'


def tables() -> str:
    """The core's docstring from its first table's heading on: both tables and their notes."""
    text = core.__doc__ or ''
    return text[text.index('Main side'):].strip()


def block() -> str:
    return f'{BEGIN}\n```text\n{tables()}\n```\n{END}'


def test_docs_show_the_core_state_tables():
    doc = DOC.read_text()
    assert block() in doc, 'docs/protocol.md is behind iblnet_sync/core.py: run python -m tests.test_docs'
    assert 'M1 ' in tables() and 'R1 ' in tables()


EXAMPLES = ['allow', 'callbacks', 'dialect', 'errors', 'experiment', 'logtext', 'options', 'protocol', 'rig',
            'rig_config', 'session_numbers', 'verbs']
"""Modules whose docstring examples run as they stand (the others show calls to live rigs)."""


@pytest.mark.parametrize('name', EXAMPLES)
def test_the_examples_in_a_modules_docstrings_run_as_shown(name):
    module = importlib.import_module(f'iblnet_sync.{name}')
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    assert result.attempted and not result.failed, f'{result.failed} of the examples of {name} fail'


def test_readme_stands_on_its_own():
    readme = (DOC.parent.parent / 'README.md').read_text()
    assert '../shared' not in readme and 'PROTOCOL.md' not in readme and 'DESIGN.md' not in readme


if __name__ == '__main__':
    doc = DOC.read_text()
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    DOC.write_text(doc[:start] + block() + doc[end:])
    sys.exit(0)
