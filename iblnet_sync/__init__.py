"""iblnet_sync: blocking, thread-based multi-rig experiment messaging, wire-compatible with iblutil.

A behaviour task on the main rig tells auxiliary acquisition rigs when an experiment is
initialised, started and stopped, over iblutil's UDP echo protocol, with plain blocking calls.
"""
from iblutil.io.net.base import ExpMessage, ExpStatus

from .communicator import Communicator
from .config import ConfigError
from .errors import BroadcastError, BroadcastTimeout, ClosedError, RigError, RigErrorReport, RigRefused, RigTimeout
from .rig_server import RigServer
from .services import Services
from .session import NetworkSession, RemoteRigs
from .version import __version__

__all__ = [
    '__version__', 'ExpMessage', 'ExpStatus', 'Communicator', 'NetworkSession', 'RemoteRigs', 'RigServer', 'Services',
    'BroadcastError', 'BroadcastTimeout', 'ClosedError', 'ConfigError', 'RigError', 'RigErrorReport', 'RigRefused',
    'RigTimeout',
]
