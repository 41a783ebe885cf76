"""The model stage (DESIGN.md "Layout"): fitting a model to a board, quantization, anomaly thresholds.

train.py, convert.py and the other flat model modules move here when the tree is reorganised."""
