"""A provider cannot point the service at metadata endpoints or outside the allowed networks."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import pytest

from suanli.api.site_address import ENV, AddressRefused, check, host_of, pin
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


def test_pinning_keeps_an_address_and_replaces_a_name_by_what_it_resolves_to() -> None:
    assert pin("127.0.0.1:8265") == "127.0.0.1:8265"
    assert pin("localhost:8265") == "127.0.0.1:8265"
    assert pin("http://localhost:8265") == "http://127.0.0.1:8265"
    assert pin("https://localhost:8265") == "https://localhost:8265"  # a certificate's name
    with pytest.raises(AddressRefused, match="link-local"):
        pin("169.254.169.254:8265")
    assert pin("http://[::1]:8265") == "http://[::1]:8265"  # loopback, as 127.0.0.1 is


def _resolving(monkeypatch: pytest.MonkeyPatch, name: str, *ips: str) -> None:
    """``name`` resolves to ``ips`` in turn, the last one from then on (a DNS server
    cannot run here: only the lookup of this one test name is replaced, every other goes
    to the real resolver)."""
    import socket

    real = socket.getaddrinfo
    answers = list(ips)

    def lookup(host: str, *args: object, **kw: object) -> object:
        if host == name:
            ip = answers.pop(0) if len(answers) > 1 else answers[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0))]
        return real(host, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def test_a_providers_site_name_is_checked_again_and_pinned_where_the_service_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name passed the check when saved, then points at the metadata
    service when the controller connects. The connection is refused and said on the
    site; while the name is good the engine is reached at the checked address, not by
    name; an admin's site is taken as given."""
    from suanli.run.executor import Executor
    from suanli.run.sites import SiteExecutors
    from suanli.service.sites import SiteController
    from suanli.store import Store
    from suanli.store.models import SiteRow, TokenRow

    store = Store.sqlite(tmp_path)
    given: list[str] = []

    def make(row: SiteRow) -> Executor:
        given.append(str(row.address))
        raise ConnectionError("no engine in this test")

    with store.tx() as s:
        s.add(TokenRow(token_hash="h", role="admin", owner="root", created_at=0.0))
        for name, owner in (("prov-site", "prov"), ("admin-site", "root")):
            s.add(
                SiteRow(
                    name=name, owner=owner, region="r", engine="ray", pue=1.1,
                    carbon_g_per_kwh=0.0, power_price_per_kwh=0.0,
                    address="rebind.test:8265", updated_at=0.0,
                )
            )  # fmt: skip
    controller = SiteController(store, SiteExecutors(timeout_s=1.0), make)

    def status() -> dict[str, str]:
        controller.reconcile(0.0)  # a tick starts the connections (threads), the next reads them
        cf.wait([future for _, future in controller._connecting.values()])
        controller.reconcile(0.0)
        with store.tx() as s:
            return {r.name: str(r.status) for r in s.query(SiteRow)}

    # a name that answers a good address to the check and the metadata service next:
    # the address pinned is the one checked, whatever a second lookup would say
    _resolving(monkeypatch, "flip.test", "10.0.0.5", "169.254.169.254")
    assert pin("flip.test:8265") == "10.0.0.5:8265"
    _resolving(monkeypatch, "rebind.test", "10.0.0.5")
    status()
    assert sorted(given) == ["10.0.0.5:8265", "rebind.test:8265"]  # pinned; the admin's as is
    given.clear()
    _resolving(monkeypatch, "rebind.test", "169.254.169.254")
    with store.tx() as s:  # a changed row reconnects: both try again
        for row in s.query(SiteRow):
            row.address = "rebind.test:8266"
    got = status()
    assert given == ["rebind.test:8266"]  # only the admin's reached the factory
    assert "link-local" in got["prov-site"] and got["prov-site"].startswith("cannot attach")


def test_a_stored_site_cannot_take_the_name_of_the_services_own_engine(tmp_path: Path) -> None:
    """A site named like the service's own engine (``local``, ``ray``) would replace it,
    and the operator's nodes would be recorded as the site owner's: it is refused."""
    from suanli.run.executor import Executor
    from suanli.run.sites import SiteExecutors
    from suanli.service.sites import SiteController
    from suanli.store import Store
    from suanli.store.models import SiteRow

    store = Store.sqlite(tmp_path)
    sites = SiteExecutors(timeout_s=1.0)
    sites.own.add("local")
    made: list[str] = []

    def make(row: SiteRow) -> Executor:
        made.append(str(row.name))
        raise ConnectionError("no engine in this test")

    with store.tx() as s:
        s.add(
            SiteRow(
                name="local", owner="prov", region="r", engine="ray", pue=1.1,
                carbon_g_per_kwh=0.0, power_price_per_kwh=0.0,
                address="127.0.0.1:8265", updated_at=0.0,
            )
        )  # fmt: skip
    SiteController(store, sites, make).reconcile(0.0)
    with store.tx() as s:
        status = str(s.get(SiteRow, "local").status)  # type: ignore[union-attr]
    assert status.startswith("cannot attach: local is the name of the service's own engine")
    assert made == []
