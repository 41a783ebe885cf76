"""The one CLI: every command's --help says what it does (not only its usage line)."""

from __future__ import annotations

import argparse

from edgefleet.cli import build_parser


def test_every_command_help_has_a_description() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [name for name, p in commands.choices.items() if not p.description]
    assert not missing, f"commands whose --help has no description: {missing}"
    assert "examples:" in commands.choices["node"].format_help()
    assert "ends in .json" in commands.choices["boards"].format_help()
