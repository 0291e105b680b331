"""How a service's replica and its router know each other, with nothing heavy imported:
the service (``suanli up``) uses this without PyTorch, which only the replica needs.

The services controller draws a token per replica and hands it over in the job's
environment; the replica requires it of every request under ``/v1/`` and proves it
holds it when the prober asks (``/stats?challenge=``), so a process that took the
replica's port first is never sent a request, nor the token.
"""

from __future__ import annotations

import hashlib
import hmac

#: the bearer token a replica requires (set by the services controller in its job's env)
REPLICA_TOKEN_ENV = "SUANLI_REPLICA_TOKEN"


def token_proof(token: str, challenge: str) -> str:
    """That a replica holds its token, without showing it: HMAC-SHA256 of the prober's
    challenge."""
    return hmac.new(token.encode(), challenge.encode(), hashlib.sha256).hexdigest()
