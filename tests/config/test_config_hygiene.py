"""config/ imports only the standard library and itself: no Twisted, no other room."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import st2000r.config

CONFIG_DIR = Path(st2000r.config.__file__).resolve().parent


def test_config_sources_import_only_stdlib_and_config():
    for path in CONFIG_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "st2000r":
                    assert name.startswith("st2000r.config"), f"{path.name} imports {name}"
                else:
                    assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


def test_loading_a_file_pulls_in_no_other_room():
    code = (
        "import sys, st2000r.config.cli as cli\n"
        "assert cli.main(['check', sys.argv[1]]) == 0\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'"
        " or (m.startswith('st2000r.') and not m.startswith('st2000r.config')))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(CONFIG_DIR / "examples" / "small.toml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
