"""A live service on this machine (issue 15): serve_lm replicas behind suanli's router,
driven by a time-scaled slice of the Azure conversation trace, one replica killed
mid-load, then idle until it scales to zero, then woken by one request.

``suanli up`` runs as a real process with the local executor; the service is
``tiny-llama-40m`` on serve_lm (8 slots), one CPU core per replica, KPA autoscaling
between 0 and 2 replicas (this machine has 2 cores). Requests are the trace's, in
order, with prompt / 8 and output / 4 tokens (clipped to the 512-token cache), sent
through the official ``openai`` client, streamed (so TTFT and TPOT are measured at
the client), at the trace's arrival times divided by ``--time-scale``.

Reported: SLO attainment (TTFT and TPOT both within the SLOs), status codes (a 5xx
is a failure of the router's promise), the replica count over time, when the
killed replica's requests were retried, how long the service took to reach zero
and to answer again from zero. Figures and a plot go to benchmarks/out/.

    python benchmarks/serve_live.py [--minutes 4] [--time-scale 3] [--ttft-slo-s 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from kill_restart import start  # `suanli up` as a process, once it answers
from suanli.run.local import free_port
from suanli.sim.serving.trace import read_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRACE = DATA / "azure_llm_inference_2023_conv.csv"
OUT = Path(__file__).parent / "out"
console = Console(width=140)


def pcts(values: list[float], scale: float, digits: int) -> str:
    p50, p99 = (scale * float(np.percentile(values, q)) for q in (50, 99))
    return f"{p50:.{digits}f} / {p99:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="trace minutes replayed")
    ap.add_argument("--time-scale", type=float, default=3.0)
    ap.add_argument(
        "--rate-share",
        type=float,
        default=0.1,
        help="every k-th request of the trace, k = 1 / share (2 cores)",
    )
    ap.add_argument("--ttft-slo-s", type=float, default=5.0)
    ap.add_argument("--tpot-slo-s", type=float, default=0.25)
    args = ap.parse_args(argv)
    if not TRACE.is_file():
        print(f"skipped: the Azure trace is not at {TRACE}")
        return 0
    import openai

    every = max(1, round(1 / args.rate_share))
    trace = read_trace(TRACE, duration_s=args.minutes * 60 * args.time_scale)[::every]
    reqs = [
        (
            (r.arrival_s) / args.time_scale,
            int(np.clip(r.prompt // 8, 8, 384)),
            int(np.clip(r.output // 4, 4, 120)),
        )
        for r in trace
    ]
    tmp = Path(tempfile.mkdtemp(prefix="serve-live-"))
    port = free_port()
    up = start(tmp / "data", port, "--single-user")
    url = f"http://127.0.0.1:{port}"
    token = (tmp / "data" / "admin.token").read_text().strip()
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    spec = {
        "name": "live",
        "model": "tiny-llama-40m",
        "engine_args": ["--slots", "8", "--max-len", "512"],
        "replicas": {"min": 0, "max": 2},
        "resources": {"accelerator": "cpu", "cpu": 1, "memory_gb": 2},
        "slo": {"ttft_s": args.ttft_slo_s, "tpot_s": args.tpot_slo_s},
        "autoscaler": {
            "policy": "kpa",
            "target_concurrency": 6,
            "stable_window_s": 30,
            "scale_to_zero_grace_s": 10,
        },
        "router": {"buffer": 256, "wait_s": 300},
    }
    api.post("/v1/services", json=spec).raise_for_status()
    client = openai.OpenAI(base_url=f"{url}/s/live/v1", api_key=token, max_retries=0, timeout=600)
    timeline: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            v = api.get("/v1/services/live").json()
            timeline.append(
                {
                    "t_s": time.monotonic() - t0,
                    "desired": v["desired"],
                    "ready": sum(r["ready"] for r in v["replicas"]),
                    "replicas": len(v["replicas"]),
                    "arrivals_per_s": v["observed"].get("arrivals_per_s", 0),
                }
            )
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    results: list[dict[str, Any]] = []
    kill_at = reqs[len(reqs) // 2][0]
    killed: dict[str, Any] = {}

    def ask(i: int, prompt: int, output: int) -> None:
        """Even requests stream (TTFT and TPOT seen at the client), odd ones do not (judged
        as the router does: done by TTFT + (tokens - 1) x TPOT)."""
        stream = i % 2 == 0
        t = time.monotonic()
        first = None
        n = 0
        code = 200
        try:
            if stream:
                for chunk in client.completions.create(
                    model="live",
                    prompt="x" * prompt,
                    max_tokens=output,
                    temperature=0,
                    stream=True,
                ):
                    if chunk.choices and chunk.choices[0].text:
                        first = first or time.monotonic()
                        n += 1
            else:
                r = client.completions.create(
                    model="live", prompt="x" * prompt, max_tokens=output, temperature=0
                )
                n = r.usage.completion_tokens if r.usage else output
        except openai.APIStatusError as exc:
            code = exc.status_code
        except openai.APIConnectionError:
            code = -1
        except openai.APIError:  # an error event inside a stream that had begun
            code = 0
        end = time.monotonic()
        if stream:
            ttft = (first or end) - t
            tpot = (end - first) / max(1, n - 1) if first else float("inf")
            met = ttft <= args.ttft_slo_s and tpot <= args.tpot_slo_s
        else:  # what the router judges a whole answer by
            ttft, tpot = float("nan"), float("nan")
            met = end - t <= args.ttft_slo_s + max(0, n - 1) * args.tpot_slo_s
        results.append(
            {
                "i": i,
                "stream": stream,
                "code": code,
                "ttft_s": ttft,
                "tpot_s": tpot,
                "tokens": n,
                "met": met and code == 200,
                "latency_s": end - t,
            }
        )

    def killer(t0: float) -> None:
        while time.monotonic() - t0 < kill_at:
            time.sleep(0.2)
        v = api.get("/v1/services/live").json()
        ready = [r for r in v["replicas"] if r["ready"] and r["in_flight"]] or [
            r for r in v["replicas"] if r["ready"]
        ]
        if not ready:
            return
        job = api.get(f"/v1/jobs/{ready[0]['job']}").json()
        port_ = job["spec"]["env"]["SUANLI_REPLICA_ADDRESS"].split(":")[1]
        killed.update(
            job=ready[0]["job"], at_s=time.monotonic() - t0, in_flight=ready[0]["in_flight"]
        )
        subprocess.run(["pkill", "-9", "-f", "--", f"--port {port_} "], check=False)

    console.print(f"{len(reqs)} requests over {reqs[-1][0]:.0f} s; suanli up on {url}")
    try:
        watcher.start()
        t0 = time.monotonic()
        threading.Thread(target=killer, args=(t0,), daemon=True).start()
        with ThreadPoolExecutor(128) as pool:
            for i, (at, p, o) in enumerate(reqs):
                wait = t0 + at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                pool.submit(ask, i, p, o)
        load_end = time.monotonic() - t0
        # idle: the service scales to zero; then one request wakes it
        while api.get("/v1/services/live").json()["replicas"]:
            time.sleep(0.5)
        zero_after = time.monotonic() - t0 - load_end
        t_wake = time.monotonic()
        client.completions.create(model="live", prompt="wake up", max_tokens=8)
        wake_s = time.monotonic() - t_wake
        metrics = api.get("/v1/services/live/metrics").text
    finally:
        stop.set()
        api.delete("/v1/services/live")
        time.sleep(2)
        up.terminate()
        up.wait(timeout=30)
        subprocess.run(["pkill", "-9", "-f", "--", "--served-model-name live"], check=False)
    codes: dict[int, int] = {}
    for r in results:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    ok = [r for r in results if r["code"] == 200]
    met = sum(1 for r in results if r["met"])
    retries = [ln for ln in metrics.splitlines() if ln.startswith("suanli_service_retries_total")]
    resumed = [
        ln for ln in metrics.splitlines() if ln.startswith("suanli_service_resumed_streams_total")
    ]
    t = Table(title="live service: serve_lm replicas behind the router")
    t.add_column("figure")
    t.add_column("value", justify="right")
    rows = [
        ("requests (half streamed)", len(results)),
        ("status codes", ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))),
        (
            "5xx (or no answer) seen by clients",
            sum(v for k, v in codes.items() if k >= 500 or k < 0),
        ),
        ("streams cut by the kill (an error event, code 0)", codes.get(0, 0)),
        ("plain requests failed", sum(1 for r in results if not r["stream"] and r["code"] != 200)),
        (
            f"SLO attainment (TTFT <= {args.ttft_slo_s:.1f} s, TPOT <= {args.tpot_slo_s:.2f} s)",
            f"{met / len(results):.1%}",
        ),
        ("TTFT p50 / p99, streams (s)", pcts([r["ttft_s"] for r in ok if r["stream"]], 1.0, 2)),
        (
            "latency p50 / p99, plain (s)",
            pcts([r["latency_s"] for r in ok if not r["stream"]], 1.0, 2),
        ),
        (
            "TPOT p50 / p99, streams (ms)",
            pcts([r["tpot_s"] for r in ok if r["stream"] and r["tokens"] > 1], 1e3, 0),
        ),
        (
            "replica killed",
            f"job {killed.get('job')} at {killed.get('at_s', 0):.0f} s, "
            f"{killed.get('in_flight')} in flight",
        ),
        ("router retries", retries[0].split()[-1] if retries else "0"),
        ("streams resumed on another replica", resumed[0].split()[-1] if resumed else "0"),
        ("most replicas ready", max(p["ready"] for p in timeline)),
        ("idle to zero replicas (s)", f"{zero_after:.1f}"),
        ("from zero to an answer (s)", f"{wake_s:.1f}"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    OUT.mkdir(exist_ok=True)
    (OUT / "serve_live.json").write_text(
        json.dumps(
            {"rows": [[k, str(v)] for k, v in rows], "timeline": timeline, "killed": killed},
            indent=1,
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.2))
    ts = [p["t_s"] for p in timeline]
    ax.step(ts, [p["ready"] for p in timeline], where="post", label="replicas ready")
    ax.step(ts, [p["desired"] for p in timeline], where="post", ls="--", label="wanted")
    ax2 = ax.twinx()
    ax2.plot(ts, [p["arrivals_per_s"] for p in timeline], color="0.6", lw=0.8, label="arrivals/s")
    if killed:
        ax.axvline(killed["at_s"], color="red", lw=0.8, label="replica killed")
    ax.set_xlabel("seconds")
    ax.set_ylabel("replicas")
    ax2.set_ylabel("arrivals/s")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "serve_live.png", dpi=110)
    console.print(f"plot: {OUT / 'serve_live.png'}")
    os.environ.pop("SUANLI_TOKEN", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
