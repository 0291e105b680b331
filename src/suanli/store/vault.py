"""Secrets the service keeps for others (an attached site's engine token): sealed with a
key of the service's own before they reach the database, opened only where they are
used, never shown.

The key is Fernet's (AES-128-CBC with HMAC-SHA256, from ``cryptography``): the
``SUANLI_SECRET_KEY`` environment variable, or a key file the service makes in its
data directory on first use, readable by its own user only. A database copied without
the key holds no usable secret; a key lost means attaching the sites again.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from suanli.errors import SuanliError

KEY_ENV = "SUANLI_SECRET_KEY"
KEY_FILE = "secret.key"


class VaultError(SuanliError):
    """A sealed secret this service's key does not open."""


class Vault:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise VaultError(
                f"{KEY_ENV}: not a Fernet key (32 url-safe base64 bytes: "
                "python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from exc

    @classmethod
    def for_service(cls, data_dir: Path) -> Vault:
        """The service's vault: its key from the environment, else from (or made in) the
        data directory, with mode 0600."""
        if os.environ.get(KEY_ENV):
            return cls(os.environ[KEY_ENV].encode())
        path = Path(data_dir) / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # written whole under another name, then linked into place: two processes
            # starting at once make one key, and neither reads a half-written file
            tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls(path.read_bytes().strip())

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise VaultError(
                "a stored credential does not open with this service's key (the key "
                f"changed: {KEY_ENV} or {KEY_FILE}); attach the site again with its token"
            ) from exc
