# Runs first on every reset. Keep it trivial: anything that can fail here could stop main.py from running.
# The node's own boot logic (config, safe mode) lives in node/app.py, where errors are reported over MQTT.
import gc

gc.collect()
