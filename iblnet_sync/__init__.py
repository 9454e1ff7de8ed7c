"""iblnet_sync: blocking, thread-based multi-rig experiment messaging, wire-compatible with iblutil.

A behaviour task on the main rig tells auxiliary acquisition rigs when an experiment is
initialised, started and stopped, over iblutil's UDP echo protocol, with plain blocking calls.
"""
__version__ = '0.1.0'

from iblutil.io.net.base import ExpMessage, ExpStatus  # noqa: E402 (after __version__, which modules import)

from .communicator import Communicator  # noqa: E402
from .errors import (BroadcastError, BroadcastTimeout, ClosedError, RigError,
                     RigErrorReport, RigRefused, RigTimeout)
from .rig_server import RigServer
from .services import Services
from .session import NetworkSession, RemoteRigs

__all__ = ['ExpMessage', 'ExpStatus', 'Communicator', 'NetworkSession', 'RemoteRigs', 'RigServer', 'Services', 'BroadcastError', 'BroadcastTimeout',
           'ClosedError', 'RigError', 'RigErrorReport', 'RigRefused', 'RigTimeout']
