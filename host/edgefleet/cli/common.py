"""What every subcommand's parser shares: the help layout (description, options with their defaults, examples)
and turning the parsed arguments into a stage's typed options.

Users of mpremote and esptool expect `--help` to say what a command does before its options and to end with
commands they can copy; `add_command` makes both part of registering a subcommand, so none can be left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and the examples' line breaks (examples are one per line) and shows each option's
    default. Unlike argparse.ArgumentDefaultsHelpFormatter it adds nothing when the help text already names its
    default, and nothing for options whose default is none or off (a "(default: None)" tells the user nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if not text or text == argparse.SUPPRESS or "default" in text.lower() or action.required:
            return text
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text
        return text + " (default: %(default)s)"


def epilog(examples: Sequence[str], note: str = "") -> str:
    """The examples section of a --help: each example on its own line, then an optional note."""
    text = "examples:\n" + "".join(f"  {e}\n" for e in examples)
    return text + "\n" + note if note else text.rstrip("\n")


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    examples: Sequence[str],
    description: str | None = None,
    note: str = "",
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand parser with a description (the one-line `help` when none is given; a one-paragraph
    description is wrapped here because the formatter keeps line breaks) and an epilog of examples."""
    text = description or help
    if "\n" not in text.strip():
        text = textwrap.fill(text.strip(), width=100)
    return sub.add_parser(
        name, help=help, description=text, epilog=epilog(examples, note), formatter_class=HelpFormatter, **kwargs
    )


def options(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A stage's options dataclass from the parsed arguments: every field the namespace has (the rest keep the
    dataclass's defaults), then `overrides` for fields whose option is spelled differently."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **overrides})
