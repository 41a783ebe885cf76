# Board entry: MicroPython runs main.py after boot.py. The app never returns on a board (reboot = reset).
from node import app

app.main()
