# Simulated I2C bus: the subset of machine.I2C the drivers use (readfrom_mem_into, readfrom_mem,
# writeto_mem, scan). Devices are register-level models (simboard.devices) attached at their address.
# A device that is absent or unplugged does not acknowledge its address, and the bus raises
# OSError(ENODEV) as MicroPython's ESP32 I2C does for a NACK; a transient dropout raises OSError(ETIMEDOUT).
import errno

from simboard import scenario as sc


class SimI2C:
    def __init__(self, freq=400000):
        self.freq = freq
        self.devices = {}
        self.transfers = 0

    def attach(self, device):
        self.devices[device.address] = device

    def _dev(self, addr):
        d = self.devices.get(addr)
        if d is None:
            raise OSError(errno.ENODEV)
        st = d.present()
        if st == sc.UNPLUGGED:
            raise OSError(errno.ENODEV)
        if st == sc.DROPOUT:
            raise OSError(errno.ETIMEDOUT)
        self.transfers += 1
        return d

    def scan(self):
        out = []
        for a in sorted(self.devices):
            if self.devices[a].present() == sc.OK:
                out.append(a)
        return out

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        self._dev(addr).read(memaddr, buf)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        buf = bytearray(nbytes)
        self._dev(addr).read(memaddr, buf)
        return buf

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        self._dev(addr).write(memaddr, buf)
