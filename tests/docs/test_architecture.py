"""docs/architecture.md names only files, functions and methods that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.docs.markdown import DOCS, ROOT

PAGE = DOCS / "architecture.md"
REFERENCE = re.compile(r"^(billwatch/[\w/]+\.py)(?:::(\w+)(?:\.(\w+))?)?$")


def code_references(text: str) -> list[str]:
    """Every inline-code span that names a Python file."""
    return [span for span in re.findall(r"`([^`\n]+)`", text) if ".py" in span]


def defined_names(path: Path) -> dict[str, set[str]]:
    """Top-level names of a module, each with the names its class body defines."""
    names: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            names[node.name] = {item.name for item in node.body
                                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)}
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({target.id: set() for target in targets if isinstance(target, ast.Name)})
    return names


def problem(reference: str) -> str | None:
    match = REFERENCE.match(reference)
    if match is None:
        return f"`{reference}`: write code references as billwatch/path.py[::name[.method]]"
    file, name, method = match.groups()
    if not (ROOT / file).is_file():
        return f"`{reference}`: no file {file}"
    if name is None:
        return None
    names = defined_names(ROOT / file)
    if name not in names:
        return f"`{reference}`: {file} defines no {name}"
    if method is not None and method not in names[name]:
        return f"`{reference}`: {name} has no method {method}"
    return None


def test_every_file_function_and_method_named_exists() -> None:
    references = code_references(PAGE.read_text(encoding="utf-8"))
    assert len(references) > 30  # a refund and a webhook are followed through named code
    assert [p for reference in references if (p := problem(reference))] == []


@pytest.mark.parametrize(("reference", "expected"), [
    ("billwatch/billing/refunds.py::issue_refund", None),
    ("billwatch/db.py::Database.unit_of_work", None),
    ("billwatch/billing/refunds.py::refund_everything",
     "`billwatch/billing/refunds.py::refund_everything`: billwatch/billing/refunds.py defines no "
     "refund_everything"),
    ("billwatch/db.py::Database.commit", "`billwatch/db.py::Database.commit`: Database has no "
     "method commit"),
    ("billwatch/nowhere.py", "`billwatch/nowhere.py`: no file billwatch/nowhere.py"),
    ("http.py", "`http.py`: write code references as billwatch/path.py[::name[.method]]"),
])
def test_a_wrong_reference_is_named(reference: str, expected: str | None) -> None:
    assert problem(reference) == expected
