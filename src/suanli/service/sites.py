"""The sites controller: attached engines follow the stored sites, and a site that goes
away gives its jobs back to the queue.

Desired state is the ``sites`` table: a row with an engine (``ray`` or
``kubernetes``) and an address is a cluster suanli runs jobs on. Each tick this controller

1. attaches every such site to the loop's `SiteExecutors` (connecting in a
   worker thread, so an address that hangs costs the loop nothing), and
   detaches sites whose rows are gone or changed;
2. writes what it sees of each site into its row (last seen, away since, why),
   for ``suanli sites`` and the console;
3. requeues the running jobs of a site away longer than its ``grace_s``: they
   go back to the queue without using a retry and start on another site that
   fits (from their last checkpoint where the job keeps one);
4. when a site answers again (or first answers after the service started),
   stops what it still runs for this service that no running job's member is:
   the jobs requeued in step 3 never run twice.

What this cannot prevent: while a site is cut off, a job requeued from it may
run both there and elsewhere, until the site answers again. That is the price
of requeueing at all during a partition (Kubernetes evicts pods from an
unreachable node on the same terms); ``grace_s`` sets how long to wait first.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from suanli.api import site_address
from suanli.errors import SuanliError
from suanli.run.executor import Executor, Handle
from suanli.run.sites import SiteExecutors
from suanli.service.logs import transition
from suanli.store.db import Store
from suanli.store.models import JobRow, SiteRow, TokenRow

log = logging.getLogger("suanli.sites")
CONNECT_TIMEOUT_S = 10.0
ENGINES = ("ray", "kubernetes")

Factory = Callable[[SiteRow], Executor]


class SiteController:
    name = "sites"

    def __init__(
        self,
        store: Store,
        sites: SiteExecutors,
        make: Factory,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.store, self.sites, self.make = store, sites, make
        self.connect_timeout_s = connect_timeout_s
        self._wanted: dict[str, tuple[str, ...]] = {}  # attached: what `_key` says
        self._connecting: dict[str, tuple[tuple[str, ...], cf.Future[Executor]]] = {}
        self._unswept: set[str] = set()  # attached sites whose strays are not yet stopped
        self._pool = cf.ThreadPoolExecutor(2, thread_name_prefix="site-connect")

    def reconcile(self, now: float) -> None:
        with self.store.tx() as s:
            rows = {
                r.name: r for r in s.scalars(select(SiteRow).where(SiteRow.engine.in_(ENGINES)))
            }
            for name in list(self._wanted):
                if name not in rows or _key(rows[name]) != self._wanted[name]:
                    self.sites.detach(name)
                    del self._wanted[name]
                    self._unswept.discard(name)
                    log.info("site %s detached", name, extra={"site": name})
            # sites attached by an admin are trusted; a provider's address is checked
            # again, and pinned, where the service connects (DNS rebinding)
            admins = set(s.scalars(select(TokenRow.owner).where(TokenRow.role == "admin")))
            for name, row in rows.items():
                if name in self.sites.own:
                    row.status = (
                        f"cannot attach: {name} is the name of the service's own engine; "
                        "attach the cluster under another name"
                    )
                    continue
                if name not in self._wanted:
                    self._connect(row, trusted=row.owner in admins)
                    continue
                link = self.sites.links[name]
                if link.returned:
                    link.returned = False
                    self._unswept.add(name)
                row.seen_at = link.seen_at or row.seen_at
                row.away_since = link.away_since
                if link.away:
                    row.status = f"away: {link.error}"[:255]
                elif link.seen_at:  # ready once its nodes were listed, not on attaching
                    row.status = "ready"
                if link.away_since is not None and now - link.away_since > row.grace_s:
                    self._requeue_from(s, row, now - link.away_since, now)
        for name in sorted(self._unswept):
            ready = self.sites.links.get(name)
            if ready is not None and not ready.away and ready.seen_at:
                self._sweep(name)

    def _connect(self, row: SiteRow, trusted: bool) -> None:
        """Attach the site once its engine answers; the connection is made in a thread
        (a provider's address first re-checked and pinned to what it resolves to)."""
        key = _key(row)
        pending = self._connecting.get(row.name)
        if pending is None or pending[0] != key:
            detached = SiteRow(
                name=row.name,
                owner=row.owner,
                region=row.region,
                engine=row.engine,
                address=row.address,
                python=row.python,
                credential=row.credential,
                credential_env=row.credential_env,
                namespace=row.namespace,
                image=row.image,
                ca_cert=row.ca_cert,
            )
            self._connecting[row.name] = (key, self._pool.submit(self._make, detached, trusted))
            row.status = "connecting"
            return
        future = pending[1]
        if not future.done():
            return
        del self._connecting[row.name]
        try:
            executor = future.result()
        except Exception as exc:  # unreachable or refused: said on the site, tried again
            row.status = f"cannot attach: {exc}"[:255]
            log.warning("site %s: cannot attach: %s", row.name, exc, extra={"site": row.name})
            return
        self.sites.attach(row.name, executor, row.region)
        self._wanted[row.name] = key
        self._unswept.add(row.name)
        row.status = "attached"
        log.info("site %s attached (%s at %s)", row.name, row.engine, row.address)

    def _make(self, row: SiteRow, trusted: bool) -> Executor:
        """The engine's executor, in the connect thread; a provider's address is resolved
        once, checked, and the connection made to that checked address."""
        if not trusted and row.credential_env:
            # stored before only admins could name the service's environment: another
            # site's token must not go to a provider's address
            raise SuanliError(
                "token_env names the service's environment, which only an admin may; "
                "attach again with the token itself (--token-file)"
            )
        if not trusted and row.address:
            row.address = site_address.pin(row.address)  # AddressRefused: said on the site
        return self.make(row)

    def _requeue_from(self, s: DbSession, site: SiteRow, away_s: float, now: float) -> None:
        """Every running job with a member on ``site`` goes back to the queue (a cancel
        asked meanwhile ends it cancelled instead). Not the job's failure: no retry is
        used."""
        for row in s.scalars(select(JobRow).where(JobRow.state == "running")):
            members = [Handle.from_dict(m) for m in row.members or []]
            if not any(h.site == site.name for h in members):
                continue
            new = "cancelled" if row.cancel_requested else "preempted"
            why = f"site {site.name} unreachable for {away_s:.0f} s (grace {site.grace_s:g} s)" + (
                "" if new == "cancelled" else "; requeued, to resume elsewhere"
            )
            if new == "preempted":
                row.attempts = max(0, row.attempts - 1)
            row.state, row.updated_at = new, now
            row.stop_reason = row.stop_deadline = None
            row.preempt_reason = row.preempt_grace_s = None
            self.store.event(s, row.id, new, why)
            queue = str((row.spec or {}).get("queue", "default"))
            transition(log, row.id, queue, "running", new, why)

    def _sweep(self, site: str) -> None:
        """Stop what ``site`` runs that no running job's member is (see the module doc)."""
        with self.store.tx() as s:
            known = {
                h.ref
                for row in s.scalars(select(JobRow).where(JobRow.state == "running"))
                for h in (Handle.from_dict(m) for m in row.members or [])
                if h.ref
            }
        for ref in self.sites.strays(site, known):
            log.warning(
                "site %s still ran %s, no longer placed there: stopping it",
                site,
                ref,
                extra={"site": site},
            )
            self.sites.stop_ref(site, ref)
        self._unswept.discard(site)


def _key(row: SiteRow) -> tuple[str, ...]:
    """What the connection depends on: a change of any (a new token too) reconnects."""
    cred = (row.credential or "", row.credential_env or "")
    k8s = (row.namespace or "", row.image or "", row.ca_cert or "")
    return (row.engine or "", row.address or "", row.python or "", *cred, *k8s)
