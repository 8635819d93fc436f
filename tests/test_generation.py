"""`make check-generated` catches every way generated/ can drift from the OpenAPI document.

Each case runs on a temporary copy of what the target needs (never on the real tree), with the
real virtual environment linked in as `.venv`. `make -o .venv/.installed` is a safety net: the
copies keep their mtimes (shutil.copy2), so the venv is up to date anyway, but should the real
pyproject.toml be newer than the venv, make must not "rebuild" the shared venv from a copy
(that would `pip install -e` the temporary copy into it).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.openapi import REPO_ROOT

NEEDED = [
    "Makefile",
    "scripts",
    "openapi",
    "generator-config.yml",
    "generated",
    "pyproject.toml",
    "constraints.txt",
]
VENV = REPO_ROOT / ".venv"
PACKAGE = "generated/togai_client"
SPEC = "openapi/togai-ingestion.yaml"
EDITED_FILE = f"{PACKAGE}/models/event.py"
DELETED_FILE = f"{PACKAGE}/models/ingest_error.py"
STRAY_FILE = f"{PACKAGE}/models/stray_helper.py"
OLD_DESCRIPTION = "Name of the event to be recorded."
NEW_DESCRIPTION = "Name of the event being recorded, as shown on invoices."


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (VENV / ".installed").exists() or not (VENV / "bin" / "openapi-python-client").exists():
        pytest.fail(f"{VENV} is not set up: run `make venv` first")
    if shutil.which("make") is None:
        pytest.fail("`make` is not installed")
    root = tmp_path_factory.mktemp("check-generated") / "template"
    root.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", ".ruff_cache", ".mypy_cache")
    for name in NEEDED:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, copy_function=shutil.copy2, ignore=ignore)
        else:
            shutil.copy2(source, root / name)
    (root / ".venv").symlink_to(VENV, target_is_directory=True)
    return root


@pytest.fixture
def tree(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template for one case (the .venv symlink stays a symlink)."""
    copy = tmp_path / "tree"
    shutil.copytree(template, copy, symlinks=True, copy_function=shutil.copy2)
    return copy


def check_generated(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "check-generated"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def edit_generated_file(tree: Path) -> None:
    path = tree / EDITED_FILE
    text = path.read_text()
    assert "event_name = self.event_name" in text
    path.write_text(
        text.replace("event_name = self.event_name", "event_name = self.event_name.strip()")
    )


def delete_generated_file(tree: Path) -> None:
    (tree / DELETED_FILE).unlink()


def add_stray_file(tree: Path) -> None:
    (tree / STRAY_FILE).write_text("HAND_WRITTEN = True\n")


def change_spec_description(tree: Path) -> None:
    path = tree / SPEC
    text = path.read_text()
    assert text.count(OLD_DESCRIPTION) == 1
    path.write_text(text.replace(OLD_DESCRIPTION, NEW_DESCRIPTION))


# (change, lines the diff must show)
DRIFTS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "edited-by-hand": (
        edit_generated_file,
        [
            f"--- {EDITED_FILE}",
            "-        event_name = self.event_name.strip()",
            "+        event_name = self.event_name",
        ],
    ),
    "file-deleted": (
        delete_generated_file,
        [f"--- {DELETED_FILE}", "+class IngestError:"],
    ),
    "stray-file-added": (
        add_stray_file,
        [f"--- {STRAY_FILE}", "-HAND_WRITTEN = True"],
    ),
    "spec-changed-without-regeneration": (
        change_spec_description,
        [f"--- {EDITED_FILE}", f"-        event_name (str): {OLD_DESCRIPTION}", NEW_DESCRIPTION],
    ),
}


def test_passes_on_the_unmodified_tree(tree: Path) -> None:
    result = check_generated(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check-generated: generated/togai_client matches" in result.stdout
    assert not (tree / PACKAGE / ".ruff_cache").exists()


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_fails_with_a_readable_diff(tree: Path, drift: str) -> None:
    change, expected_lines = DRIFTS[drift]
    change(tree)

    result = check_generated(tree)
    output = result.stdout + result.stderr

    assert result.returncode != 0, output
    assert "diff -ruN" in output  # one header per differing file
    for line in expected_lines:
        assert line in output, f"{line!r} not in:\n{output}"
    assert "is not what openapi/togai-ingestion.yaml and generator-config.yml produce" in output
    assert "Run 'make generate'" in output
    # The check never repairs the tree: the drift is still there afterwards.
    if drift == "file-deleted":
        assert not (tree / DELETED_FILE).exists()
    if drift == "stray-file-added":
        assert (tree / STRAY_FILE).exists()
