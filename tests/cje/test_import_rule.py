"""The statistical core imports no Kedro, no backend, no pipeline and no report code (cje/README.md)."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("kedro", "arena_cje.backends", "arena_cje.pipelines", "arena_cje.report", "torch", "transformers")


def test_cje_imports_neither_kedro_nor_backends():
    code = (
        "import sys, pkgutil, importlib, arena_cje.cje as c\n"
        "for m in pkgutil.walk_packages(c.__path__, 'arena_cje.cje.'):\n"
        "    importlib.import_module(m.name)\n"
        f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"arena_cje.cje pulled in: {out.stdout.split()}"
