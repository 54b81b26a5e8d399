"""Where a worker may listen: loopback, or one private address named on purpose.

llama.cpp's RPC server has no authentication, and a client can make it do almost anything (its
own README says never to expose it; several reported flaws are still open). So the agent and the
RPC server bind to the same single address, and that address is loopback (the other machine
comes in through an SSH tunnel) or a private one (a WireGuard or LAN address of this host) given
explicitly. A wildcard or a public address is refused with the reason.
"""

from __future__ import annotations

import ipaddress

from mcp_server.errors import ValidationError

_ADVICE = ("bind to 127.0.0.1 and reach it through `ssh -L` from the main machine, or name this host's "
           "WireGuard/LAN address (10.x, 172.16-31.x, 192.168.x, 100.64-127.x, fd00::/8); see docs/workers.md")
# Carrier-grade NAT space: Tailscale and similar overlays hand these out; Python does not call it private.
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def check_bind(host: str) -> str:
    """The address to bind, checked; raises ValidationError naming why another is refused."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValidationError("host", host, "must be an IP address of this machine (a name could resolve to a "
                              f"public one); {_ADVICE}") from None
    if address.is_unspecified:
        raise ValidationError("host", host, "would listen on every network of this machine, and the RPC protocol "
                              f"has no authentication; {_ADVICE}")
    if address.is_loopback:
        return str(address)
    if address.is_multicast or address.is_reserved:
        raise ValidationError("host", host, f"is not an address a server can listen on; {_ADVICE}")
    if address.is_private or (address.version == 4 and address in _SHARED):
        if address.is_link_local:
            raise ValidationError("host", host, f"is link-local (it changes and needs a scope); {_ADVICE}")
        return str(address)
    raise ValidationError("host", host, f"is a public address: anyone who reaches it controls the RPC server; "
                          f"{_ADVICE}")


def is_local_address(host: str) -> bool:
    """Whether ``host`` is one of this machine's addresses (binding anything else fails anyway)."""
    import psutil

    if host in ("127.0.0.1", "::1") or host.startswith("127."):
        return True
    return any(a.address.split("%")[0] == host for addrs in psutil.net_if_addrs().values() for a in addrs)
