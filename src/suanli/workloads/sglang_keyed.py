"""SGLang's OpenAI server, with its API key from the environment, on its node's address.

    python -m suanli.workloads.sglang_keyed --model-path M --port P [SGLang's flags ...]

SGLang takes its API key only as ``--api-key``, and a process's command line is
readable by every local user (``/proc/PID/cmdline``, ``ps``): a replica started with
its key there hands the key to any other tenant's job on the node, which could then use
the service for free. This process runs ``sglang.launch_server`` in itself with
``--api-key`` (from ``SUANLI_REPLICA_TOKEN``, which the services controller sets, as it
does for serve_lm and vLLM) and ``--host`` (the node's address, ``SUANLI_NODE_ADDRESS``)
appended to ``sys.argv`` after the exec: the command line others can read never holds
the key. SGLang's ``/health`` answers without the key (its middleware exempts it), so
the router's prober sees the replica come up; everything else asks for ``Bearer KEY``.

Without the token it refuses to start: a replica with no key on a node's address is
open to every job that can reach the node.
"""

from __future__ import annotations

import os
import runpy
import sys

from suanli.run.executor import NODE_ADDRESS_ENV
from suanli.workloads.replica_auth import REPLICA_TOKEN_ENV


def main(argv: list[str] | None = None) -> None:
    # out of the environment SGLang's processes (and a model's remote code) inherit
    key = os.environ.pop(REPLICA_TOKEN_ENV, "")
    if not key:
        raise SystemExit(
            f"sglang_keyed: {REPLICA_TOKEN_ENV} is not set: a replica is started by the "
            "services controller, which gives it its key"
        )
    host = os.environ.get(NODE_ADDRESS_ENV) or "127.0.0.1"
    # last, so they win SGLang's argparse (the spec refuses both in engine_args anyway)
    args = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["sglang.launch_server", *args, "--host", host, "--api-key", key]
    runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
