"""A provider cannot point the service at metadata endpoints or outside the allowed networks."""

from __future__ import annotations

import pytest

from suanli.api.site_address import ENV, AddressRefused, check, host_of
from tests.test_service import api  # noqa: F401  (the API with admin, users and a provider)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254:80", "link-local"),
        ("http://169.254.169.254:8265", "link-local"),
        ("[fe80::1]:8265", "link-local"),
        ("100.100.100.200:80", "metadata"),
        ("[fd00:ec2::254]:80", "metadata"),
        ("224.0.0.1:8265", "multicast"),
        ("0.0.0.0:8265", "unspecified"),
        ("no-such-host.invalid:8265", "does not resolve"),
    ],
)
def test_refused_whatever_the_networks(address: str, why: str) -> None:
    with pytest.raises(AddressRefused, match=why):
        check(address)


def test_the_operators_networks_bound_what_providers_attach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check("127.0.0.1:8265")  # unset: any address not refused outright
    check("localhost:8265")
    monkeypatch.setenv(ENV, "10.0.0.0/8, 192.168.0.0/16")
    check("10.1.2.3:8265")
    with pytest.raises(AddressRefused, match="outside the networks"):
        check("127.0.0.1:8265")
    with pytest.raises(AddressRefused, match="outside the networks"):
        check("localhost:8265")  # checked by what the name resolves to
    monkeypatch.setenv(ENV, "10.0.0.0/8,not-a-network")
    with pytest.raises(AddressRefused, match="not a list of CIDRs"):
        check("10.1.2.3:8265")
    assert host_of("https://[::1]:8265") == "::1" and host_of("ray-head:8265") == "ray-head"


def test_a_providers_site_at_the_metadata_service_is_a_422_and_nothing_is_stored(
    api,  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    client, who = api
    site = {"region": "r", "engine": "ray", "address": "169.254.169.254:80"}
    # a caller who may not manage the site learns nothing of the address
    r = client.put("/v1/sites/meta", json=site, headers=who["alice"])
    assert r.status_code == 403 and "169.254" not in r.text
    r = client.put("/v1/sites/meta", json=site, headers=who["provider"])
    assert r.status_code == 422 and "link-local" in r.json()["error"]
    assert client.get("/v1/sites/meta", headers=who["admin"]).status_code == 404
    ok = {"region": "r", "engine": "ray", "address": "127.0.0.1:8265"}
    assert client.put("/v1/sites/here", json=ok, headers=who["provider"]).status_code == 200
    # the operator attaches where they like
    assert client.put("/v1/sites/meta", json=site, headers=who["admin"]).status_code == 200
