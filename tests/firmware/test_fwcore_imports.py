# Every fwcore module imports on the unix port (the ESP32 builder too: it only uses machine at build time),
# and node.config can be released after boot to give its heap back.
import gc
import sys

MODULES = (
    "node.hw", "node.hw.bme280", "node.hw.mpu6050", "node.hw.dht22", "node.hw.adc", "node.hw.esp32",
    "node.clean", "node.clock", "node.sampler", "node.decision", "node.config",
    "simboard.scenario", "simboard.replay", "simboard.devices", "simboard.pins", "simboard.i2c",
)  # fmt: skip


def test_all_modules_import():
    for m in MODULES:
        __import__(m)
        assert m in sys.modules, m


def test_config_release_frees_its_heap():
    gc.collect()
    before = gc.mem_alloc()
    from node import config

    assert config.validate({}, {"name": "x", "sensors": [], "outputs": []}).startswith("device_id")
    gc.collect()
    loaded = gc.mem_alloc()
    config.release()
    del config
    gc.collect()
    after = gc.mem_alloc()
    print("node.config: %d bytes loaded, %d after release" % (loaded - before, after - before))
    assert "node.config" not in sys.modules
    assert after - before < (loaded - before) // 4, (before, loaded, after)
    from node import config  # noqa: F811 - and it comes back when needed

    assert config.valid_device_id("node-1")
