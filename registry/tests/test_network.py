"""The rules of registry/sources/network.py: which addresses a storage or hub
connection may reach, checked on the address actually connected to."""

from __future__ import annotations

import ipaddress

import pytest

from registry.sources import network
from registry.sources.network import AddressRefused, Policy, Service
from tests.support.listener import Listener


def ip(text: str):
    return ipaddress.ip_address(text)


OPEN = Policy()


@pytest.fixture
def no_model_servers(monkeypatch):
    """The rules without the model-server provider (these tests have no database)."""
    monkeypatch.setattr(network, "_providers", [])
    network.forget_provided()
    yield
    network.forget_provided()


@pytest.fixture
def resolver(monkeypatch):
    """A resolver the test controls: names in `answers` resolve to the listed addresses, others as usual."""
    answers: dict[str, list[str]] = {}
    real = network.resolve

    def resolve(host: str, port: int):
        if host in answers:
            return [ip(a) for a in answers[host]]
        return real(host, port)

    monkeypatch.setattr(network, "resolve", resolve)
    return answers


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure metadata
        "169.254.170.2",  # ECS task credentials
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "100.100.100.200",  # Alibaba metadata
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_metadata_and_link_local_addresses_are_refused(address):
    assert "metadata address" in network.address_problem(ip(address), 80, OPEN)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255"])
def test_addresses_that_are_no_single_host_are_refused(address):
    assert "not the address of one host" in network.address_problem(ip(address), 80, OPEN)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.10", "8.8.8.8"])
def test_other_addresses_are_allowed_without_an_allowlist(address):
    assert network.address_problem(ip(address), 9000, OPEN) is None


@pytest.mark.parametrize("host", ["metadata", "metadata.google.internal", "METADATA.Google.Internal.", "instance-data"])
def test_metadata_host_names_are_refused_whatever_they_resolve_to(host):
    assert "cloud metadata service" in network.host_problem(host, OPEN)


def test_a_service_of_the_console_is_refused_on_its_port_only():
    policy = Policy(services=(Service("Redis", ip("10.0.0.7"), 6379),))

    assert "the console's own Redis" in network.address_problem(ip("10.0.0.7"), 6379, policy)
    assert network.address_problem(ip("10.0.0.7"), 9000, policy) is None
    assert network.address_problem(ip("10.0.0.8"), 6379, policy) is None


def test_a_service_on_loopback_is_refused_on_every_loopback_address():
    policy = Policy(services=(Service("database", ip("127.0.0.1"), 5432),))

    for address in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
        assert "database" in network.address_problem(ip(address), 5432, policy), address


def test_a_service_listening_on_every_address_is_refused_on_any_address():
    policy = Policy(services=(Service("web server", None, 8000),))

    assert "web server" in network.address_problem(ip("192.168.1.20"), 8000, policy)
    assert network.address_problem(ip("192.168.1.20"), 8001, policy) is None


def test_with_an_allowlist_only_its_hosts_and_networks_are_reachable():
    hosts, networks = network.parse_entries(["store.corp.example", "10.20.0.0/16", "192.0.2.7"], setting="X")
    policy = Policy(allowed_hosts=hosts, allowed_networks=networks)

    assert network.address_problem(ip("10.20.3.4"), 443, policy, host="minio.corp.example") is None
    assert network.address_problem(ip("192.0.2.7"), 443, policy, host="192.0.2.7") is None
    assert network.address_problem(ip("172.16.0.9"), 443, policy, host="Store.Corp.Example.") is None
    refused = network.address_problem(ip("127.0.0.1"), 9000, policy, host="localhost")
    assert refused == (
        "localhost (127.0.0.1) is not in PLUGBOARD_FETCH_ALLOWLIST; ask an administrator to add the store's host "
        "or network"
    )


def test_the_allowlist_does_not_open_what_is_refused_always():
    policy = Policy(
        services=(Service("Redis", ip("10.0.0.7"), 6379),),
        allowed_hosts=frozenset({"metadata.google.internal"}),
        allowed_networks=(ipaddress.ip_network("0.0.0.0/0"),),
    )

    assert network.address_problem(ip("169.254.169.254"), 80, policy, host="x") is not None
    assert network.address_problem(ip("10.0.0.7"), 6379, policy, host="x") is not None
    assert network.host_problem("metadata.google.internal", policy) is not None


def test_the_denylist_adds_hosts_and_networks():
    hosts, networks = network.parse_entries(["vault.corp.example", "10.9.0.0/16"], setting="X")
    policy = Policy(denied_hosts=hosts, denied_networks=networks)

    assert "PLUGBOARD_FETCH_DENYLIST" in network.host_problem("vault.corp.example", policy)
    assert "PLUGBOARD_FETCH_DENYLIST" in network.address_problem(ip("10.9.1.1"), 443, policy)
    assert network.address_problem(ip("10.8.1.1"), 443, policy) is None


def test_a_malformed_list_entry_refuses_rather_than_opens():
    with pytest.raises(AddressRefused, match="PLUGBOARD_FETCH_ALLOWLIST has an entry “store:9000/x”"):
        network.parse_entries(["store:9000/x"], setting="PLUGBOARD_FETCH_ALLOWLIST")


@pytest.mark.parametrize(
    ("origin", "target", "followed"),
    [
        ("http://hub.corp:8080/a", "http://hub.corp:8080/b", True),
        ("https://hub.corp/a", "https://HUB.corp:443/b", True),
        ("https://hub.corp/a", "http://hub.corp/b", False),  # scheme
        ("https://hub.corp/a", "https://cdn.hub.corp/b", False),  # host
        ("http://hub.corp:8080/a", "http://hub.corp:6379/", False),  # port
        ("http://hub.corp/a", "http://169.254.169.254/latest/meta-data/", False),
        ("http://hub.corp/a", "", False),
    ],
)
def test_redirects_are_followed_only_within_one_origin(origin, target, followed):
    assert (network.redirect_problem(origin, target) is None) is followed


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://store.example/", "must start with http:// or https://"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("http://user:pw@store.example/", "not in the endpoint URL (user:password@)"),
        ("http://store.example:99999/", "port is not a number"),
        ("http://169.254.169.254/", "169.254.169.254 is a link-local or cloud metadata address"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a link-local or cloud metadata address"),
        ("http://metadata.google.internal/", "metadata.google.internal is a cloud metadata service"),
    ],
)
def test_an_endpoint_is_checked_when_saved(url, problem, settings, no_model_servers):
    assert problem in network.endpoint_problem(url)


def test_a_blank_endpoint_or_a_name_that_does_not_resolve_here_passes_at_save(settings, no_model_servers):
    assert network.endpoint_problem("") is None
    assert network.endpoint_problem("http://store.plugboard-test.invalid:9000") is None


def test_an_endpoint_is_checked_on_every_address_its_name_resolves_to(settings, no_model_servers, resolver):
    resolver["store.example"] = ["10.0.0.5", "169.254.169.254"]

    assert "169.254.169.254 is a link-local" in network.endpoint_problem("https://store.example/")


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_console_services_come_from_its_settings(settings, no_model_servers):
    settings.DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "HOST": "db", "PORT": ""}}
    settings.REDIS_URL = "redis://redis.internal:6380/0"
    settings.PLUGBOARD_WEB_ADDRESSES = ["0.0.0.0:8000"]
    network.register_service_addresses(lambda: [("10.0.0.5", 41234)])

    assert network.service_endpoints() == [
        ("database", "db", 5432),
        ("Redis", "redis.internal", 6380),
        ("web server", "0.0.0.0", 8000),
        ("model server", "10.0.0.5", 41234),
    ]


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_a_unix_socket_redis_and_an_sqlite_database_have_no_address(settings, no_model_servers):
    settings.DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/x.sqlite3"}}
    settings.REDIS_URL = "unix:///tmp/redis.sock"
    settings.PLUGBOARD_WEB_ADDRESSES = []

    assert network.service_endpoints() == []


def test_when_the_model_servers_cannot_be_listed_no_connection_is_made(settings, no_model_servers):
    def broken():
        raise RuntimeError("database down")

    network.register_service_addresses(broken)

    with pytest.raises(AddressRefused, match="could not read its model servers' addresses"):
        network.current_policy()


def test_connect_connects_to_the_address_it_checked_with_one_lookup_each_time(no_model_servers, monkeypatch):
    listener = Listener("127.0.0.2")
    answers = iter([["127.0.0.2"], ["169.254.169.254"]])  # a rebinding name: allowed, then metadata
    lookups = []

    def resolve(host, port):
        lookups.append(host)
        return [ip(a) for a in next(answers)]

    monkeypatch.setattr(network, "resolve", resolve)
    try:
        sock = network.connect("rebind.example", listener.port, timeout=5)
        assert sock.getpeername()[0] == "127.0.0.2"
        sock.close()
        with pytest.raises(AddressRefused, match=r"169\.254\.169\.254 is a link-local or cloud metadata address"):
            network.connect("rebind.example", listener.port, timeout=5)
    finally:
        listener.close()
    assert lookups == ["rebind.example", "rebind.example"]


def test_a_refused_address_is_never_connected_to(settings, no_model_servers, monkeypatch):
    attempts = []
    monkeypatch.setattr(network.socket, "create_connection", lambda *a, **k: attempts.append(a))
    monkeypatch.setattr(network, "resolve", lambda host, port: [ip("10.0.0.5"), ip("169.254.169.254")])

    with pytest.raises(AddressRefused, match=r"Refused to connect to store\.example: 169\.254\.169\.254"):
        network.connect("store.example", 80, timeout=1)
    assert attempts == []
