# DHT22 (AM2302): temperature and humidity over its one-wire protocol. The bit timing is done by the port's
# `dht_readinto(pin, buf)` (esp.dht_readinto on ESP32; simboard.pins.dht_readinto on the sim board), which
# fills 5 bytes: humidity*10 (u16 BE), temperature*10 (15 bits BE, bit 15 = negative), checksum (low byte of
# the sum of the first four). We check and decode them ourselves. The sensor needs >= 2 s between reads.
from node.hw import SensorError


class DHT22:
    kind = "dht22"
    channels = ("temperature", "humidity")

    def __init__(self, name, pin, readinto):
        self.name = name
        self.pin = pin
        self._readinto = readinto
        self._buf = bytearray(5)
        self.checksum_errors = 0

    def read(self, out):
        b = self._buf
        try:
            self._readinto(self.pin, b)
        except OSError as e:
            raise SensorError(self.name, "no answer (errno %d)" % e.errno, e.errno)
        if (b[0] + b[1] + b[2] + b[3]) & 0xFF != b[4]:
            self.checksum_errors += 1
            raise SensorError(self.name, "checksum mismatch")
        t = ((b[2] & 0x7F) << 8) | b[3]
        out[0] = (-t if b[2] & 0x80 else t) / 10.0
        out[1] = ((b[0] << 8) | b[1]) / 10.0
