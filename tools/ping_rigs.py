#!/usr/bin/env python3
"""Ask every remote rig for its clock and status and say, in plain words, which ones answer.

The program is :mod:`iblnet_sync.ping`, installed as the command ``iblnet-ping``; this script runs
the installed package's program (``pip install .`` as the README says, or ``pip install -e .`` to
run a checkout's code). ``python tools/ping_rigs.py --help`` lists the options.

Examples
--------
    python tools/ping_rigs.py                          # rigs from the default remote rigs file
    python tools/ping_rigs.py ~/remote_rigs.yaml --count 10
    python tools/ping_rigs.py --rig cameras=10.0.0.7 --rig ephys=udp://10.0.0.8:11001 --json
    python tools/ping_rigs.py --watch                  # live table until Ctrl-C

Exit code: 0 when every rig answered every round, 1 when any did not, 2 for a usage or
configuration error (missing or malformed file, invalid address, a --rig name given twice).
"""
import sys

if __name__ == '__main__':
    from iblnet_sync.ping import main
    sys.exit(main())
