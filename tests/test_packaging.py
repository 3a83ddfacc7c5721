"""What a packager checks: the wheel carries the licence and py.typed, the version has one source."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import embedft

REPO = Path(__file__).resolve().parent.parent


def test_version_has_one_source():
    assert importlib.metadata.version("embedft") == embedft.__version__
    assert 'version = "' not in (REPO / "pyproject.toml").read_text(encoding="utf-8").split("[project.optional-dependencies]")[0]


def test_wheel_ships_licence_and_type_marker(tmp_path):
    source = tmp_path / "src"  # a copy: the build writes build/ and egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "embedft", source / "embedft", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("embedft-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "embedft/py.typed" in names
    licence = [n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n]
    assert licence, names
    assert "Apache License" in zipfile.ZipFile(wheel).read(licence[0]).decode()
    assert wheel.name.startswith(f"embedft-{embedft.__version__}-")
