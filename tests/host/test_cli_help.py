"""Every command's --help reads like mpremote's or esptool's: it opens with what the command does, every option
says what it is for, and it ends with commands to copy. And argument parsing stays in edgefleet.cli: no other
module imports argparse (the stages take typed arguments)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import edgefleet
from edgefleet.cli import build_parser

PACKAGE = Path(edgefleet.__file__).resolve().parent


def _commands(
    parser: argparse.ArgumentParser, path: str = "edgefleet"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand parser under it, nested ones too (`broker pki`, `serve user add`)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def test_every_command_has_a_description_examples_and_option_help() -> None:
    problems = []
    seen = []
    for path, p in _commands(build_parser()):
        seen.append(path)
        if not (p.description or "").strip():
            problems.append(f"{path}: no description")
        examples = [line.strip() for line in (p.epilog or "").splitlines()]
        if not any(line.startswith("edgefleet ") for line in examples):
            problems.append(f"{path}: no example (a line starting with 'edgefleet ') in its epilog")
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:  # argparse.SUPPRESS (a deliberately hidden option) is help text too
                problems.append(f"{path}: {'/'.join(action.option_strings) or action.dest} has no help text")
        p.format_help()  # every help renders (a bad %-format in a help text raises here)
    assert not problems, "\n".join(problems)
    for nested in ("edgefleet broker pki", "edgefleet fleet status", "edgefleet serve user add", "edgefleet board rom"):
        assert nested in seen


def test_help_shows_defaults() -> None:
    text = " ".join(dict(_commands(build_parser()))["edgefleet train"].format_help().split())  # unwrapped
    assert "(default: 0.25)" in text  # added by the formatter
    assert "(default 10)" in text and "(default: 10)" not in text  # a help naming its default is left alone


def test_typed_options_default_like_the_commands() -> None:
    """Code that calls a stage directly (the demo trains its model with TrainOptions) gets what the command does."""
    from edgefleet.broker.mosquitto import BrokerOptions
    from edgefleet.cli.common import options
    from edgefleet.collect.collector import CollectOptions
    from edgefleet.model.train import TrainOptions
    from edgefleet.sim.simulate import SimulateOptions

    parse = build_parser().parse_args
    train = options(TrainOptions, parse(["train", "--data", "basicmotions", "--name", "x"]))
    assert train == TrainOptions(data="basicmotions", name="x")
    assert options(CollectOptions, parse(["collect"])) == CollectOptions()
    assert options(SimulateOptions, parse(["simulate"])) == SimulateOptions()
    assert options(BrokerOptions, parse(["broker"])) == BrokerOptions()


def test_only_the_cli_imports_argparse() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            if any(n == "argparse" or n.startswith("argparse.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"argparse imported outside edgefleet/cli/: {offenders}"


def _examples(p: argparse.ArgumentParser) -> Iterator[str]:
    """The example commands of an epilog: `\\` continuations joined, `&&` chains split, `# comments` dropped."""
    text = re.sub(r"\\\n\s*", " ", p.epilog or "")
    for line in text.splitlines():
        for part in line.split("&&"):
            part = part.split("  #")[0].strip()
            if part.startswith("edgefleet "):
                yield part


def test_every_example_in_a_help_parses() -> None:
    """An example a user copies from --help must at least be accepted by the parser (no option that does not
    exist, no missing required one): `capture --help` once told users to run `export --sensors` and
    `train --labels`, neither of which existed."""
    root = build_parser()
    bad = []
    for path, p in _commands(root):
        for example in _examples(p):
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    root.parse_args(shlex.split(example)[1:])
            except SystemExit as e:
                if e.code:
                    bad.append(f"{path}: {example!r}: {err.getvalue().strip().splitlines()[-1]}")
    assert not bad, "\n".join(bad)
