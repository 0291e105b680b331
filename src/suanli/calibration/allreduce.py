"""All-reduce bus bandwidth across local processes (gloo on CPUs, NCCL on GPUs)."""

from __future__ import annotations

import math
import os
import queue
import socket
import time
from typing import Any

from suanli.calibration.timing import Plan, sync_for, torch_module
from suanli.errors import SuanliError


def _worker(rank: int, world: int, port: int, device: str, sizes: list[float], q: Any) -> None:
    torch = torch_module()
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    dev = f"cuda:{rank}" if backend == "nccl" else "cpu"
    sync = sync_for(torch, dev)
    out = {}
    for mb in sizes:
        x = torch.ones(int(mb * 2**20 // 4), device=dev)
        # every rank must run the same number of all-reduces, or one waits for a partner
        # that has moved on: time one, agree on the largest count, then run that many
        dist.all_reduce(x)
        sync()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        sync()
        n = torch.tensor([max(1, math.ceil(0.2 / max(time.perf_counter() - t0, 1e-6)))])
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(int(n.item())):
            dist.all_reduce(x)
        sync()
        t = (time.perf_counter() - t0) / int(n.item())
        # bus bandwidth: what each link carries in a ring, the figure NCCL's tests report
        out[f"{mb:g}"] = round(2 * (world - 1) / world * x.numel() * 4 / t / 1e9, 3)
    if rank == 0:
        q.put(out)
    dist.destroy_process_group()


def allreduce(device: str, plan: Plan, world: int = 2) -> dict[str, float]:
    """All-reduce bus bandwidth across ``world`` local processes (one GPU each on CUDA)."""
    torch = torch_module()
    import torch.multiprocessing as mp

    if device.startswith("cuda") and torch.cuda.device_count() < world:
        return {}  # one GPU: no all-reduce to measure
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, device, list(plan.allreduce_mb), q))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                result: dict[str, float] = q.get(timeout=0.5)
                break
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    why = f"a worker exited {dead[0]}" if dead else "no result in 300 s"
                    raise SuanliError(f"all-reduce benchmark failed: {why}") from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return result
