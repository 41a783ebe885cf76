"""Where the collector's records go: one interface (`Storage`), one module per backend.

`open_storage(url)` picks the backend from the URL: `sqlite:///path` (default, embedded, WAL) or
`postgresql://...` (psycopg 3; a TimescaleDB hypertable for readings when the extension is installed).
The collector writes through `Storage.write(batch)`, one transaction per batch, and acknowledges the batch's MQTT
messages only after that call returned, which is what makes a kill -9 lose nothing.
"""

from __future__ import annotations

from ..errors import EdgefleetError
from .base import Batch, DeviceRow, Storage, WriteResult

__all__ = ["Batch", "DeviceRow", "Storage", "WriteResult", "open_storage"]


def open_storage(url: str, *, durability: str = "normal") -> Storage:
    """Open (and migrate) the database named by `url`."""
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStorage

        return SqliteStorage.open(url, durability=durability)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStorage

        return PostgresStorage.open(url)
    raise EdgefleetError(
        f"unsupported database URL {url!r}",
        hint="use sqlite:///path/to/fleet.db or postgresql://user:pass@host:port/dbname",
    )
