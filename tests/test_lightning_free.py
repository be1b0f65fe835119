"""The modules the oldest-Lightning CI run skips (``lightning_free.MODULES``) really never import
Lightning: not at module level (imported here in a fresh interpreter where importing Lightning
fails), and not inside a test (no import of Lightning, of the Lightning test helpers or of
``WattCallback`` anywhere in their code)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from lightning_free import MODULES

import lightning_watt

TESTS = Path(__file__).resolve().parent
#: Modules that import Lightning, and names that pull it in from lightning_watt.
LIGHTNING = ("lightning", "pytorch_lightning", "helpers", "harness", "lightning_watt.integration")
PULLS_IN_LIGHTNING = {"WattCallback"}


def _lightning_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            names += [f"{node.module}.{a.name}" for a in node.names if a.name in PULLS_IN_LIGHTNING]
        for name in names:
            if (
                name.split(".")[0] in LIGHTNING
                or name.startswith(LIGHTNING[-1])
                or name.rsplit(".", 1)[-1] in PULLS_IN_LIGHTNING
            ):
                found.append(f"line {node.lineno}: {name}")
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_lightning_import_anywhere_in_the_module(name: str) -> None:
    path = TESTS / name
    assert path.is_file(), f"lightning_free.MODULES names {name}, which does not exist"
    assert _lightning_imports(path) == []


def test_the_guard_sees_an_import_inside_a_test(tmp_path: Path) -> None:
    module = tmp_path / "test_x.py"
    module.write_text("def test_x():\n    from lightning_watt import WattCallback\n")
    assert _lightning_imports(module) == ["line 2: lightning_watt.WattCallback"]


def test_the_modules_import_where_lightning_cannot_be_imported() -> None:
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys
        class NoLightning(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("lightning", "pytorch_lightning"):
                    raise ImportError("Lightning is blocked: " + name)
        sys.meta_path.insert(0, NoLightning())
        sys.path.insert(0, {str(TESTS)!r})
        for name in {sorted(m[:-3] for m in MODULES)!r}:
            importlib.import_module(name)
        """
    )
    package = str(Path(lightning_watt.__file__).resolve().parents[1])  # the one tested here
    path = os.pathsep.join([package, os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
