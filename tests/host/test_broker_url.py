"""The host's one broker-URL parser (edgefleet.wire.url) and the places that used to parse URLs their own way.

Why: deploy's regex refused IPv6 addresses the node's config accepts, and URLs rebuilt by hand lost the
brackets of an IPv6 host.
"""

from __future__ import annotations

import pytest

from edgefleet.board.boards import load_board
from edgefleet.board.deploy import node_config
from edgefleet.board.node import check_broker_url
from edgefleet.errors import EdgefleetError
from edgefleet.wire.url import parse_broker_url


def test_parse_ipv6_login_and_default_ports():
    u = parse_broker_url("mqtts://collector:p%40ss@[::1]")
    assert (u.host, u.port, u.tls, u.username, u.password) == ("::1", 8883, True, "collector", "p@ss")
    assert u.url("collector") == "mqtts://collector@[::1]:8883"
    assert u.url("c", "p@ss") == "mqtts://c:p%40ss@[::1]:8883"
    assert parse_broker_url("mqtt://broker.example").port == 1883


@pytest.mark.parametrize("url", ["http://x:1883", "mqtt://", "mqtt://h:99999", "mqtt://h:x"])
def test_bad_urls_are_clear_errors(url):
    with pytest.raises(EdgefleetError, match="broker URL"):
        parse_broker_url(url)


def test_node_rules_no_path_and_for_deploy_no_login():
    with pytest.raises(EdgefleetError, match="path or query"):
        parse_broker_url("mqtt://h:1883/x", node=True)
    with pytest.raises(EdgefleetError, match="login"):
        parse_broker_url("mqtt://u:p@h:1883", node=True, login=False)


def test_deploy_and_node_accept_ipv6_as_the_node_does():
    cfg = node_config(load_board("sim"), "n1", None, "mqtt://[::1]:1883", None)
    assert cfg["broker"]["url"] == "mqtt://[::1]:1883"
    assert check_broker_url("mqtt://[fd00::2]:1883") == "mqtt://[fd00::2]:1883"
    with pytest.raises(EdgefleetError, match="invalid broker URL"):
        node_config(load_board("sim"), "n1", None, "mqtt://u:p@[::1]:1883", None)
