"""A double-entry ledger in the database: every transfer two entries, nothing overwritten.

Balances are sums of entries, never stored, so they cannot drift from the
history; all accounts together always sum to zero (money enters through
``external:deposits``, which goes negative by what the world paid in). A
transfer is keyed by ``txn``, its idempotency key: booking it again is a no-op,
and the unique (txn, leg) index makes that hold across crashes and races.

An account may go below zero down to its credit limit. What a lease may still
cost (its hold, less what it was charged) is set aside at the match, so charges
as time passes never take an account past its limit.
"""

from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from suanli.errors import SuanliError
from suanli.market.money import usd
from suanli.store.models import AccountRow, LeaseRow, LedgerEntryRow

PLATFORM = "platform:fees"  # the platform's share of every charge
DEPOSITS = "external:deposits"  # the outside world: deposits come from here
#: accounts that are not tenants: no credit limit applies to them
HOUSE = (PLATFORM, DEPOSITS)


class CreditError(SuanliError, ValueError):
    """A purchase the buyer's balance and credit limit cannot cover."""


def ensure_account(s: Session, name: str, now: float | None = None) -> AccountRow:
    row = s.get(AccountRow, name)
    if row is None:
        row = AccountRow(name=name, credit_limit_micro=0, created_at=now or time.time())
        s.add(row)
        s.flush()
    return row


def transfer(
    s: Session,
    txn: str,
    debit: str,
    credit: str,
    amount_micro: int,
    kind: str,
    ref: str,
    at: float,
    memo: str = "",
) -> bool:
    """Move ``amount_micro`` from ``debit`` to ``credit``, once per ``txn``.

    Returns False (and books nothing) when ``txn`` was booked before or the amount
    is zero. The caller's transaction makes the two legs one.
    """
    if amount_micro < 0:
        raise ValueError(f"a transfer moves a positive amount, not {amount_micro}")
    if amount_micro == 0:
        return False
    if s.scalar(select(LedgerEntryRow.id).where(LedgerEntryRow.txn == txn).limit(1)):
        return False
    for leg, account, amount in ((0, debit, -amount_micro), (1, credit, amount_micro)):
        ensure_account(s, account, at)
        s.add(
            LedgerEntryRow(
                txn=txn,
                leg=leg,
                account=account,
                amount_micro=amount,
                kind=kind,
                ref=ref,
                memo=memo[:256],
                at=at,
            )
        )
    s.flush()
    return True


def balances(s: Session, accounts: list[str] | None = None) -> dict[str, int]:
    """Each account's balance: the sum of its entries (accounts with none: 0)."""
    q = select(LedgerEntryRow.account, func.sum(LedgerEntryRow.amount_micro)).group_by(
        LedgerEntryRow.account
    )
    if accounts is not None:
        q = q.where(LedgerEntryRow.account.in_(accounts))
    out = {a: 0 for a in accounts or []}
    if accounts is None:
        out.update({r.name: 0 for r in s.scalars(select(AccountRow))})
    out.update({a: int(total or 0) for a, total in s.execute(q)})
    return out


def balance(s: Session, account: str) -> int:
    return balances(s, [account])[account]


def charged(s: Session, lease_ids: list[int]) -> dict[int, int]:
    """What each lease has cost its buyer so far."""
    refs = {f"lease:{i}": i for i in lease_ids}
    out = dict.fromkeys(lease_ids, 0)
    if not refs:
        return out
    q = (
        select(LedgerEntryRow.ref, func.sum(LedgerEntryRow.amount_micro))
        .where(
            LedgerEntryRow.ref.in_(list(refs)),
            LedgerEntryRow.kind == "charge",
            LedgerEntryRow.leg == 1,
        )
        .group_by(LedgerEntryRow.ref)
    )
    for ref, total in s.execute(q):
        out[refs[ref]] = int(total or 0)
    return out


def held(s: Session, account: str) -> int:
    """What the account's unfinished leases may still cost: set aside from its credit."""
    leases = list(
        s.scalars(select(LeaseRow).where(LeaseRow.buyer == account, LeaseRow.state != "ended"))
    )
    done = charged(s, [r.id for r in leases])
    return sum(max(0, r.hold_micro - done[r.id]) for r in leases)


def available(s: Session, account: str) -> int:
    """What the account can still commit: balance + credit limit - holds."""
    limit = ensure_account(s, account).credit_limit_micro
    return balance(s, account) + limit - held(s, account)


def require(s: Session, account: str, amount_micro: int, what: str) -> None:
    """Refuse a purchase of up to ``amount_micro`` the account cannot cover."""
    have = available(s, account)
    if amount_micro > have:
        raise CreditError(
            f"{what} may cost up to {usd(amount_micro)} USD but {account} has "
            f"{usd(have)} USD available (balance + credit limit - what its leases may "
            "still cost); ask an admin for a deposit or a higher credit limit "
            "(`suanli ledger deposit`, `suanli ledger credit`)"
        )
