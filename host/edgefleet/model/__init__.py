"""The model stage: data sets and window features, training (sized to a board's budget, quantized, anomaly
thresholds), conversion to the model file with parity checks, its report, captures of labelled data and the
C module build."""
