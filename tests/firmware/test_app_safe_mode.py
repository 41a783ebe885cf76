# Boot with a bad config: the app comes up in safe mode (no sampling), still connects with the device id and
# broker it could read, reports the error in its retained status, answers commands, and never crashes.
import asyncio
import json

from node import app
from simboard.launch import default_config, prepare

TIMEOUT = 60


def test_bad_config_boots_safe_mode_and_connects(mqtt_broker, flash_image, sim_board):
    board, flash, part = prepare(sim_board, flash_image, "safe-1", mqtt_broker["url"])
    cfg = default_config("safe-1", mqtt_broker["url"])
    cfg["rates"] = {"env": "fast"}  # not a number: invalid against any validator
    cfg["max_batch_bytes"] = -5
    with open("config.json", "w") as f:
        json.dump(cfg, f)
    return _run(part)


async def _run(part):
    boot = asyncio.create_task(app._boot(part, None))
    for _ in range(200):
        await asyncio.sleep_ms(50)
        n = app.current
        if n is not None and n.mqtt is not None and n.status.sent:
            break
    n = app.current
    assert n is not None and n.mqtt.connected, "safe mode must still connect"
    assert n.safe_mode and n.error, (n.safe_mode, n.error)
    st = n.status.payload()
    assert st["safe_mode"] is True and st["error"] == n.error and st["dev"] == "safe-1", st
    assert n.sampler is None
    # Commands still work in safe mode.
    await n.commands.handle(b'{"v":1,"id":"p1","cmd":"ping"}')
    await n.commands.handle(b"\xff\xfe not json")
    assert n.commands.handled == 2 and n.commands.errors == 1
    n.request_reboot()
    code = await boot
    assert code == app.REBOOT_EXIT, code
