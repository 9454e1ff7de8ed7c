"""Who may drive a rig: the hosts and networks from which a main rig's datagrams are taken.

Examples
--------
>>> allowed = Allowed(['10.0.0.5', '192.168.1.0/24', 'localhost'])
>>> allowed('192.168.1.77'), allowed('10.0.0.6')
(True, False)
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ['Allowed']

_LOCALHOST = ('127.0.0.0/8', '::1/128')


class Allowed:
    """A test of a sender's IP address against a list of hosts and networks (CIDR).

    Parameters
    ----------
    entries : iterable of str
        IP addresses (``10.0.0.5``), networks (``10.0.0.0/24``) or ``localhost``. Host names
        are refused: a rig must not trust what a name server says.

    Raises
    ------
    ValueError
        An entry that is none of these, naming it.
    """

    def __init__(self, entries: Iterable[str]):
        if isinstance(entries, str):
            entries = [entries]
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            text = str(entry).strip()
            for network in (_LOCALHOST if text.lower() == 'localhost' else (text,)):
                try:
                    self.networks.append(ipaddress.ip_network(network, strict=False))
                except ValueError:
                    raise ValueError(f'allow: {entry!r} is not an IP address or network such as 10.0.0.5 or '
                                     f'10.0.0.0/24 (host names are not trusted)') from None

    def __call__(self, host: str) -> bool:
        """bool: datagrams from `host` (an IP address) may drive the rig."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def __repr__(self) -> str:
        return ', '.join(str(n) for n in self.networks)
