# Simulated hardware for the sim board: flash chip, I2C bus with register-level device models, pins.
# Only imported when board.json says chip == "sim".
