"""The address a worker announces: explicit, the bind address, or the route to NATS for a wildcard."""

from __future__ import annotations

import pytest

from meshserve.netaddr import advertised_host, route_address


def test_explicit_advertise_host_wins() -> None:
    assert advertised_host("0.0.0.0", "worker-7.models", "nats://nats:4222") == "worker-7.models"


def test_specific_bind_address_is_announced_as_is() -> None:
    assert advertised_host("127.0.0.1", "", "nats://nats.invalid:4222") == "127.0.0.1"


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "", "::"])
def test_wildcard_announces_the_route_to_nats(wildcard: str) -> None:
    # the loopback NATS URL routes over lo, so the source address is a loopback one
    assert advertised_host(wildcard, "", "nats://127.0.0.1:4222").startswith("127.")


def test_route_uses_the_first_server_of_a_list_and_the_default_port() -> None:
    assert route_address("127.0.0.2, nats://198.18.0.1:4222").startswith("127.")


def test_url_without_host_is_refused_with_the_url_in_the_message() -> None:
    with pytest.raises(ValueError, match="no host in NATS URL 'nats://:4222'"):
        route_address("nats://:4222")
