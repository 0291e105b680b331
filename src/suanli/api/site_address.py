"""Where a provider may point the service: the networks a site's engine may be on.

Attaching a Ray site makes the service itself send HTTP requests to the address a
provider gave. Unchecked, a provider could aim them at the cloud's metadata service
(169.254.169.254), at link-local or multicast addresses, or, on a locked-down
deployment, at any internal host the service can reach (server-side request
forgery). So an address from a provider must resolve only into the allowed
networks:

* never link-local (IPv4 169.254.0.0/16 — AWS, GCP and Azure's metadata endpoints
  — and IPv6 fe80::/10), the metadata endpoints outside it (`METADATA`), multicast,
  unspecified or reserved addresses, whatever is allowed;
* within ``SUANLI_SITE_NETWORKS`` (comma-separated CIDRs) where the operator sets
  it, e.g. ``10.0.0.0/8,192.168.0.0/16`` (loopback is then refused unless listed);
  unset, any other address, as a compute network spans public sites.

Admins attach where they like: the operator trusts their own hands. A host name is
checked by what it resolves to when the site is saved, and again when the sites
controller connects (`pin`): it resolves the name once, checks every address, and
connects to the checked address itself, so a name re-pointed after either check (DNS
rebinding) does not move the service's requests. An ``https://`` address keeps its
name (its certificate is for the name): it is checked at connect time, and a
rebinding between that check and the client's own lookup is not caught.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from urllib.parse import urlsplit

ENV = "SUANLI_SITE_NETWORKS"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


#: cloud metadata services not on link-local addresses: Alibaba Cloud's (its ECS docs,
#: "Instance metadata") and AWS's IPv6 one (EC2 docs, "Access instance metadata")
METADATA = frozenset(map(ipaddress.ip_address, ("100.100.100.200", "fd00:ec2::254")))


class AddressRefused(ValueError):
    """The address is outside what a provider may attach; the message says why."""


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The operator's list, or None (any address that is not refused outright)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",")]
    except ValueError as err:
        raise AddressRefused(
            f"{ENV} is not a list of CIDRs ({err}); fix the service's setting"
        ) from None


def host_of(address: str) -> str:
    """The host of ``HOST:PORT`` or ``http[s]://HOST:PORT`` (IPv6 in brackets)."""
    return urlsplit(address if "://" in address else f"http://{address}").hostname or ""


def check(address: str) -> list[Address]:
    """Raise `AddressRefused` unless every address ``address``'s host resolves to may be
    attached by a provider; the addresses checked, in the resolver's order."""
    host = host_of(address)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise AddressRefused(f"address: {host!r} does not resolve here") from None
    nets = allowed_networks()
    checked: list[Address] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        checked.append(ip)
        why = _refused(ip)
        if why:
            raise AddressRefused(f"address: {host} is {ip}, {why}; a provider cannot attach it")
        if nets is not None and not any(ip in n for n in nets):
            raise AddressRefused(
                f"address: {host} is {ip}, outside the networks this service attaches "
                f"({', '.join(str(n) for n in nets)})"
            )
    return checked


def pin(address: str) -> str:
    """``address`` with its host replaced by the first address it resolves to, after
    `check` passed every one of them (``https`` keeps its name: see the module)."""
    checked = check(address)  # one lookup: the address pinned is one of those checked
    host = host_of(address)
    split = urlsplit(address if "://" in address else f"http://{address}")
    if split.scheme == "https":
        return address
    ip = checked[0]
    if str(ip) == host:
        return address
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = literal + (f":{split.port}" if split.port is not None else "")
    pinned = split._replace(netloc=netloc).geturl()
    return pinned if "://" in address else pinned.removeprefix("http://")


def refused(host: str) -> str | None:
    """Why no request of the service's may go to ``host``, an address a site's engine
    reported for one of its nodes (None: it may): the metadata service and the like."""
    try:
        return _refused(ipaddress.ip_address(host.split("%")[0]))
    except ValueError:
        return "not an address"


def _refused(ip: Address) -> str | None:
    if ip in METADATA:
        return "a cloud metadata service"
    if ip.is_link_local:
        return "link-local (cloud metadata services live there)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:  # ::1 is in ::/8, which Python counts as reserved: it is loopback
        return None
    if ip.is_reserved:
        return "reserved"
    return None
