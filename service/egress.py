"""Where client callbacks may go: public addresses only, unless the operator allows a network.

A callback URL comes from a client, so the service must not become its way into the network it
runs in: loopback, private, link-local (the cloud metadata addresses), CGNAT, unique-local,
multicast, unspecified and reserved addresses are refused, IPv4 written inside IPv6 included.
`CALLBACK_ALLOW_NETWORKS` opens what a deployment needs. A host written as an address is
checked when the job is submitted; a name is resolved and checked at delivery, and the
connection goes to the address that was checked (actors/callback_http.py).
"""

from __future__ import annotations

import ipaddress
import socket

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv6 ranges whose last 32 bits are the IPv4 address a packet reaches: IPv4-mapped, SIIT's
#: IPv4-translated and NAT64's well-known prefix. That IPv4 address is checked instead.
CARRY_IPV4 = tuple(ipaddress.ip_network(net) for net in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96"))
#: Refused whole, though Python counts some of them global: IPv4-compatible, local-use NAT64,
#: 6to4 and Teredo (which hide an IPv4 address of their own), site-local, and documentation.
REFUSED = tuple(ipaddress.ip_network(net) for net in (
    "::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32", "fec0::/10", "3fff::/20", "2001:db8::/32",
))


class EgressRefused(Exception):
    """The callback's host is, or resolves to, an address callbacks may not reach."""


class EgressPolicy:
    """Tell whether a callback may connect to an address."""

    def __init__(self, allowed_networks: tuple[Network, ...] = ()) -> None:
        self.allowed_networks = allowed_networks

    def refusal(self, address: Address) -> str | None:
        """Return why callbacks may not reach `address`, or None if they may."""
        if any(address in network for network in self.allowed_networks):
            return None
        if isinstance(address, ipaddress.IPv6Address) and any(address in network for network in CARRY_IPV4):
            return self.refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if not address.is_global or address.is_multicast or any(address in network for network in REFUSED):
            return f"{address} is not a public address"
        return None

    def check(self, addresses: list[Address], host: str) -> None:
        """Raise EgressRefused unless every address `host` stands for may be reached."""
        for address in addresses:
            reason = self.refusal(address)
            if reason:
                raise EgressRefused(f"callback host {host!r}: {reason}")

    def check_literal(self, host: str) -> None:
        """Raise EgressRefused if `host` is written as an address callbacks may not reach; a name passes."""
        self.check(literal_addresses(host), host)


def literal_addresses(host: str) -> list[Address]:
    """Return the address a host written as one stands for, in any form the C library reads (`2130706433`), or [] for a name."""
    host = host.strip("[]").split("%")[0]
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        return [ipaddress.IPv4Address(socket.inet_aton(host))]  # decimal, hex, octal and short forms
    except OSError:
        return []


def resolve(host: str, port: int) -> list[Address]:
    """Resolve a host once, to every address it has."""
    found = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))


def parse_networks(text: str) -> tuple[Network, ...]:
    """Parse a comma-separated list of CIDRs (a bare address is one host); raise ValueError naming a bad one."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip())
