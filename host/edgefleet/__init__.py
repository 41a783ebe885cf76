"""edgefleet: MicroPython firmware and host toolchain for ESP32 sensor fleets."""

__version__ = "0.1.0"
