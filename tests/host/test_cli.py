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


def test_train_takes_the_captures_file_capture_writes(tmp_path, capsys) -> None:
    """`edgefleet capture` tells users to train with `--labels FILE`: the option reaches the training data."""
    from edgefleet import cli

    captures = tmp_path / "captures.csv"
    captures.write_text("device,sensor,label,start_ms,end_ms\nn1,imu,walking,0,1000\n")
    code = cli.main(["train", "--data", "basicmotions", "--labels", str(captures), "--name", "x",
                     "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "--labels applies to an export CSV" in capsys.readouterr().err
