"""Which addresses the console may connect to when it reads a store or a hub,
and the one way its sources connect.

A connection's endpoint URL is typed by a workspace's editor, and the console's
hosts (the web server, the worker, every node agent) then fetch from it. Left
unchecked, that lets an editor make those hosts talk to what only they can
reach: a cloud metadata service that hands out the instance's credentials, the
console's own database or Redis, a model server's port on a node. So:

- some addresses are refused always: link-local and cloud metadata addresses
  and names, addresses that are no single host's (0.0.0.0 and :: reach this
  host's own services), and the console's own service addresses (database,
  Redis, web server, the ports its model servers listen on);
- PLUGBOARD_FETCH_DENYLIST adds hosts and networks to those;
- with PLUGBOARD_FETCH_ALLOWLIST set, only the hosts and networks it lists are
  reachable, the refusals above still applying. Unset, everything else is,
  loopback included: the test suite's stores listen there, and so does a
  laptop's MinIO.

The address checked is the address connected to: `connect` resolves a name
once, checks every address it resolves to, and connects to a checked one, so a
name that resolves differently between a check and the connection (DNS
rebinding) gains nothing. `endpoint_problem` checks a URL when it is saved, to
say early what would be refused; `connect` is what enforces it, under every
outgoing connection of s3.py and hf.py. Everything else here is pure.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from registry.sources.base import SourceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names cloud providers give their metadata services (GCP, AWS, and the short forms their resolvers accept).
METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local: AWS, GCP, Azure and OCI metadata at .169.254, ECS credentials at .170.2
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
    )
)
# Not one host's address: "this host" (a connection to 0.0.0.0 or :: reaches this host's own services),
# multicast and broadcast.
NOT_A_HOST = tuple(
    ipaddress.ip_network(n) for n in ("0.0.0.0/8", "::/128", "224.0.0.0/4", "255.255.255.255/32", "ff00::/8")
)
# IPv6 forms that carry an IPv4 address: checked as that IPv4 address.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
DEFAULT_PORTS = {"http": 80, "https": 443}
DATABASE_PORTS = {"postgresql": 5432, "postgis": 5432, "mysql": 3306, "oracle": 1521}
HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
# Model servers start and stop; their addresses are read again at most this often (seconds).
PROVIDED_TTL = 5.0


class AddressRefused(SourceError):
    """A connection was refused by the console's own rules (never attempted)."""


class RedirectRefused(SourceError):
    """A redirect was not followed: it led to another scheme, host or port."""


@dataclass(frozen=True)
class Service:
    """One of the console's own services: what it is, and where it listens (address None: on every address)."""

    what: str
    address: IPAddress | None
    port: int


@dataclass(frozen=True)
class Policy:
    services: tuple[Service, ...] = ()
    denied_hosts: frozenset[str] = frozenset()
    denied_networks: tuple[Network, ...] = ()
    allowed_hosts: frozenset[str] | None = None  # None: no allowlist
    allowed_networks: tuple[Network, ...] = ()


# Pure rules ----------------------------------------------------------------


def normal_host(host: str) -> str:
    """`host` as the rules compare it: lower case, no brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def plain_address(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address carries, else `address`."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def parse_entries(entries: Iterable[str], *, setting: str) -> tuple[frozenset[str], tuple[Network, ...]]:
    """Splits a setting's entries into host names and networks (an address is a one-address network).
    Raises AddressRefused for an entry that is neither, so a typo refuses rather than opens."""
    hosts, networks = set(), []
    for entry in entries:
        entry = str(entry).strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        host = normal_host(entry)
        if not HOST_NAME.match(host):
            raise AddressRefused(
                f"{setting} has an entry “{entry}” that is neither a host name nor an address or network "
                "(CIDR); an administrator must correct it before the console connects anywhere."
            )
        hosts.add(host)
    return frozenset(hosts), tuple(networks)


def host_problem(host: str, policy: Policy) -> str | None:
    """Why the console refuses to connect to the host name `host` whatever it resolves to, or None."""
    name = normal_host(host)
    if name in METADATA_HOSTS:
        return f"{name} is a cloud metadata service, which the console never connects to"
    if name in policy.denied_hosts:
        return f"{name} is in PLUGBOARD_FETCH_DENYLIST"
    return None


def address_problem(address: IPAddress, port: int, policy: Policy, *, host: str = "") -> str | None:
    """Why the console refuses to connect to `address`:`port` (reached through the name `host`), or None."""
    ip = plain_address(address)
    if any(ip in n for n in METADATA_NETWORKS):
        return f"{ip} is a link-local or cloud metadata address, which the console never connects to"
    if any(ip in n for n in NOT_A_HOST):
        return f"{ip} is not the address of one host (it reaches this host's own services)"
    for service in policy.services:
        if port != service.port:
            continue
        if service.address is None or service.address == ip or (service.address.is_loopback and ip.is_loopback):
            return f"{ip} port {port} is the console's own {service.what}, which a connection may not reach"
    if any(ip in n for n in policy.denied_networks):
        return f"{ip} is in PLUGBOARD_FETCH_DENYLIST"
    listed = policy.allowed_hosts is None or normal_host(host) in policy.allowed_hosts
    if not listed and not any(ip in n for n in policy.allowed_networks):
        return (
            f"{normal_host(host) or ip} ({ip}) is not in PLUGBOARD_FETCH_ALLOWLIST; "
            "ask an administrator to add the store's host or network"
        )
    return None


def redirect_problem(origin: str, target: str) -> str | None:
    """Why a redirect from the URL `origin` to the URL `target` is not followed, or None. Only the same
    scheme, host and port: a redirect is how a server would send the console somewhere its endpoint check
    never looked."""
    a, b = urlsplit(origin), urlsplit(target)
    try:
        same = (a.scheme, normal_host(a.hostname or ""), a.port or DEFAULT_PORTS.get(a.scheme)) == (
            b.scheme,
            normal_host(b.hostname or ""),
            b.port or DEFAULT_PORTS.get(b.scheme),
        )
    except ValueError:  # a malformed port
        same = False
    if same:
        return None
    where = f"{b.scheme}://{b.hostname}" if b.hostname else "a malformed URL"
    return (
        f"{a.hostname} redirected to {where}; the console follows redirects only to the same scheme, host and "
        "port. Point the connection at the server that holds the files."
    )


# The console's own services --------------------------------------------------

_providers: list[Callable[[], Iterable[tuple[str, int]]]] = []
_provided: dict = {"at": -PROVIDED_TTL, "pairs": ()}
_provided_lock = threading.Lock()


def register_service_addresses(provider: Callable[[], Iterable[tuple[str, int]]]) -> None:
    """Adds a source of (host, port) pairs the console's model servers listen on (called from an upper
    layer's AppConfig.ready: the registry cannot import the apps that run servers)."""
    if provider not in _providers:
        _providers.append(provider)


def forget_provided() -> None:
    """Drops the cached model-server addresses, so the next connection reads them again."""
    with _provided_lock:
        _provided["at"] = -PROVIDED_TTL


def _provided_pairs() -> tuple[tuple[str, int], ...]:
    with _provided_lock:
        if time.monotonic() - _provided["at"] >= PROVIDED_TTL:
            try:
                _provided["pairs"] = tuple(pair for provider in _providers for pair in provider())
            except Exception:
                # Fail closed: a connection that cannot be checked against the model servers is not made.
                raise AddressRefused(
                    "The console could not read its model servers' addresses to check this connection "
                    "against them (is the database reachable?); try again."
                ) from None
            _provided["at"] = time.monotonic()
        return _provided["pairs"]


def service_endpoints() -> list[tuple[str, str, int]]:
    """(what, host, port) of every TCP service of the console: its databases, Redis, its web server
    (PLUGBOARD_WEB_ADDRESSES) and the model servers running on nodes."""
    found = []
    for db in settings.DATABASES.values():
        host = str(db.get("HOST") or "")
        if host and not host.startswith("/"):  # a leading / is a unix socket folder
            engine = str(db.get("ENGINE", "")).rsplit(".", 1)[-1]
            port = int(db.get("PORT") or DATABASE_PORTS.get(engine, 0))
            if port:
                found.append(("database", host, port))
    redis = urlsplit(settings.REDIS_URL)
    if redis.scheme in ("redis", "rediss") and redis.hostname:
        found.append(("Redis", redis.hostname, redis.port or 6379))
    for entry in settings.PLUGBOARD_WEB_ADDRESSES:
        host, _, port = str(entry).rpartition(":")
        found.append(("web server", host, int(port)))
    found.extend(("model server", host, int(port)) for host, port in _provided_pairs())
    return found


def _service_addresses(host: str, port: int) -> list[IPAddress | None]:
    host = normal_host(host)
    if host in ("", "0.0.0.0", "::", "*"):
        return [None]
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        return resolve(host, port)
    except OSError:
        return []  # a service name this host cannot resolve is not one it could reach either


def current_policy() -> Policy:
    """The rules as the settings and the running model servers say now."""
    denied_hosts, denied_networks = parse_entries(settings.PLUGBOARD_FETCH_DENYLIST, setting="PLUGBOARD_FETCH_DENYLIST")
    allowed_hosts: frozenset[str] | None = None
    allowed_networks: tuple[Network, ...] = ()
    if settings.PLUGBOARD_FETCH_ALLOWLIST:
        allowed_hosts, allowed_networks = parse_entries(
            settings.PLUGBOARD_FETCH_ALLOWLIST, setting="PLUGBOARD_FETCH_ALLOWLIST"
        )
    services = tuple(
        Service(what, plain_address(address) if address is not None else None, port)
        for what, host, port in service_endpoints()
        for address in _service_addresses(host, port)
    )
    return Policy(
        services=services,
        denied_hosts=denied_hosts,
        denied_networks=denied_networks,
        allowed_hosts=allowed_hosts,
        allowed_networks=allowed_networks,
    )


# Resolving and connecting ----------------------------------------------------


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses `host` resolves to, in the resolver's order, each once. Raises socket.gaierror."""
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def checked_addresses(host: str, port: int, policy: Policy | None = None) -> list[IPAddress]:
    """Resolves `host` once and returns its addresses if every one may be connected to; raises
    AddressRefused naming the first that may not, or socket.gaierror when the name does not resolve."""
    policy = policy or current_policy()
    problem = host_problem(host, policy)
    if problem:
        raise AddressRefused(f"Refused to connect to {normal_host(host)}: {problem}.")
    addresses = resolve(normal_host(host), port)
    for address in addresses:
        problem = address_problem(address, port, policy, host=host)
        if problem:
            raise AddressRefused(f"Refused to connect to {normal_host(host)}: {problem}.")
    return addresses


def connect(host: str, port: int, *, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None) -> socket.socket:
    """Opens a TCP connection to `host`:`port` through a checked address (never a second lookup), trying
    each address in turn as socket.create_connection does. Raises AddressRefused before connecting
    anywhere when the rules refuse an address of `host`; otherwise what create_connection raises."""
    error: OSError | None = None
    for address in checked_addresses(host, port):
        try:
            return socket.create_connection((str(address), port), timeout, source_address)
        except OSError as exc:
            error = exc
    raise error or OSError(f"{host} resolves to no address")


def endpoint_problem(url: str) -> str | None:
    """Why an endpoint URL cannot be saved (what rule it breaks, in words to act on), or None. Blank is
    fine (AWS or the public hub). A host that does not resolve here passes: *Test connection* says so, and
    the check at every connection still applies."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "The endpoint URL's port is not a number from 1 to 65535."
    if parts.scheme not in DEFAULT_PORTS:
        return "The endpoint URL must start with http:// or https://."
    if not parts.hostname:
        return "The endpoint URL names no host."
    if parts.username is not None or parts.password is not None:
        return "Put credentials in the connection's secret fields, not in the endpoint URL (user:password@)."
    try:
        checked_addresses(parts.hostname, port or DEFAULT_PORTS[parts.scheme])
    except AddressRefused as exc:
        return f"This endpoint is refused. {exc}"
    except OSError:
        return None
    return None
