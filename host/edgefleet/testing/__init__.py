"""Host-side drivers of firmware code on the MicroPython unix port: the node's window features (node_features) and
its model runner (node_infer), used by training's time budget, parity and the bench."""
