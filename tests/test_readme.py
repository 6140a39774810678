"""The README stays one page for users, and what it and the docs show holds: links resolve, commands parse."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
SETUP_COMMANDS = [
    "bash scripts/setup.sh && .venv/bin/galaxyvit demo",
    "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
]


def test_readme_is_at_most_8000_bytes():
    assert README.stat().st_size <= 8000, f"README.md is {README.stat().st_size} bytes: move details to docs/"


def test_readme_opens_with_the_two_setup_commands():
    first_block = README.read_text().split("```")[1]
    for command in SETUP_COMMANDS:
        assert command in first_block


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.name} links to missing {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_reference_to_data_outside_the_repository(doc):
    text = doc.read_text()
    assert "../shared" not in text and "GALAXYVIT_SHARED" not in text


def readme_commands() -> list[list[str]]:
    """Every `galaxyvit ...` line of the README's bash blocks, as argument lists (comments and `&` dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words and words[-1] == "&":
                words.pop()
            for start, word in enumerate(words):
                if word.endswith("galaxyvit") and start + 1 < len(words):
                    commands.append(words[start + 1 :])
                    break
    return commands


def subcommands() -> dict[str, tuple[str, str]]:
    """The dispatcher's table (subcommand -> module, help), found through the installed `galaxyvit` script."""
    dispatcher = entry_points(group="console_scripts")["galaxyvit"].load()
    return importlib.import_module(dispatcher.__module__).SUBCOMMANDS


def test_readme_shows_every_command():
    shown = {words[0] for words in readme_commands()}
    assert shown == set(subcommands()), f"missing: {set(subcommands()) - shown}"


@pytest.mark.parametrize("words", readme_commands(), ids=lambda words: " ".join(words[:2]))
def test_readme_command_is_accepted_by_its_parser(words):
    """The options shown exist and their values parse (the command is not run)."""
    module_name, _ = subcommands()[words[0]]
    parser = argparse.ArgumentParser(prog=f"galaxyvit {words[0]}", exit_on_error=False)
    importlib.import_module(module_name).configure(parser)
    try:
        parser.parse_args(words[1:])
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"galaxyvit {' '.join(words)}: rejected by its parser ({exc}; see stderr)")
