"""`pip install keel-platform && keel demo` works: the wheel alone, in a clean venv, no extras.

Builds the wheel from this checkout, installs it in a fresh venv (pip resolves the core
dependencies, from its cache when it has them) and runs the demo there with a few users. It catches
a module the demo imports that only an extra (e.g. [test]) installs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    # a clean environment: nothing of this checkout or its venv on the path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["COLUMNS"] = "80"
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(1800)
def test_keel_demo_runs_from_the_wheel_without_extras(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("keel_platform-*.whl"))

    venv = tmp_path / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    assert run(base_python, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    installed = run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    # the venv really lacks what only the extras install, so the demo cannot lean on them
    absent = run(venv / "bin" / "python", "-c",
                 "import importlib.util as u; print([m for m in ('httpx', 'pytest', 'confluent_kafka', 'redis') "
                 "if u.find_spec(m)])", cwd=tmp_path)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr

    demo = run(venv / "bin" / "keel", "demo", "--users", "150", "--dir", tmp_path / "shop", cwd=tmp_path)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert "Traceback" not in output
    assert "summary" in demo.stdout and "demo finished in" in demo.stdout
    assert "demo finished" in demo.stdout.splitlines()[-1] and demo.stdout.splitlines()[-1].endswith(": ok")
    # its summary reads at 80 columns: no cell cut to "…", no line wider than the terminal
    assert "…" not in demo.stdout and max(len(line) for line in demo.stdout.splitlines()) <= 80, demo.stdout
