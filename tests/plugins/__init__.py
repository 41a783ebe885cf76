"""pytest plugins of edgefleet's own test suite, registered by tests/conftest.py: `mpy_plugin` runs
tests/firmware on MicroPython, `hil` is the hardware-in-the-loop plugin. They live here, not in the wheel:
a user of edgefleet never needs them."""
