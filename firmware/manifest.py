# What goes on a board, in MicroPython's manifest syntax: `edgefleet deploy` copies exactly these files (compiled
# to .mpy, boot.py and main.py as source; host/edgefleet/board/manifest.py reads this file), and the same file
# can freeze the node into a MicroPython firmware image (FROZEN_MANIFEST). The simulated board (simboard/) is
# not here: it never goes onto a board (manifest_sim.py adds it for the sim board).
module("boot.py")
module("main.py")
package("node")
