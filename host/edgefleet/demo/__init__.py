"""`edgefleet demo`: the end-to-end run on a simulated fleet, its metrics and its report."""
