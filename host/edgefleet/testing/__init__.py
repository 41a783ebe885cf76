"""Test support shipped with edgefleet: the firmware test runner and the HIL plugin."""
