"""State in a database (SQLite by default, PostgreSQL by URL): nothing lives only in memory."""

from suanli.store.db import Store
from suanli.store.models import Base, JobRow, TokenRow

__all__ = ["Base", "JobRow", "Store", "TokenRow"]
