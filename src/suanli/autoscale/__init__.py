"""Service replica control: pure decisions from observed load to desired replicas.

Every policy here is a function of what was observed (and of the small state the
caller keeps between calls), never of a clock or a socket, so the same code drives
the live services controller and the serving simulator, and is tested as a table.

* `hpa` — Kubernetes' Horizontal Pod Autoscaler semantics.
* `kpa` — Knative's concurrency autoscaler: stable and panic windows, scale to zero.
* `predictive` — forecast arrivals (Holt's damped trend) and scale ahead of the
  replica start time, with the reactive HPA as a floor.
* `coldstart` — how long a replica takes to start, from the catalog.
* `mix` — the cheapest mix of chip types (spot and on-demand) for a request-size
  distribution under a TPOT SLO: Mélange's ILP, solved with HiGHS.
"""

from suanli.autoscale.signals import Observation, Targets

__all__ = ["Observation", "Targets"]
