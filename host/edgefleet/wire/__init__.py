"""The wire contracts: what nodes, the broker, the collector and the console say to each other (docs/protocol.md)."""
