"""``python -m suanli.workloads.train_lm``: train a small GPT, the platform's own training job.

The network is built from a catalog model (or a Hugging Face ``config.json``)
— by default ``tiny-llama-40m``: RMSNorm, rotary positions, grouped-query
attention through PyTorch's fused SDPA, a gated (SwiGLU) MLP — so the perf
model predicts exactly the network that runs. Tokens are bytes of a text
corpus: the file given with ``--corpus``, else the Python standard library's
own source, which ships with every Python (real text, no download).

One process, or several with the torchrun-style environment the executor sets
(``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): ``--parallel ddp``
replicates the model and all-reduces gradients, ``--parallel fsdp`` shards
parameters, gradients and optimizer state (ZeRO-3 style, PyTorch FSDP).
Matmuls run in bf16 autocast with fp32 master weights (the mixed precision the
perf model assumes) where the device runs bf16 faster than fp32 — measured at start
by ``--precision auto``, the default — and in plain fp32 elsewhere (a CPU without
bf16 instructions emulates it ~100x slower). On SIGTERM — cancel or preemption — it finishes the
current step, writes a checkpoint and exits 0; started again with the same
``--ckpt-dir`` it resumes from the last checkpoint, so a preemption loses at
most one step. Each step prints one ``suanli-metric`` JSON line (step time,
tokens/s, loss) that the platform reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from suanli.catalog.loader import get_model
from suanli.catalog.types import ModelArch
from suanli.device import choose_precision, device_name
from suanli.workloads import MALLOC_ENV, METRIC


class Block(nn.Module):
    def __init__(self, a: ModelArch) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = a.heads, a.kv_heads, a.head_dim
        self.norm1 = nn.RMSNorm(a.hidden)
        self.q = nn.Linear(a.hidden, a.heads * a.head_dim, bias=a.attention_bias)
        self.kv = nn.Linear(a.hidden, 2 * a.kv_heads * a.head_dim, bias=a.attention_bias)
        self.o = nn.Linear(a.heads * a.head_dim, a.hidden, bias=False)
        self.norm2 = nn.RMSNorm(a.hidden)
        self.gated = a.gated_mlp
        self.up = nn.Linear(a.hidden, (2 if a.gated_mlp else 1) * a.ffn, bias=False)
        self.down = nn.Linear(a.ffn, a.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        y = self.norm1(x)
        q = self.q(y).view(b, t, self.nh, self.hd).transpose(1, 2)
        k, v = self.kv(y).view(b, t, 2, self.nkv, self.hd).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, self.nh * self.hd))
        return self.mlp(x)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The residual MLP half of the block (shared with serve_lm's cached path)."""
        u = self.up(self.norm2(x))
        if self.gated:
            g, u = u.chunk(2, dim=-1)
            u = F.silu(g) * u
        else:
            u = F.gelu(u)
        out: torch.Tensor = x + self.down(u)
        return out


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)


def rope_inv_freq(head_dim: int) -> torch.Tensor:
    """RoPE's inverse frequencies, one per pair of dimensions of a head."""
    half = head_dim // 2
    return 1.0 / (10000 ** (torch.arange(half) / half))


def rope_tables(seq_len: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles, [seq_len, head_dim / 2], for `_rope`."""
    ang = torch.outer(torch.arange(seq_len, device=inv_freq.device).float(), inv_freq)
    return ang.cos(), ang.sin()


class GPT(nn.Module):
    def __init__(self, a: ModelArch) -> None:
        super().__init__()
        self.embed = nn.Embedding(a.vocab, a.hidden)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = nn.RMSNorm(a.hidden)
        self.head = nn.Linear(a.hidden, a.vocab, bias=False)
        if a.tied_embeddings:
            self.head.weight = self.embed.weight
        self.register_buffer("inv_freq", rope_inv_freq(a.head_dim), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_tables(idx.shape[1], self.inv_freq)  # type: ignore[arg-type]
        x = self.embed(idx)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


def corpus_bytes(path: str | None, limit_mb: float = 8.0) -> torch.Tensor:
    """The training text as a byte tensor (see module docstring)."""
    limit = int(limit_mb * 2**20)
    if path:
        data = Path(path).read_bytes()[:limit]
    else:
        chunks, size = [], 0
        for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
            chunks.append(f.read_bytes())
            size += len(chunks[-1])
            if size >= limit:
                break
        data = b"".join(chunks)[:limit]
    if len(data) < 4096:
        raise SystemExit(f"corpus {path or 'stdlib'}: only {len(data)} bytes; need at least 4 KiB")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a checkpoint is whole or absent, never half-written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama-40m", help="catalog name or config.json")
    ap.add_argument("--corpus", default=None, help="a text file (default: Python's stdlib)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--micro-batch", type=int, default=4, help="sequences per process per step")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp")
    ap.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 autocast where this device runs bf16 faster than fp32 (measured), "
        "else fp32",
    )
    ap.add_argument("--ckpt-dir", default=os.environ.get("SUANLI_CKPT_DIR"))
    ap.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = args.device.startswith("cuda")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if not cuda:  # the cores the executor gave (OMP_NUM_THREADS), else a share of the CPU
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        given = os.environ.get("OMP_NUM_THREADS", "")
        share = (os.cpu_count() or 1) // local_world
        torch.set_num_threads(max(1, int(given) if given.isdigit() else share))
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    if args.precision == "auto":
        chosen = choose_precision(str(device))
        args.precision = chosen.dtype
        if world > 1:  # every rank runs rank 0's choice (two measurements may differ)
            flag = torch.tensor([1.0 if chosen.dtype == "bf16" else 0.0], device=device)
            dist.broadcast(flag, 0)
            args.precision = "bf16" if flag.item() > 0 else "fp32"
        if rank == 0:
            print(f"precision {chosen.dtype}: {chosen.reason}", flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))

    arch = get_model(args.model)
    if arch.moe or arch.mla:
        raise SystemExit(f"--model {args.model}: train_lm builds dense GQA models only")
    torch.manual_seed(args.seed)
    model: nn.Module = GPT(arch).to(device)
    if world > 1 and args.parallel == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    elif world > 1:
        from torch.distributed.fsdp import fully_shard

        for blk in model.blocks:  # type: ignore[union-attr]
            fully_shard(blk)
        fully_shard(model)
    # fused: one pass over each parameter's state, as production trainers run Adam
    fused = args.parallel != "fsdp" or world == 1  # fused Adam does not take FSDP's DTensors
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=fused)

    ckpt = (
        Path(args.ckpt_dir) / f"rank{rank if args.parallel == 'fsdp' else 0}.pt"
        if args.ckpt_dir
        else None
    )
    step = 0
    # DDP's wrapper prefixes every key ("module."): the checkpoint holds the bare model's,
    # so a job resumes at another world size (1 <-> N members: an elastic job resized)
    bare: nn.Module = (
        model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    )
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        bare.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        if rank == 0:
            print(f"resumed from {ckpt} at step {step}", flush=True)

    def checkpoint() -> None:
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if args.parallel == "fsdp" or rank == 0:  # FSDP: each rank its own shard
            _save(ckpt, {"model": bare.state_dict(), "opt": opt.state_dict(), "step": step})
        if world > 1:
            dist.barrier()

    data = corpus_bytes(args.corpus)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    tokens = args.micro_batch * args.seq_len
    times: list[float] = []
    n_params = sum(p.numel() for p in model.parameters())  # FSDP's DTensors count globally
    while step < args.steps:
        t0 = time.perf_counter()
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.micro_batch,), generator=gen)
        batch = torch.stack([data[s : s + args.seq_len + 1] for s in starts.tolist()]).to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16"):
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        step += 1
        dt = time.perf_counter() - t0
        times.append(dt)
        if rank == 0:
            metric = {
                "step": step,
                "loss": round(float(loss.detach()), 4),
                "step_time_s": round(dt, 5),
                "tokens_per_s": round(tokens * world / dt, 1),
            }
            print(METRIC + json.dumps(metric), flush=True)
        # agree on stopping, so every rank checkpoints the same step
        flag = torch.tensor([1.0 if stop["now"] else 0.0])
        if world > 1:
            dist.all_reduce(flag)
        if flag.item() > 0:
            checkpoint()
            if rank == 0:
                print(f"checkpoint at step {step} after SIGTERM; exiting", flush=True)
            break
        if args.ckpt_every and step % args.ckpt_every == 0:
            checkpoint()
    else:
        checkpoint()
    if rank == 0 and times:
        steady = times[2:] or times
        summary = {
            "summary": True,
            "model": arch.name,
            "model_ref": args.model,  # what get_model() reads back (a name or a path)
            "family": arch.family or arch.name,
            "device": device.type,
            "device_name": device_name(str(device)),  # calibrate's name: a profile is found
            "threads": torch.get_num_threads(),
            "precision": args.precision,
            "params": n_params,
            "world_size": world,
            "parallel": args.parallel if world > 1 else "single",
            "micro_batch": args.micro_batch,
            "seq_len": args.seq_len,
            "steps": step,
            "median_step_time_s": round(statistics.median(steady), 5),
            "tokens_per_s": round(tokens * world / statistics.median(steady), 1),
            "final_loss": None
            if math.isnan(float(loss.detach()))
            else round(float(loss.detach()), 4),
        }
        print(METRIC + json.dumps(summary), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return 0


def _reexec_with_heap_settings() -> None:
    if all(k in os.environ for k in MALLOC_ENV):
        return
    env = {**MALLOC_ENV, **os.environ}
    os.execve(
        sys.executable, [sys.executable, "-m", "suanli.workloads.train_lm", *sys.argv[1:]], env
    )


if __name__ == "__main__":
    _reexec_with_heap_settings()
    raise SystemExit(main())
