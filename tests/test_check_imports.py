"""scripts/check_imports.py: it fails on an import cycle, lazy imports included, and passes an
acyclic package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def check(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(package)], capture_output=True, text=True, timeout=60
    )


def test_a_lazy_import_cycle_fails(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "a.py": "from pkg.b import helper\n",
            "b.py": "def helper():\n    from pkg import a\n    return a\n",
        },
    )
    result = check(package)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pkg.a, pkg.b" in result.stdout
    assert "pkg/b.py:2, lazy" in result.stdout


def test_a_cycle_through_a_subpackage_and_a_relative_import_fails(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "sub/__init__.py": "from .inner import x\n",
            "sub/inner.py": "import pkg.top\nx = 1\n",
            "top.py": "import importlib\n\ndef load():\n    return importlib.import_module('pkg.sub')\n",
        },
    )
    result = check(package)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pkg.sub, pkg.sub.inner, pkg.top" in result.stdout


def test_an_acyclic_package_passes(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "a.py": "from pkg.b import helper\n\ndef f():\n    from pkg import c\n",
            "b.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg import a\n"
            "\ndef helper():\n    from pkg.c import g\n",
            "c.py": "import os\n\ndef g():\n    return os.sep\n",
        },
    )
    result = check(package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no import cycles among 4 modules" in result.stdout


def test_the_engine_core_reaching_the_store_fails(tmp_path: Path) -> None:
    """Dependencies point down: the core resolves nothing by name, even through a helper."""
    package = write_package(
        tmp_path,
        {
            "engine/__init__.py": "",
            "engine/core.py": "from pkg.engine import helper\n",
            "engine/helper.py": "def resolve(name):\n    from pkg.store import find\n",
            "engine/llm.py": "from pkg.store import find\n",  # a front door may
            "store.py": "def find(name):\n    return name\n",
        },
    )
    result = check(package)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pkg.engine.core reaches pkg.store: pkg.engine.core -> pkg.engine.helper" in (
        result.stdout
    )
    assert "pkg.engine.llm reaches" not in result.stdout
