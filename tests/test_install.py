"""The wheel installs under one root, ``st2000r``, beside the process manager Supervisor.

Installed bare, our ``supervisor/`` and ``config/`` folders would overwrite other packages;
this builds the real wheel and installs it next to Supervisor from the package index.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(out), str(ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    (whl,) = out.glob("st2000r-*.whl")
    return whl


def test_wheel_holds_only_the_st2000r_root(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"st2000r"}
    assert "st2000r/supervisor/cli.py" in names
    assert "st2000r/drivers/st2000r/frame.py" in names
    assert "st2000r/config/examples/community.toml" in names
    assert not any(n.startswith("st2000r/tests") for n in names)


def test_installs_beside_the_process_manager_supervisor(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel), "supervisor"],
        check=True, timeout=300,
    )  # fmt: skip
    probe = (
        "import supervisor.options, st2000r.supervisor.cli, st2000r.config, "
        "st2000r.drivers.st2000r.frame\n"
        "import supervisor\n"
        "assert 'st2000r' not in supervisor.__file__, supervisor.__file__\n"
        "assert hasattr(supervisor.options, 'ServerOptions')\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n" + probe],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
