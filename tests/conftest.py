"""Shared fixtures. Services (mosquitto, PostgreSQL) are started by fixtures on free loopback ports."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["edgefleet.testing.mpy_plugin"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sim_board() -> str:
    """Path of boards/sim.json, for MicroPython tests that build the sim hardware."""
    return str(ROOT / "boards" / "sim.json")


@pytest.fixture
def flash_image(tmp_path: Path) -> str:
    """Path for a fresh simulated flash image (created erased by SimFlash on first open)."""
    return str(tmp_path / "flash.img")


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    return str(tmp_path)


@pytest.fixture
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory):
    """A real mosquitto on a free loopback port, with the fleet config; `.restart()` / `.stop()` for faults.

    A MicroPython test that names this fixture receives {"host", "port", "url"}.
    """
    from edgefleet.broker import Mosquitto

    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


# collector
@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster for the session (run as an unprivileged user when we are root)."""
    from edgefleet.testing.postgres import PostgresCluster

    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend: the collector suite runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return request.getfixturevalue("pg_cluster").new_database()
