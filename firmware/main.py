# Board entry: MicroPython runs main.py after boot.py. The app never returns on a board (reboot = reset).
# A sim board (the virtual board, `edgefleet board virtual`) takes its simulated sensors' signals from
# scenario.json on its flash when there is one (format: simboard/scenario.py); real boards have no
# simulated sensors and ignore it.
import os

from node import app

try:
    os.stat("scenario.json")
    _scenario = "scenario.json"
except OSError:
    _scenario = None
app.main(scenario=_scenario)
