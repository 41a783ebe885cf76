# The simulated board (boards/sim.json), beside the node package and never on a real board (firmware/manifest.py
# does not list it): flash chip, I2C bus with register-level device models, pins, scenarios, the sim entry
# (launch, provision), and the MicroPython scripts the host runs on the unix port (node_infer, node_features).
# It imports node modules; the node imports it only on the sim board (node.appboot.build, chip == "sim").
