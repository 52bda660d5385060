"""The viewer's files ship in the package: each one has a suffix the server serves and pyproject installs."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

from neuroscope.server.viewer import CONTENT_TYPES

ROOT = Path(__file__).resolve().parents[2]


def test_every_viewer_file_is_served_and_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["neuroscope.viewer"]
    installed = {g.removeprefix("*") for g in globs}
    assert installed == set(CONTENT_TYPES)
    files = [f.name for f in resources.files("neuroscope.viewer").iterdir() if f.is_file() and f.name != "__init__.py"]
    assert "index.html" in files and "favicon.svg" in files
    for name in files:
        assert Path(name).suffix in installed, f"{name} would be neither served nor installed"


def test_the_page_names_only_files_it_has():
    viewer = resources.files("neuroscope.viewer")
    names = {f.name for f in viewer.iterdir()}
    html = viewer.joinpath("index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    for js in (f for f in viewer.iterdir() if f.name.endswith(".js")):
        refs += re.findall(r'from "\./([^"]+)"', js.read_text())
    assert refs and all(r in names for r in refs), refs
    assert not re.search(r"https?://", html), "the page loads nothing from elsewhere (no CDN)"
