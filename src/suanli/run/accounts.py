"""Who a job runs as: an unprivileged OS account per owner, never the service's user.

Jobs are untrusted code, and tenants are adversaries of each other. The service
keeps its database, tokens and every tenant's logs in files only its own user
can read (mode 0600/0700, from creation: the service runs under umask 077), so
a job must run as another user for those modes to mean anything. Where the
service runs as root (as on these machines and in CI) it creates one system
account per owner on first use (``sl-`` and a hash of the owner's name: owner
names may hold characters a login name may not), with its own group, no login
shell and no home of its own, and a shared supplementary group, ``suanli-jobs``.

A job still has to *reach* the interpreter and libraries it runs (a Python under
``/root/.pyenv`` sits behind a 0700 ``/root``) and its own working directory
under the data directory. The service grants the ``suanli-jobs`` group search
permission — ``x``, never read — on exactly the directories on those paths that
others cannot search, with a POSIX ACL entry (falling back to the mode's ``o+x``
where the file system keeps no ACLs), and says which. Search permission lets a
job open a path it already knows and whose file lets it; the service's own files
do not.

Where the service does not run as root it cannot switch users: jobs then run as
the service's user, which ``suanli up --single-user`` must acknowledge (and the
API refuses tokens for other owners).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from suanli.errors import SuanliError

JOBS_GROUP = "suanli-jobs"
PREFIX = "sl-"
ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_lock = threading.Lock()


class AccountError(SuanliError):
    """An account for a job could not be made or found."""


@dataclass(frozen=True)
class Account:
    """The OS identity a job's processes run under."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary: the shared jobs group


def account_name(owner: str) -> str:
    """``sl-`` + 12 hex digits of the owner's SHA-256: a valid login name for any owner."""
    return PREFIX + hashlib.sha256(owner.encode()).hexdigest()[:12]


def can_switch_users() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _useradd(*args: str) -> None:
    out = subprocess.run(
        ["useradd", *args], capture_output=True, text=True, check=False, timeout=60
    )
    if out.returncode not in (0, 9):  # 9: exists (a concurrent service made it)
        raise AccountError(f"useradd {' '.join(args)}: {out.stderr.strip() or out.returncode}")


def jobs_group() -> int:
    """The shared group of job accounts (made on first use)."""
    with contextlib.suppress(KeyError):
        return grp.getgrnam(JOBS_GROUP).gr_gid
    out = subprocess.run(
        ["groupadd", "--system", JOBS_GROUP], capture_output=True, text=True, timeout=60
    )
    if out.returncode not in (0, 9):
        raise AccountError(f"groupadd {JOBS_GROUP}: {out.stderr.strip() or out.returncode}")
    return grp.getgrnam(JOBS_GROUP).gr_gid


def ensure_account(owner: str) -> Account:
    """The owner's account, created on first use (root only)."""
    name = account_name(owner)
    with _lock:
        group = jobs_group()
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            _useradd(
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--groups",
                JOBS_GROUP,
                "--comment",
                f"suanli jobs of {owner[:64]}",
                name,
            )
            pw = pwd.getpwnam(name)
    if pw.pw_uid == 0:
        raise AccountError(f"account {name} is root: refusing to run jobs as it")
    return Account(name, pw.pw_uid, pw.pw_gid, (group,))


# --- search permission for the jobs group ------------------------------------------------
def _acl_entries(raw: bytes) -> list[tuple[int, int, int]]:
    (version,) = struct.unpack_from("<I", raw)
    if version != _ACL_VERSION:
        raise OSError(f"unknown ACL version {version}")
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8)]


def _acl_bytes(entries: Iterable[tuple[int, int, int]]) -> bytes:
    return struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", *e) for e in sorted(entries, key=lambda e: (e[0], e[2]))
    )


def grant_search(path: Path, gid: int) -> str | None:
    """Let group ``gid`` search (``x``, not read) directory ``path`` if it cannot yet;
    returns what was changed, or None."""
    st = path.stat()
    if st.st_mode & stat.S_IXOTH or (st.st_gid == gid and st.st_mode & stat.S_IXGRP):
        return None
    try:
        try:
            entries = _acl_entries(os.getxattr(path, ACL_XATTR))
        except OSError:  # no ACL yet: the mode is the whole ACL
            mode = st.st_mode
            entries = [
                (_USER_OBJ, (mode >> 6) & 7, _UNDEFINED_ID),
                (_GROUP_OBJ, (mode >> 3) & 7, _UNDEFINED_ID),
                (_OTHER, mode & 7, _UNDEFINED_ID),
            ]
        mine = [e for e in entries if e[0] == _GROUP and e[2] == gid]
        mask = [e[1] for e in entries if e[0] == _MASK]
        if mine and mine[0][1] & 1 and (not mask or mask[0] & 1):
            return None  # (a chmod since, as pytest does to its temp root, resets the mask)
        entries = [e for e in entries if not (e[0] == _GROUP and e[2] == gid) and e[0] != _MASK]
        entries.append((_GROUP, 1 | (mine[0][1] if mine else 0), gid))
        union = 0
        for kind, perm, _ in entries:
            if kind in (_GROUP_OBJ, _GROUP):
                union |= perm
        entries.append((_MASK, union, _UNDEFINED_ID))
        os.setxattr(path, ACL_XATTR, _acl_bytes(entries))
        return f"{path}: ACL group:{JOBS_GROUP}:--x"
    except OSError:
        os.chmod(path, st.st_mode | stat.S_IXOTH)  # no ACLs here: search for everyone
        return f"{path}: o+x (this file system keeps no ACLs)"


def runtime_paths() -> list[Path]:
    """What a job needs to reach: this Python (the real binary and its standard library),
    its environment's packages, and suanli itself."""
    import suanli

    paths = [Path(os.path.realpath(sys.executable)), Path(sys.base_prefix), Path(sys.prefix)]
    paths += [Path(p) for p in sys.path if p and Path(p).is_dir()]
    paths.append(Path(suanli.__file__).resolve().parent)
    return paths


def open_paths(paths: Iterable[Path], gid: int) -> list[str]:
    """Grant search on every directory from / down to each path (the path too, if a
    directory); returns the changes made."""
    done: list[str] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(os.path.realpath(p))
        chain = [*reversed(p.parents), *([p] if p.is_dir() else [])]
        for d in chain:
            if d in seen:
                continue
            seen.add(d)
            with contextlib.suppress(FileNotFoundError):
                change = grant_search(d, gid)
                if change:
                    done.append(change)
    return done
