"""Every app's tests run: ``bin/test`` collects only the folders ``testpaths`` names."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_testpaths_name_every_folder_of_tests():
    testpaths = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["testpaths"]
    apps_with_tests = {path.parent.name for path in ROOT.glob("*/tests") if path.parent.name != ".venv"}

    assert apps_with_tests <= set(testpaths), apps_with_tests - set(testpaths)
