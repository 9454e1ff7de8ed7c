"""The adapters' UDP sockets: opened into a list their owner's finalizer closes, so nothing leaks.

Each helper appends the socket to `held` in the same line that makes it: an interrupt at any
point after leaves it where :func:`close_all` (the owner's ``weakref.finalize``) closes it.
"""
from __future__ import annotations

import socket

__all__ = ['REFUSED', 'bound_socket', 'close_all', 'connected_socket']

REFUSED = (ConnectionRefusedError, ConnectionResetError)
"""The errors of a datagram to a port where nothing listens: Linux's, and WSAECONNRESET on Windows."""


def connected_socket(hostname: str, port: int, held: list) -> socket.socket:
    """A UDP socket on an ephemeral local port, connected to a rig (so ICMP errors reach us).

    Parameters
    ----------
    hostname, port
        The rig's address.
    held : list
        Gets the socket before anything else can fail.

    Returns
    -------
    socket.socket
        The connected socket.
    """
    held.append(sock := socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.connect((hostname, port))
    return sock


def bound_socket(host: str, port: int, held: list, uri: str) -> socket.socket:
    """A UDP socket listening on ``(host, port)``.

    Parameters
    ----------
    host, port
        Where to listen; port 0 picks a free one.
    held : list
        Gets the socket before anything else can fail.
    uri : str
        The address as the caller gave it, for the error message.

    Returns
    -------
    socket.socket
        The bound socket.

    Raises
    ------
    OSError
        The address cannot be bound; the message names `uri`.
    """
    held.append(sock := socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        sock.bind((host, port))
    except OSError as ex:
        raise OSError(ex.errno, f'Cannot listen on {uri}: {ex.strerror}') from None
    return sock


def close_all(held: list) -> None:
    """Close what an object holds, last made first (its finalizer; safe to call twice).

    Parameters
    ----------
    held : list
        Sockets and other objects with a ``close()``; emptied.
    """
    while held:
        held.pop().close()
