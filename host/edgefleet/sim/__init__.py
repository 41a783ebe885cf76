"""The simulated fleet: nodes on the MicroPython unix port, fault injection, load generation, local services."""
