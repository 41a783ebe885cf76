"""The AMQP transport's pure parts: the --broker URL (host list for failover) and RabbitMQ's topic mapping."""

from __future__ import annotations

import pytest

from edgefleet.collect.collector_amqp import key_to_topic, parse_amqp_url, topic_to_key
from edgefleet.errors import EdgefleetError


def test_url_with_a_host_list_for_failover() -> None:
    u = parse_amqp_url("amqp://collector@rmq1:5673,rmq2,10.0.0.3:5674/fleet")
    assert u.hosts == [("rmq1", 5673), ("rmq2", 5672), ("10.0.0.3", 5674)]
    assert (u.vhost, u.username, u.tls) == ("fleet", "collector", False)
    assert parse_amqp_url("amqps://h").hosts == [("h", 5671)] and parse_amqp_url("amqps://h").vhost == "/"


@pytest.mark.parametrize("bad", ["amqp://", "amqp://h:notaport/", "amqp://h:70000/", "amqp://a,,b/", "rabbit://h"])
def test_bad_urls_get_one_clear_message(bad: str) -> None:
    with pytest.raises(EdgefleetError, match="broker URL"):
        parse_amqp_url(bad)


def test_topic_mapping_is_the_mqtt_plugins() -> None:
    assert topic_to_key("edgefleet/node-1/stored") == "edgefleet.node-1.stored"
    assert topic_to_key("edgefleet/a.b/telemetry") == "edgefleet.a/b.telemetry"
    assert key_to_topic("edgefleet.a/b.telemetry") == "edgefleet/a.b/telemetry"


def test_group_is_refused_over_amqp(tmp_path) -> None:
    from edgefleet.collect.collector import Collector
    from edgefleet.collect.storage import open_storage

    store = open_storage(f"sqlite:///{tmp_path}/f.db", create=True)
    try:
        with pytest.raises(EdgefleetError, match="--group"):
            Collector("amqp://127.0.0.1:1/", store, group="g")
    finally:
        store.close()
