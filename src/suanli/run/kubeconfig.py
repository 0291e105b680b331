"""What `suanli site attach --kubeconfig` takes from a kubeconfig: one context's API
server, its CA, its bearer token and its namespace.

The kubeconfig is read where the CLI runs (the attacher's own machine, so its file
references are read there) and only those four go to the service. What cannot travel is
refused with what to do instead: an ``exec`` plugin or ``auth-provider`` makes a token by
running a program (the service would have to run it, at a stranger's choosing, and the
token it makes expires within hours), and client certificates and skipped TLS checks are
not supported. A service account's token is what a long-lived controller uses
(``kubectl create token``), and what this asks for.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from suanli.errors import SuanliError

TOKEN_ADVICE = (
    "make a service account and a token for suanli, e.g. `kubectl -n NS create "
    "serviceaccount suanli` and `kubectl -n NS create token suanli --duration=8760h`, bind it "
    "a ClusterRole allowing nodes: list and a Role in NS allowing pods: get, list, delete, "
    "deletecollection; pods/log: get; jobs.batch.volcano.sh: create, get, list, delete, and "
    "give it as `token:` in the kubeconfig or with --token-file"
)


class KubeconfigError(SuanliError, ValueError):
    """A kubeconfig this cannot use; the message says which field and what to do."""


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Cluster(_Loose):
    server: str = ""
    ca_data: str | None = Field(default=None, alias="certificate-authority-data")
    ca_file: str | None = Field(default=None, alias="certificate-authority")
    insecure: bool = Field(default=False, alias="insecure-skip-tls-verify")
    proxy_url: str | None = Field(default=None, alias="proxy-url")


class _User(_Loose):
    token: str | None = None
    token_file: str | None = Field(default=None, alias="tokenFile")
    exec_: dict[str, Any] | None = Field(default=None, alias="exec")
    auth_provider: dict[str, Any] | None = Field(default=None, alias="auth-provider")
    cert_data: str | None = Field(default=None, alias="client-certificate-data")
    cert_file: str | None = Field(default=None, alias="client-certificate")
    username: str | None = None


class _Context(_Loose):
    cluster: str = ""
    user: str = ""
    namespace: str | None = None


class _Named(_Loose):
    name: str


class _NamedCluster(_Named):
    cluster: _Cluster


class _NamedUser(_Named):
    user: _User = Field(default_factory=_User)


class _NamedContext(_Named):
    context: _Context


class _Kubeconfig(_Loose):
    clusters: list[_NamedCluster] = Field(default_factory=list)
    users: list[_NamedUser] = Field(default_factory=list)
    contexts: list[_NamedContext] = Field(default_factory=list)
    current_context: str = Field(default="", alias="current-context")


@dataclass(frozen=True)
class KubeTarget:
    """What the service needs to run jobs on the cluster (the token is sealed there)."""

    server: str
    token: str | None
    ca_cert: str | None  # PEM
    namespace: str | None


def read_kubeconfig(path: Path, context: str | None = None) -> KubeTarget:
    """The API server, CA, token and namespace of ``context`` (default: the current one)
    in the kubeconfig at ``path``; `KubeconfigError` saying what is wrong otherwise."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KubeconfigError(f"--kubeconfig {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"--kubeconfig {path}: not YAML ({exc})") from None
    try:
        cfg = _Kubeconfig.model_validate(raw if isinstance(raw, dict) else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise KubeconfigError(f"--kubeconfig {path}: {where}: {first['msg']}") from None
    name = context or cfg.current_context
    if not name:
        raise KubeconfigError(f"--kubeconfig {path}: no current-context; name one with --context")
    ctx = next((c.context for c in cfg.contexts if c.name == name), None)
    if ctx is None:
        known = ", ".join(c.name for c in cfg.contexts) or "none"
        raise KubeconfigError(f"--kubeconfig {path}: no context {name!r} (contexts: {known})")
    cluster = next((c.cluster for c in cfg.clusters if c.name == ctx.cluster), None)
    if cluster is None or not cluster.server:
        raise KubeconfigError(f"--kubeconfig {path}: context {name!r} names no cluster server")
    user = next((u.user for u in cfg.users if u.name == ctx.user), _User())
    where = f"--kubeconfig {path}, context {name!r}"
    if cluster.insecure:
        raise KubeconfigError(
            f"{where}: insecure-skip-tls-verify is not supported: give the cluster's "
            "certificate-authority-data instead"
        )
    if cluster.proxy_url:
        raise KubeconfigError(f"{where}: proxy-url is not supported; reach the server directly")
    if user.exec_ is not None or user.auth_provider is not None:
        raise KubeconfigError(
            f"{where}: the user gets its token by running a program (exec or auth-provider), "
            f"which the service will not run for a site; {TOKEN_ADVICE}"
        )
    if user.cert_data or user.cert_file or user.username:
        raise KubeconfigError(
            f"{where}: client certificates and passwords are not supported; {TOKEN_ADVICE}"
        )
    token = user.token
    if user.token_file:
        token = _read(Path(user.token_file), path, where, "tokenFile").strip()
    ca = None
    if cluster.ca_data:
        try:
            ca = base64.b64decode(cluster.ca_data, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise KubeconfigError(f"{where}: certificate-authority-data is not base64") from None
    elif cluster.ca_file:
        ca = _read(Path(cluster.ca_file), path, where, "certificate-authority")
    if ca is not None and "-----BEGIN CERTIFICATE-----" not in ca:
        raise KubeconfigError(f"{where}: the certificate authority is not a PEM certificate")
    return KubeTarget(cluster.server.rstrip("/"), token or None, ca, ctx.namespace)


def _read(file: Path, config: Path, where: str, field: str) -> str:
    """A file a kubeconfig names, relative to the kubeconfig as kubectl reads it."""
    full = file if file.is_absolute() else config.parent / file
    try:
        return full.read_text()
    except OSError as exc:
        raise KubeconfigError(f"{where}: {field} {full}: {exc.strerror}") from None
