"""A provider's Ray cluster with token auth on (``RAY_AUTH_MODE=token``), attached
through the CLI against a real `suanli up`: the token goes in from a file, is sealed
before it reaches the database, is never shown, and is what the service's calls to
the cluster carry; a wrong one is said in the site's status. The vault on its own too."""

from __future__ import annotations

import json
import secrets
import shutil
import stat
from pathlib import Path

import pytest

pytest.importorskip("ray.job_submission", reason="sites on Ray need `pip install suanli[ray]`")
from fastapi.testclient import TestClient

from suanli.api.app import create_app
from suanli.store import Store
from suanli.store.models import SiteRow
from suanli.store.vault import KEY_ENV, Vault, VaultError
from tests.helpers import admin_cli, start_service, stop_service
from tests.test_sites import Cluster, _port, _wait


def test_the_vault_seals_with_a_key_only_the_service_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    vault = Vault.for_service(tmp_path)
    key = tmp_path / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    sealed = vault.seal("tok-123")
    assert "tok-123" not in sealed and vault.open(sealed) == "tok-123"
    assert Vault.for_service(tmp_path).open(sealed) == "tok-123"  # the same key again
    other = Vault.for_service(tmp_path / "elsewhere")
    with pytest.raises(VaultError, match="attach the site again"):
        other.open(sealed)
    monkeypatch.setenv(KEY_ENV, "not a key")
    with pytest.raises(VaultError, match="not a Fernet key"):
        Vault.for_service(tmp_path)


def test_a_token_is_sealed_kept_and_never_shown(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path)
    store.migrate()
    vault = Vault.for_service(tmp_path)
    admin = store.create_token("admin", "admin")
    api = TestClient(create_app(store, vault=vault))
    api.headers["Authorization"] = f"Bearer {admin}"
    body = {"region": "cn-west", "engine": "ray", "address": "127.0.0.1:1", "token": "s3cret-tok"}
    put = api.put("/v1/sites/west", json=body)
    assert put.status_code == 200 and "s3cret-tok" not in put.text
    assert put.json()["credential"] == "sealed"
    with store.tx() as s:
        row = s.get(SiteRow, "west")
        assert row is not None and row.credential and "s3cret-tok" not in row.credential
        assert vault.open(row.credential) == "s3cret-tok"
    # a change without a token keeps the sealed one; a reference replaces it
    again = api.put("/v1/sites/west", json={**body, "token": None, "region": "cn-west-2"})
    assert again.json()["credential"] == "sealed"
    ref = {**body, "token": None, "token_env": "SUANLI_SITE_TOKEN_WEST"}
    assert api.put("/v1/sites/west", json=ref).json()["credential"] == "env SUANLI_SITE_TOKEN_WEST"
    # no other variable of the service's (the vault's key, a password) can be sent out
    for name in ("SUANLI_SECRET_KEY", "PGPASSWORD"):
        bad = api.put("/v1/sites/west", json={**body, "token": None, "token_env": name})
        assert bad.status_code == 422, name
    # a credential goes only where it was given for: a new address drops it
    moved = api.put("/v1/sites/west", json={**body, "token": None, "address": "127.0.0.1:2"})
    assert moved.json()["credential"] is None
    assert "s3cret" not in api.get("/v1/sites").text + api.get("/v1/sites/west").text
    both = api.put("/v1/sites/west", json={**body, "token_env": "SUANLI_SITE_TOKEN_X"})
    assert both.status_code == 422 and "not both" in both.text
    plain = TestClient(create_app(store))  # an app with no vault refuses to take one
    plain.headers["Authorization"] = f"Bearer {admin}"
    refused = plain.put("/v1/sites/east", json=body)
    assert refused.status_code == 422 and "keeps no secrets" in refused.text


def test_a_token_cluster_attached_with_its_token_runs_jobs(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    cluster = Cluster("tok", 1, token=token)
    cluster.start()
    port, data = _port(), tmp_path / "data"
    svc = start_service(data, port, "--single-user")
    try:
        _, cli = admin_cli(data, port)

        def site(name: str) -> dict[str, object]:
            return dict(json.loads(cli("site", "show", name, "--json")))

        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-token\n")
        cli("site", "attach", "bad", "--ray-address", cluster.address, "--region", "cn-x",
            "--token-file", str(wrong))  # fmt: skip
        _wait(lambda: "Forbidden" in str(site("bad")["status"]), "the wrong token said", 120)
        good = tmp_path / "ray.token"
        good.write_text(token + "\n")
        said = cli("site", "attach", "tok", "--ray-address", cluster.address,
                   "--region", "cn-tok", "--token-file", str(good))  # fmt: skip
        assert token not in said
        _wait(lambda: site("tok")["status"] == "ready" and bool(site("tok")["nodes"]), "ready")
        shown = cli("site", "show", "tok")
        assert "token: sealed (never shown)" in shown and token not in shown
        spec = tmp_path / "job.yaml"
        spec.write_text(
            json.dumps(
                {
                    "name": "on-token-site",
                    "command": ["python", "-c", "print('ran behind the token')"],
                    "regions": ["cn-tok"],
                    "resources": {"cpu": 1},
                }
            )
        )
        jid = json.loads(cli("submit", str(spec), "--json"))["id"]
        _wait(
            lambda: json.loads(cli("job", str(jid), "--json"))["state"] == "succeeded",
            "the job ran on the token cluster",
            180,
        )
        assert "ran behind the token" in cli("logs", str(jid))
        assert json.loads(cli("job", str(jid), "--json"))["sites"] == ["tok"]
        for f in data.glob("*.db*"):  # sealed at rest: the token's bytes are nowhere
            assert token.encode() not in f.read_bytes(), f
    finally:
        stop_service(svc)
        cluster.kill()
        shutil.rmtree(cluster.temp, ignore_errors=True)
