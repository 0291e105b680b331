"""Several sites behind the one executor interface the scheduling loop drives.

A site is an engine that already runs somewhere — this machine, a Ray cluster
in another region — not a node agent of ours. `SiteExecutors` routes each call
to the site a node or a member belongs to, and keeps one site's trouble its
own:

* every call to a remote site runs in that site's own worker thread and is
  waited for at most ``timeout_s``: a dashboard that hangs (a partition, a
  stopped process) costs the loop one timeout, after which the site is *away*
  and its calls are answered here without asking it (its nodes are left out,
  its members' state is unknown, starts there are refused);
* the node list answers with the sites that answered: the others' nodes drop
  out of scheduling, and the site controller (`suanli.service.sites`) requeues
  their jobs once the site has been away past its grace;
* a site that answers again is *back*: `returned` tells the controller, which
  stops whatever that site still runs that the store no longer places there,
  so no job ever runs twice.

The local machine is a site too, called directly: it cannot be away from the
process running on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from suanli.run.executor import (
    Executor,
    ExecutorUnavailable,
    Handle,
    Launch,
    NodeInfo,
    node_problem,
)

log = logging.getLogger("suanli.sites")
#: every node carries the name of its site, and its site's region, under these labels
SITE_LABEL = "suanli.io/site"
REGION_LABEL = "topology.kubernetes.io/region"
CALL_TIMEOUT_S = 10.0  # one call to a remote site; past it the site is away
T = TypeVar("T")


class SiteAway(ExecutorUnavailable):
    """The site did not answer (or has not answered since it last failed)."""


@dataclass
class SiteLink:
    """One attached site: its engine and what this process last saw of it."""

    name: str
    executor: Executor
    region: str = ""
    remote: bool = True  # called through its worker thread with a timeout
    away_since: float | None = None  # wall time of the first failure; None: it answers
    error: str = ""
    seen_at: float = 0.0  # wall time it last answered
    returned: bool = False  # came back since the controller last looked
    worker: cf.ThreadPoolExecutor | None = None
    stuck: cf.Future[Any] | None = None  # a call that timed out and has not returned
    failures: int = 0  # failed calls in the outage under way
    refused: set[tuple[str, str]] = field(default_factory=set)  # nodes left out, and why

    def __post_init__(self) -> None:
        if self.remote:
            self.worker = cf.ThreadPoolExecutor(1, thread_name_prefix=f"site-{self.name}")

    @property
    def away(self) -> bool:
        return self.away_since is not None


class SiteExecutors:
    """The executors of every attached site, as one `Executor`."""

    name = "sites"

    def __init__(
        self,
        timeout_s: float = CALL_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.timeout_s = timeout_s
        self.clock = clock
        self.links: dict[str, SiteLink] = {}
        self._site_of: dict[str, str] = {}  # node name -> site name
        #: the service's own engine(s) (``suanli up``'s machine or Ray cluster): the
        #: operator's, never a provider's, whatever a stored site of that name says
        self.own: set[str] = set()

    # --- attaching ---------------------------------------------------------------------
    def attach(
        self,
        name: str,
        executor: Executor,
        region: str = "",
        remote: bool = True,
        own: bool = False,
    ) -> None:
        if own:
            self.own.add(name)
        self.detach(name)
        self.links[name] = SiteLink(name, executor, region, remote)

    def detach(self, name: str) -> None:
        link = self.links.pop(name, None)
        if link is not None and link.worker is not None:
            link.worker.shutdown(wait=False, cancel_futures=True)
        self._site_of = {n: s for n, s in self._site_of.items() if s != name}

    def site_of(self, node: str) -> str | None:
        return self._site_of.get(node)

    def kind_of(self, node: str) -> str:
        """The engine running ``node`` (``local``, ``ray``), for the node's record."""
        link = self.links.get(self._site_of.get(node, ""))
        return link.executor.name if link else self.name

    def gang_native_at(self, node: str) -> bool:
        link = self.links.get(self._site_of.get(node, ""))
        return bool(link and getattr(link.executor, "gang_native", False))

    # --- calling a site ----------------------------------------------------------------
    def _call(self, link: SiteLink, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the site, within the timeout; a failure to reach it marks it
        away (any other error is the caller's, and says nothing about the site)."""
        if not link.remote:
            return fn(*args)
        if link.stuck is not None:
            if not link.stuck.done():
                raise SiteAway(f"site {link.name}: an earlier call has not returned")
            link.stuck = None
        assert link.worker is not None
        future = link.worker.submit(fn, *args)
        try:
            result = future.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            link.stuck = future
            self._away(link, f"no answer in {self.timeout_s:g} s")
            raise SiteAway(f"site {link.name} did not answer in {self.timeout_s:g} s") from None
        except ExecutorUnavailable as exc:
            self._away(link, str(exc))
            raise SiteAway(f"site {link.name}: {exc}") from exc
        return result

    def _away(self, link: SiteLink, why: str) -> None:
        """One line when an outage begins, one when it ends: not one per failed call."""
        if link.away_since is None:
            link.away_since, link.failures = self.clock(), 0
            log.warning(
                "site %s away: %s", link.name, why, extra={"site": link.name, "reason": why}
            )
        link.error, link.failures = why, link.failures + 1

    def _answered(self, link: SiteLink) -> None:
        if link.away_since is not None:
            link.returned = True
            down_s = self.clock() - link.away_since
            log.info(
                "site %s back after %.0f s, %d failed calls",
                link.name,
                down_s,
                link.failures,
                extra={"site": link.name, "down_s": round(down_s, 1)},
            )
        link.away_since, link.error, link.seen_at = None, "", self.clock()

    def _link(self, h: Handle | Launch) -> SiteLink:
        """The site of a member: its own record, else its node's site, else (a member
        stored before sites, whose node is not listed yet at start-up) the first site
        attached — the one ``suanli up`` started with, the only one there was then."""
        name = getattr(h, "site", "") or self._site_of.get(h.node, "") or next(iter(self.links), "")
        link = self.links.get(name)
        if link is None:
            raise SiteAway(f"node {h.node} is in no attached site")
        return link

    # --- the Executor interface --------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        """Every answering site's nodes, each labelled with its site and region. A site
        that fails is left out (and marked away), never the whole list."""
        out: list[NodeInfo] = []
        claimed: dict[str, str] = {}  # node name -> the site that listed it first
        for link in list(self.links.values()):
            try:
                found = self._call(link, link.executor.nodes)
            except Exception as exc:  # a Ray client error is not always ExecutorUnavailable
                if not isinstance(exc, SiteAway):
                    self._away(link, f"{type(exc).__name__}: {exc}")
                continue
            self._answered(link)
            for n in found:
                # a remote site's nodes are a stranger's report: one out of bounds, or
                # named as another site's node (whose work would go to this site), is
                # left out, never the site's other nodes
                why = node_problem(n) if link.remote else None
                if why is None and claimed.setdefault(n.name, link.name) != link.name:
                    why = f"site {claimed[n.name]} has a node of that name"
                if why is not None:
                    self._refused(link, n.name, why)
                    continue
                labels = {**n.labels, SITE_LABEL: link.name}
                if link.region:
                    labels[REGION_LABEL] = link.region
                self._site_of[n.name] = link.name
                out.append(replace(n, labels=labels))
        return out

    def _refused(self, link: SiteLink, node: str, why: str) -> None:
        """One warning per node and reason, not one per listing."""
        key = (node[:80], why)
        if key not in link.refused:
            link.refused.add(key)
            log.warning(
                "site %s: node %s left out: %s",
                link.name,
                node[:80],
                why,
                extra={"site": link.name},
            )

    def start(self, launch: Launch) -> Handle:
        link = self._link(launch)
        if link.away:
            raise SiteAway(f"site {link.name} is away since its last failure: {link.error}")
        handle = self._call(link, link.executor.start, launch)
        return replace(handle, site=link.name)

    def poll(self, h: Handle) -> int | None:
        """The member's exit code; None (still running, as far as anyone knows) while its
        site is away: the site controller decides when that has lasted too long."""
        try:
            link = self._link(h)
            if link.away:
                return None
            return self._call(link, link.executor.poll, h)
        except SiteAway:
            return None

    def terminate(self, h: Handle) -> None:
        self._each_site(h, "terminate")

    def kill(self, h: Handle) -> None:
        self._each_site(h, "kill")

    def _each_site(self, h: Handle, what: str) -> None:
        """A stop on an away site cannot be sent: the site controller stops what the site
        still runs when it answers again (`strays`)."""
        try:
            link = self._link(h)
            if not link.away:
                self._call(link, getattr(link.executor, what), h)
        except SiteAway:
            pass

    def is_alive(self, h: Handle) -> bool:
        """Unknown on an away site counts as alive: its job is re-attached, and requeued by
        the site controller if the site stays away past its grace."""
        try:
            link = self._link(h)
            return True if link.away else self._call(link, link.executor.is_alive, h)
        except SiteAway:
            return True

    def logs(self, h: Handle) -> str:
        try:
            link = self._link(h)
            if not link.away:
                return self._call(link, link.executor.logs, h)
        except SiteAway:
            pass
        out = Path(h.stdout)  # what was copied while the site answered
        return out.read_text(errors="replace") if out.exists() else ""

    # --- what only some engines have -----------------------------------------------------
    def _local(self, what: str) -> Any | None:
        """This machine's engine, where it has ``what`` (cgroups, exit files, isolation)."""
        return next(
            (
                link.executor
                for link in self.links.values()
                if not link.remote and hasattr(link.executor, what)
            ),
            None,
        )

    def orphans(self, known: set[str]) -> list[str]:
        """Processes of this machine's executor that no stored job knows (its cgroups)."""
        local = self._local("orphans")
        return list(local.orphans(known)) if local is not None else []

    def stop_orphan(self, key: str) -> None:
        local = self._local("stop_orphan")
        if local is not None:
            local.stop_orphan(key)

    def exit_codes(self, job_id: str, world: int, since: float) -> list[int | None]:
        local = self._local("exit_codes")
        return list(local.exit_codes(job_id, world, since)) if local is not None else [None]

    def strays(self, site: str, known: set[str]) -> list[str]:
        """What ``site`` runs for this service that no running job's member is (a job
        requeued while the site was away); empty where the engine cannot tell."""
        link = self.links.get(site)
        find = getattr(link.executor, "strays", None) if link else None
        if link is None or find is None:
            return []
        found: list[str] = self._call(link, find, known)
        return found

    def stop_ref(self, site: str, ref: str) -> None:
        link = self.links.get(site)
        stop = getattr(link.executor, "stop_ref", None) if link else None
        if link is not None and stop is not None:
            self._call(link, stop, ref)

    def isolation(self) -> dict[str, str]:
        local = self._local("isolation")
        return dict(local.isolation()) if local is not None else {}

    @property
    def accounts(self) -> bool:
        return any(getattr(link.executor, "accounts", False) for link in self.links.values())
