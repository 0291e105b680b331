"""The driver of a gang on Ray: ``python -m suanli.run.ray_gang`` inside a Ray job.

It reserves one placement-group bundle per member (``PACK``: within a node
first; each bundle held to the node suanli's scheduler chose), starts a small
actor in each bundle that runs the member's command with the torchrun
environment (``MASTER_ADDR`` and ``MASTER_PORT``: rank 0's node and a port
free there), and exits with the first non-zero member exit code. Stopping the
Ray job sends this driver SIGTERM: it passes SIGTERM to every member, waits the
grace period (the members may checkpoint), then kills what is left, so a
stopped gang leaves no process. The gang is described by the ``SUANLI_GANG``
environment variable (JSON).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any


class Member:
    """Runs one member's command in its bundle; ``terminate``/``kill`` reach its group."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def ip(self) -> str:
        import ray

        return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]

    def free_port(self) -> int:
        """A port free on *this* member's node (rank 0's: where the rendezvous listens)."""
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])

    def run(self, argv: list[str], env: dict[str, str], cwd: str | None) -> int:
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **env}, cwd=cwd, start_new_session=True
        )
        return self.proc.wait()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)


def main() -> int:
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    gang: dict[str, Any] = json.loads(os.environ["SUANLI_GANG"])
    n, bundle = int(gang["members"]), {k: float(v) for k, v in gang["bundle"].items()}
    grace_s = float(gang.get("grace_s", 10.0))
    stop = threading.Event()
    ray.init(log_to_driver=True)
    # after ray.init, which installs its own SIGTERM handler (it would end the driver at once)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    selectors = [{"ray.io/node-id": nid} for nid in gang["node_ids"]]
    pg = placement_group([dict(bundle) for _ in range(n)], "PACK", bundle_label_selector=selectors)
    while not stop.is_set():
        ready, _ = ray.wait([pg.ready()], timeout=0.5)
        if ready:
            break
    if stop.is_set():
        return 128 + signal.SIGTERM
    cpu = bundle.pop("CPU", 0.0)
    actor = ray.remote(max_concurrency=4)(Member)  # type: ignore[call-overload]
    members = [
        actor.options(
            num_cpus=cpu,
            num_gpus=bundle.get("GPU", 0.0),
            resources={k: v for k, v in bundle.items() if k != "GPU"},
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i),
        ).remote()
        for i in range(n)
    ]
    master = ray.get(members[0].ip.remote())
    port = str(ray.get(members[0].free_port.remote()))
    # Ray pins GPU bundles (each member sees its own GPUs from index 0); custom chip
    # resources are counts, so members sharing a node are numbered among themselves
    pinned = bundle.get("GPU", 0.0) > 0
    nodes = list(gang["node_ids"])
    refs = []
    for rank, m in enumerate(members):
        env = {
            "MASTER_ADDR": master,
            "MASTER_PORT": port,
            "WORLD_SIZE": str(n),
            "RANK": str(rank),
            "LOCAL_RANK": str(0 if pinned else nodes[:rank].count(nodes[rank])),
        }
        refs.append(m.run.remote(gang["argv"], env, gang.get("cwd")))
    codes: dict[int, int] = {}
    pending = list(refs)
    while pending and not stop.is_set():
        done, pending = ray.wait(pending, timeout=0.5)
        for ref in done:
            code = int(ray.get(ref))
            codes[refs.index(ref)] = code
            if code != 0:
                stop.set()  # one member failed: the gang stops
    if pending:
        ray.get([m.signal.remote(signal.SIGTERM) for m in members])
        deadline = time.monotonic() + grace_s
        while pending and time.monotonic() < deadline:
            done, pending = ray.wait(pending, timeout=0.2)
            for ref in done:
                codes[refs.index(ref)] = int(ray.get(ref))
        if pending:
            ray.get([m.signal.remote(signal.SIGKILL) for m in members])
            for ref in pending:
                codes[refs.index(ref)] = -9
    bad = [c for _, c in sorted(codes.items()) if c != 0]
    print(f"suanli gang: member exit codes {[codes[i] for i in sorted(codes)]}", flush=True)
    return 0 if not bad else (bad[0] if bad[0] > 0 else 128 - bad[0])


if __name__ == "__main__":
    sys.exit(main())
