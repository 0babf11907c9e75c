"""Placeholder: filled in by its own change."""

from __future__ import annotations

import argparse

COMMANDS: tuple[str, ...] = ()


def add_parsers(sub: argparse._SubParsersAction) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError(args.command)
