"""Packaging: a wheel carries what autoconf needs to plan (the bundled profiles included), away from the source tree."""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict:
    """The environment without what would make a child import the source tree instead of the installed wheel."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


@pytest.mark.slow
def test_an_installed_wheel_plans_on_a_bundled_profile_outside_the_source_tree(tmp_path):
    """`pip wheel` of a copy of the project, installed into a fresh venv (which sees this interpreter's packages for
    torch and ortools, but not the source tree), plans llama3-8b on the bundled `dgx-h100-80g` profile from a folder
    outside the repository, and `autoconf` there is the wheel's copy."""
    pytest.importorskip("setuptools")  # the build backend, used without build isolation (no network needed)
    # Build from a copy holding only what the wheel is made of, so no stale build/ folder of the checkout leaks in.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "autoconf", src / "autoconf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = _clean_env()
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels)], check=True, env=env, cwd=tmp_path, timeout=120)
    (wheel,) = wheels.glob("autoconf-*.whl")
    shutil.rmtree(src)

    # A venv without pip whose site-packages comes first; this interpreter's site-packages follow it (a .pth file),
    # which also works when the tests themselves run in a venv (where --system-site-packages would skip them).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env, timeout=60)
    python = venv / "bin" / "python"
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                    check=True, env=env, capture_output=True, text=True).stdout.strip())
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (venv_site / "outer_site.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, env=env, cwd=tmp_path, timeout=120)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import autoconf; print(autoconf.__file__)"], check=True, env=env,
                           cwd=elsewhere, capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv_site.resolve()), where
    assert not Path(where).resolve().is_relative_to(REPO), where

    result = subprocess.run([str(python), "-m", "autoconf", "plan", "--model", "llama3-8b", "--cluster", "dgx-h100-80g",
                             "--nodes", "1", "--global-batch", "64", "--top", "1", "--json"],
                            env=env, cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["plans"][0]
    assert plan["cluster"]["name"] == "dgx-h100-80g" and plan["prediction"]["iteration_time_s"] > 0
