"""``bin/setup-venv``, the first thing ``bin/start`` runs on a fresh machine."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_venv(tmp_path, python: str) -> subprocess.CompletedProcess:
    (tmp_path / "bin").mkdir()
    shutil.copy(ROOT / "bin" / "setup-venv", tmp_path / "bin" / "setup-venv")
    return subprocess.run(
        [str(tmp_path / "bin" / "setup-venv")], env={"PATH": "/usr/bin:/bin", "PYTHON": python},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_python_older_than_3_11_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\n[ "$1" = "--version" ] && echo "Python 3.10.12" && exit 0\nexit 1\n')
    old.chmod(0o755)

    run = setup_venv(tmp_path, str(old))

    assert run.returncode == 1
    assert "needs Python 3.11 or later" in run.stderr
    assert "Python 3.10.12" in run.stderr
    assert "PYTHON=" in run.stderr
    assert not (tmp_path / ".venv").exists()


def test_a_missing_python_is_refused_the_same_way(tmp_path):
    run = setup_venv(tmp_path, str(tmp_path / "no-such-python"))

    assert run.returncode == 1
    assert "needs Python 3.11 or later" in run.stderr
    assert not (tmp_path / ".venv").exists()
