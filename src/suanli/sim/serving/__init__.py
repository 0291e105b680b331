"""Serving simulation: LLM replicas as continuous-batching engines, behind a router,
scaled by `suanli.autoscale`'s policies, driven by a real request trace.

* `steps` — the time of one engine step from perf's roofline (decode rows, prefill
  chunk, weights read once per step).
* `replica` — a vLLM-like scheduler: a token budget per step, KV blocks, prefill
  chunks mixed with decodes, recompute-preemption when the cache runs out.
* `fleet` — the router (least outstanding requests, a bounded buffer while no replica
  is ready), replica start and drain, and the autoscaler's control loop.
"""
