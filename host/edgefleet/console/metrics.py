"""The collector's metrics in the Prometheus text format (prometheus_client), on an HTTP port of their own.

Why a hook instead of counters inside the collector: the write path stays as it is. At scrape time a custom
collector reads the Collector's existing `stats` object and queue; two wrappers around the Collector's own
hooks record what stats do not hold: the newest message per device (from each batch's `seen`, once per batch,
not per message) and the batch latency (oldest message received -> batch committed)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..errors import EdgefleetError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CollectorMetrics:
    """A prometheus_client custom collector over a running `edgefleet.collect.collector.Collector`."""

    def __init__(self, collector: Any) -> None:
        from prometheus_client import Histogram
        from prometheus_client.registry import CollectorRegistry

        self.c = collector
        self.last_seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "edgefleet_collector_batch_latency_seconds",
            "Oldest message of a batch received -> the batch committed to the database",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)
        self._hook()

    def _hook(self) -> None:
        c = self.c
        build, committed = c.build_batch, c.on_committed

        def build_batch(items: list) -> Any:
            result = build(items)
            batch = result[0] if isinstance(result, tuple) else result  # (Batch, StoredAcks) since protocol v2
            if batch.seen:
                with self._lock:
                    self.last_seen.update(batch.seen)
            return result

        def on_committed(items: list, committed_ms: int) -> None:
            if items:
                oldest = min(it[2] for it in items)
                self.latency.observe(max(0.0, (committed_ms - oldest) / 1000.0))
            committed(items, committed_ms)

        c.build_batch = build_batch
        c.on_committed = on_committed

    def describe(self) -> list:
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.c.stats
        for name, doc, value in (
            ("messages", "MQTT messages taken from the broker", s.messages),
            ("stored", "records stored (new rows)", s.stored),
            ("duplicates", "redelivered records already stored", s.duplicates),
            ("dead_letters", "messages refused and kept in dead_letter", s.dead),
            ("batches", "database transactions committed", s.batches),
            (
                "database_outages",
                "database outages the collector retried through (writes retried with backoff)",
                getattr(s, "outages", 0),
            ),
            (
                "storage_refused",
                "messages the database refused for their data (dead-lettered)",
                getattr(s, "storage_refused", 0),
            ),
            ("stored_acks", "end-to-end `stored` acks published to nodes", getattr(s, "stored_acks", 0)),
        ):
            yield CounterMetricFamily(f"edgefleet_collector_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "edgefleet_collector_queue_depth", "messages received, not yet written", value=self.c.queue.qsize()
        )
        yield GaugeMetricFamily(
            "edgefleet_collector_connected", "1 while connected to the broker", value=int(self.c.connected)
        )
        age = GaugeMetricFamily(
            "edgefleet_device_last_seen_age_seconds", "seconds since the newest message of a device", labels=["device"]
        )
        now = time.time() * 1000
        with self._lock:
            seen = dict(self.last_seen)
        for dev, ms in sorted(seen.items()):
            age.add_metric([dev], max(0.0, (now - ms) / 1000.0))
        yield age


def serve_metrics(collector: Any, listen: str) -> tuple[CollectorMetrics, Any]:
    """Start the metrics endpoint on `listen` ("[host:]port", loopback by default); returns (metrics, server)."""
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    host = host or "127.0.0.1"
    try:
        port_n = int(port)
    except ValueError:
        raise EdgefleetError(f"bad --metrics {listen!r}", hint="PORT or HOST:PORT, e.g. 127.0.0.1:9108") from None
    m = CollectorMetrics(collector)
    try:
        server, _thread = start_http_server(port_n, addr=host, registry=m.registry)
    except OSError as e:
        raise EdgefleetError(f"cannot serve metrics on {host}:{port_n}: {e.strerror}") from None
    log.info("metrics at http://%s:%d/metrics", host, server.server_port)
    return m, server
