"""Where the collector's records go: one interface (`Storage`), one module per backend.

`open_storage(url)` picks the backend from the URL: `sqlite:///path` (default, embedded, WAL) or
`postgresql://...` (psycopg 3; a TimescaleDB hypertable for readings when the extension is installed).
The collector writes through `Storage.write(batch)`, one transaction per batch, and acknowledges the batch's MQTT
messages only after that call returned, which is what makes a kill -9 lose nothing.
"""

from __future__ import annotations

from ...errors import EdgefleetError
from ...redact import redact_url
from .base import Batch, DeviceRow, Storage, WriteResult

__all__ = ["Batch", "DeviceRow", "Storage", "WriteResult", "open_storage"]


def open_storage(url: str, *, durability: str = "normal", create: bool = True, busy_timeout_s: float = 30.0) -> Storage:
    """Open (and migrate) the database named by `url`. A reader given a
    mistyped SQLite path gets an error instead of a new, empty database that looks like an empty fleet (readers
    such as `fleet status` and `export` pass create=False)."""
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStorage

        return SqliteStorage.open(url, durability=durability, create=create, busy_timeout_s=busy_timeout_s)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStorage

        return PostgresStorage.open(url)
    raise EdgefleetError(
        f"unsupported database URL {redact_url(url)!r}",
        hint="use sqlite:///path/to/fleet.db or postgresql://user:pass@host:port/dbname",
    )
