"""Where a webhook may be delivered: never to this platform's own network.

An endpoint on a private, loopback, link-local or otherwise non-public address is refused, when it
is created (an address written in its URL, or ``localhost``) and before each delivery (every
address its host name resolves to), unless ``WEBHOOKS_ALLOW_PRIVATE`` is set for tests and closed
networks. Redirects are never followed (``services``), so a public endpoint cannot send a delivery on
to a private one either.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


class UnsafeAddress(ValueError):
    """The URL leads to an address webhooks may not reach."""


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: str) -> None:
    """Refuse a URL that is not http(s) with a host and a port from 1 to 65535, or that names a
    non-public address itself."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a ValueError when it is not a number from 0 to 65535
    except ValueError:
        raise UnsafeAddress("A webhook URL is http:// or https:// with a host (and a port from 1 to 65535).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeAddress("A webhook URL is http:// or https:// with a host.")
    if port == 0:
        raise UnsafeAddress("A webhook URL's port is from 1 to 65535.")
    if settings.WEBHOOKS_ALLOW_PRIVATE:
        return
    host = parts.hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        raise UnsafeAddress("A webhook may not be delivered to localhost.")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: its addresses are checked before each delivery
    if not _public(address):
        raise UnsafeAddress(f"A webhook may not be delivered to a private, loopback or link-local address ({host}).")


def check_resolved(url: str) -> None:
    """Refuse a URL whose host resolves to any non-public address (checked before each delivery)."""
    check_url(url)
    if settings.WEBHOOKS_ALLOW_PRIVATE:
        return
    parts = urlsplit(url)
    try:
        resolved = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as error:
        raise UnsafeAddress(f"The webhook's host does not resolve: {error}.") from None
    for *_, sockaddr in resolved:
        if not _public(ipaddress.ip_address(sockaddr[0].split("%")[0])):
            raise UnsafeAddress(
                f"The webhook's host resolves to a private, loopback or link-local address ({sockaddr[0]})."
            )
