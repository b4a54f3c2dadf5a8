"""Reading the docs as a test needs: links, heading anchors, and the commands they name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import typer

from billwatch import docs_reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")


def slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` whose file or heading does not exist."""
    broken = []
    for target in _LINK.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, mailto:
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        missing_anchor = bool(anchor) and resolved.is_file() and anchor not in anchors(resolved)
        if not resolved.exists() or missing_anchor:
            broken.append(target)
    return broken


@dataclass(frozen=True, slots=True)
class CommandLine:
    words: tuple[str, ...]
    source: str


def command_lines(path: Path) -> list[CommandLine]:
    """Every ``billwatch ...`` the page tells someone to run: inline code and code-block lines."""
    text = path.read_text(encoding="utf-8")
    found: list[str] = []
    for block in _FENCE.findall(text):
        found += [line.split(" #")[0] for line in block.splitlines()[1:-1]]
    found += _INLINE.findall(_FENCE.sub("", text))
    lines = []
    for line in found:
        raw = line.split()
        words = tuple(word.strip("[]") for word in raw)  # [--option VALUE] is still an option
        if raw and raw[0] == "billwatch" and len(words) > 1:
            lines.append(CommandLine(words, f"{path.relative_to(ROOT)}: `{line.strip()}`"))
    return lines


def command_problem(line: CommandLine, commands: dict[str, frozenset[str]]) -> str | None:
    """Why ``line`` is not a command billwatch has (with the options it gives), or None."""
    for end in range(len(line.words), 1, -1):
        name = " ".join(line.words[:end])
        if name in commands:
            options = {word.split("=")[0] for word in line.words[end:] if word.startswith("--")}
            unknown = sorted(options - commands[name])
            return f"{line.source}: {name} has no {', '.join(unknown)}" if unknown else None
    group = " ".join(line.words[:2])
    if any(command.startswith(group + " ") for command in commands) and len(line.words) == 2:
        return None  # a group named on its own, e.g. `billwatch audit`
    return f"{line.source}: no such command"


def cli_commands() -> dict[str, frozenset[str]]:
    """Every command's full name (``billwatch audit verify``) and its options, as the CLI has them."""
    from billwatch.cli import app as cli_app

    root = typer.main.get_command(cli_app)
    assert isinstance(root, typer.core.TyperGroup)
    return {name: frozenset(option for param in command.params
                            if isinstance(param, typer.core.TyperOption)
                            for option in (*param.opts, *param.secondary_opts))
            | {"--help"}
            for name, command in docs_reference.leaf_commands(root, "billwatch")}
