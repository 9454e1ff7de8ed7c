"""The test suite, and the helpers that tests and tools import from it (``tests.peers``, ``tests.simulation``, ...).

A package, so that those helpers are imported by their full name, never through ``sys.path`` insertions:
pytest puts the repository root on ``sys.path`` for a package of tests (its default, prepend, import mode).
Its scripts run as modules from the repository root, e.g. ``python -m tests.simulation --replay 671 -v``:
they then use this checkout's ``iblnet_sync`` (the current folder comes first on ``sys.path``).
"""
