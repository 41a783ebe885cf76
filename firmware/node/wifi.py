# Wi-Fi station link for ESP32 boards (board "wifi": true). The MQTT client calls ensure() before every
# connect attempt; on the sim board (and boards without Wi-Fi) there is no link to manage.
import asyncio


class Wifi:
    def __init__(self, ssid, password, timeout_s=20):
        self.ssid = ssid
        self.password = password
        self.timeout_s = timeout_s
        self.wlan = None
        self.connects = 0

    async def ensure(self):
        # True when the station is connected (connecting first if needed), False after timeout_s.
        import network

        if self.wlan is None:
            self.wlan = network.WLAN(network.STA_IF)
            self.wlan.active(True)
        if self.wlan.isconnected():
            return True
        if not self.ssid:
            print("wifi: no ssid in config")
            return False
        try:
            self.wlan.disconnect()
        except OSError:
            pass
        self.wlan.connect(self.ssid, self.password)
        for _ in range(self.timeout_s * 10):
            if self.wlan.isconnected():
                self.connects += 1
                print("wifi: connected to %s, ip %s" % (self.ssid, self.wlan.ifconfig()[0]))
                return True
            await asyncio.sleep_ms(100)
        print("wifi: could not join %s (status %r)" % (self.ssid, self.wlan.status()))
        return False


def link_for(board, cfg):
    # The link coroutine for MQTTClient(link=...), or None when the board has no radio to manage.
    if not board.get("wifi"):
        return None
    w = cfg.get("wifi") or {}
    return Wifi(w.get("ssid", ""), w.get("password", "")).ensure
