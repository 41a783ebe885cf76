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


# --- tooling: hardware-in-the-loop plugin (hil_board, hil_broker, collector, deploy_node, deployed_node) ---
pytest_plugins = [*pytest_plugins, "edgefleet.testing.hil"]
