"""The hand-written stubs (`openenv_rs/_native.pyi`) match the built module
(`mypy.stubtest`), and the package type-checks against them (`mypy --strict`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import openenv_rs
import openenv_rs._native as native

PACKAGE = Path(openenv_rs.__file__).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=600,
        cwd=str(Path(__file__).parent),
    )


def test_stub_and_marker_are_shipped() -> None:
    assert (PACKAGE / "_native.pyi").is_file()
    assert (PACKAGE / "py.typed").is_file()


def test_every_stub_name_exists_at_runtime() -> None:
    tree = ast.parse((PACKAGE / "_native.pyi").read_text())
    names = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert names <= set(dir(native)), names - set(dir(native))
    public = {name for name in dir(native) if not name.startswith("_")}
    assert public <= names | {"__version__"}, public - names


def test_stubtest() -> None:
    result = run("mypy.stubtest", "openenv_rs._native")
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_type_checks_strictly() -> None:
    result = run("mypy", "--strict", "-p", "openenv_rs")
    assert result.returncode == 0, result.stdout + result.stderr
