"""The fleet console: a live web view of the collector's database (`edgefleet serve`), alerts, Home Assistant MQTT
discovery and the collector's Prometheus metrics. Everything here reads what the collector stored or what the
broker carries; nothing here is on the collector's write path."""
