"""The package installs under one root, ``st2000r``, beside the process manager Supervisor.

Installed bare, our ``supervisor/`` and ``config/`` folders would overwrite other packages.
This builds what ``setup.py`` installs, and a tiny stand-in distribution named
``supervisor`` (the process manager's import name), and installs both with pip into one
folder -- offline: no package index, no build dependencies beyond the setuptools already
present.  Each is built with ``setup.py build_py`` (the step a wheel build runs to lay out
packages and package data) and packed as a pure-Python wheel, which pip installs without a
build backend.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
OFFLINE = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

STANDIN_SETUP = 'from setuptools import setup\nsetup(name="supervisor", version="0.0.0", packages=["supervisor"])\n'
STANDIN_INIT = 'STANDIN = "the process manager Supervisor (stand-in)"\n'
STANDIN_OPTIONS = "class ServerOptions:\n    pass\n"


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def build_wheel(project: Path, name: str, version: str, out: Path) -> Path:
    """``project``'s ``setup.py build_py`` output packed as ``NAME-VERSION-py3-none-any.whl``."""
    lib = out / f"{name}-lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                   cwd=project, check=True, capture_output=True, timeout=120, env=OFFLINE)
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in lib.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            arcname = path.relative_to(lib).as_posix()
            data = path.read_bytes()
            zf.writestr(arcname, data)
            records.append(_record_line(arcname, data))
        meta = {
            "METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
            "WHEEL": "Wheel-Version: 1.0\nGenerator: tests/test_install.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        }
        egg = out / f"{name}-egg"  # the entry points (the subcommands of st2000r) as setuptools writes them
        egg.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg)],
                       cwd=project, check=True, capture_output=True, timeout=120, env=OFFLINE)
        for points in egg.glob("*.egg-info/entry_points.txt"):  # the subcommands' group only: no scripts
            text = points.read_text()
            start = text.find("[st2000r.commands]")
            if start >= 0:
                meta["entry_points.txt"] = text[start:].split("\n\n")[0] + "\n"
        for filename, text in meta.items():
            zf.writestr(f"{info}/{filename}", text)
            records.append(_record_line(f"{info}/{filename}", text.encode()))
        records.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("wheels")
    standin = out / "standin"
    (standin / "supervisor").mkdir(parents=True)
    (standin / "setup.py").write_text(STANDIN_SETUP)
    (standin / "supervisor" / "__init__.py").write_text(STANDIN_INIT)
    (standin / "supervisor" / "options.py").write_text(STANDIN_OPTIONS)
    return build_wheel(ROOT, "st2000r", "0.1.0", out), build_wheel(standin, "supervisor", "0.0.0", out)


def test_the_build_holds_only_the_st2000r_root(wheels):
    names = zipfile.ZipFile(wheels[0]).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"st2000r"}
    assert "st2000r/supervisor/cli.py" in names
    assert "st2000r/drivers/st2000r/frame.py" in names
    assert "st2000r/config/loader.py" in names and "st2000r/config/cliargs.py" in names
    assert "st2000r/config/examples/community.toml" in names
    assert not any(n.startswith("st2000r/tests") for n in names)


def test_installs_beside_the_process_manager_supervisor(wheels, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
         *map(str, wheels)],
        check=True, timeout=300, env=OFFLINE,
    )  # fmt: skip
    probe = (
        "import supervisor.options, st2000r.supervisor.cli, st2000r.config, "
        "st2000r.drivers.st2000r.frame\n"
        "import supervisor\n"
        "assert 'st2000r' not in supervisor.__file__, supervisor.__file__\n"
        "assert supervisor.STANDIN.startswith('the process manager'), supervisor.STANDIN\n"
        "assert hasattr(supervisor.options, 'ServerOptions')\n"
        "assert st2000r.supervisor.cli.commands()['scan'].value == 'st2000r.supervisor.scan'\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n" + probe],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["st2000r", "supervisor"]
