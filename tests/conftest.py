"""Shared fixtures. Services (mosquitto, PostgreSQL) are started by fixtures on free loopback ports."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from feature_tolerance import FEATURE_TOL, feature_scales

pytest_plugins = ["plugins.mpy_plugin"]

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
    from edgefleet.broker.mosquitto import Mosquitto

    broker = Mosquitto(data_dir=tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


# ---------------------------------------------------------------- model (issue 5)
# Feature tolerance between the node and the host: tests/feature_tolerance.py
SHIPPED_MODEL = ROOT / "models" / "basicmotions-rf"


@pytest.fixture(scope="session")
def feature_cases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """BasicMotions windows and synthetic edge cases with their features by the shared file under CPython.

    Written to a binary file (a JSON of floats would not fit a 110 KB heap): per case float32 window
    [channel][sample], then float64 expected features, then float64 scales; {"path", "n", "channels", ...}.
    """
    import numpy as np

    from edgefleet.model import datasets
    from edgefleet.model import features as F

    w = datasets.load_basicmotions(50, 25)
    wins = [w.x[i].astype(np.float32).astype(np.float64) for i in range(0, len(w.x), 24)]
    t = np.arange(50)
    wins.append(np.stack([np.full(50, 1.5), np.sin(t), (t >= 25) * 2.0 - 1, t * 0.1, np.zeros(50), np.cos(t * 2.9)]))
    wins = [x.astype(np.float32).astype(np.float64) for x in wins]
    n_per = F.shared().N_PER_CHANNEL
    path = tmp_path_factory.mktemp("features") / "cases.bin"
    with path.open("wb") as f:
        for x in wins:
            f.write(x.astype("<f4").tobytes())
            f.write(F.compute_shared(x).astype("<f8").tobytes())
            f.write(np.asarray(feature_scales(x, n_per), dtype="<f8").tobytes())
    return {"path": str(path), "n": len(wins), "channels": 6, "samples": 50, "tol": FEATURE_TOL}


@pytest.fixture(scope="session")
def shipped_model_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """models/basicmotions-rf: its model file, 24 test windows (float32 file) and the trained model's classes."""
    import numpy as np

    from edgefleet.model.convert import load_trained
    from edgefleet.model.estimators import predict

    t, est = load_trained(SHIPPED_MODEL)
    ts = np.load(SHIPPED_MODEL / "testset.npz")
    idx, _ = predict(t, est, ts["xq"][:24].astype(np.float64))
    wpath = tmp_path_factory.mktemp("shipped") / "windows.bin"
    ts["x"][:24].astype("<f4").tofile(wpath)
    return {"path": str(SHIPPED_MODEL / "model.efm"), "windows": str(wpath), "expected": idx.tolist(),
            "classes": list(t.classes)}  # fmt: skip


@pytest.fixture
def signed_model(tmp_path: Path) -> dict:
    """The shipped model re-encoded signed with a fresh key, plus the unsigned original."""
    import secrets

    from edgefleet.model import modelfile

    mf = modelfile.decode((SHIPPED_MODEL / "model.efm").read_bytes())
    key = secrets.token_bytes(32)
    path = tmp_path / "signed.efm"
    modelfile.write(path, mf, key)
    return {"path": str(path), "key": key.hex(), "unsigned": str(SHIPPED_MODEL / "model.efm"), "dir": str(tmp_path)}


# collector
@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster for the session (run as an unprivileged user when we are root)."""
    from edgefleet.sim.postgres import PostgresCluster

    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend: the collector suite runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return request.getfixturevalue("pg_cluster").new_database()


# --- tooling: hardware-in-the-loop plugin (hil_board, hil_broker, collector, deploy_node, deployed_node) ---
pytest_plugins = [*pytest_plugins, "plugins.hil"]


@pytest.fixture
def vboard(tmp_path):
    """A virtual sim board (the node's MicroPython behind a pty, like a board's USB serial) on a fresh flash."""
    from edgefleet.board.boards import load_board
    from edgefleet.board.vboard.board import VirtualBoard

    vb = VirtualBoard(load_board("sim"), tmp_path / "flash.img")
    vb.start()
    yield vb
    vb.stop()


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def pytest_configure(config) -> None:
    """`timeout`, `kill` and CI stop a test run with SIGTERM, which Python does not turn into an exception: the run
    died at once and the servers and collectors its fixtures started (many tests use a plain Popen) were left
    running with no parent. As a KeyboardInterrupt, pytest stops the way Ctrl-C stops it: fixtures tear down."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
