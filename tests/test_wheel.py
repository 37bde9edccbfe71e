"""A non-editable install works: the wheel built from the checkout holds every subpackage found on disk and every
search space, and the command line runs from it where the checkout is not importable.

The checkout's build inputs are copied first, so building writes nothing (build/, *.egg-info) into the checkout;
``--no-build-isolation`` builds with this environment's setuptools, offline; the wheel is installed with
``--target`` into a throwaway folder that comes first on ``PYTHONPATH`` (the environment's editable install of
prunenas is a finder that Python asks only after the path), and the commands run from outside the checkout.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "prunenas", "search_spaces")


def files_on_disk():
    """The wheel's expected contents, as paths inside site-packages: every module of the package folder and every
    space YAML (installed as prunenas/search_spaces/)."""
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "prunenas").rglob("*.py")}
    spaces = {f"prunenas/search_spaces/{p.name}" for p in (ROOT / "search_spaces").glob("*.yaml")}
    return modules | spaces


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    for name in BUILD_INPUTS:
        source, copy = ROOT / name, tmp / "src" / name
        if source.is_dir():
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, copy)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", tmp / "src"],
                   check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("prunenas-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", tmp / "site", wheel],
                   check=True, capture_output=True)
    return wheel, tmp / "site"


def test_the_wheel_holds_every_module_and_search_space(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist() if name.startswith("prunenas/")}
    assert files_on_disk() == packaged
    assert "prunenas/search_spaces/vgg11-fashionmnist.yaml" in packaged and "prunenas/cli/main.py" in packaged


def test_the_command_line_runs_from_the_installed_wheel(installed, tmp_path):
    _, site = installed
    env = {**os.environ, "PYTHONPATH": str(site)}

    def prunenas(*args):
        return subprocess.run([sys.executable, "-m", "prunenas", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)

    assert prunenas("--help").returncode == 0
    info = prunenas("info", "vgg11-fashionmnist")
    assert info.returncode == 0, info.stderr
    assert info.stdout.startswith("vgg11-fashionmnist: vgg(")
    where = subprocess.run([sys.executable, "-c", "import prunenas; print(prunenas.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()).parent == site / "prunenas"  # the wheel's copy, not the checkout
