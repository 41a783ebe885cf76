"""Boards: board definitions, partition tables, flashing, deploying files and config, the virtual board."""
