# What goes on the sim board (boards/sim.json, e.g. the virtual board of `edgefleet board virtual`): a board's
# files plus the simulated hardware its node uses in place of machine's (simboard/).
include("manifest.py")
package("simboard")
