# edgefleet node firmware package. Runs on ESP32 MicroPython and, with the sim board, on the unix port.
