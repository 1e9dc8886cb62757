"""The suite's disk is one module's files at a time: folders of passing modules and tests go, a failure's stay."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODULE = """
import pytest

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("{name}")
    (path / "weights.bin").write_bytes(bytes(1000))
    return path

def test_one(folder, tmp_path):
    (tmp_path / "out.bin").write_bytes(bytes(10))

def test_two(folder):
    assert {passes}
"""


def _run(folder: Path, plugin: bool) -> tuple[set[str], str]:
    """Run a passing and a failing module with the project's retention settings; the base folder's entries after."""
    (folder / "tests").mkdir(parents=True)
    (folder / "tests" / "test_a_passes.py").write_text(textwrap.dedent(MODULE.format(name="passing", passes=True)))
    (folder / "tests" / "test_b_fails.py").write_text(textwrap.dedent(MODULE.format(name="failing", passes=False)))
    basetemp = folder / "basetemp"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}"]
    command += ["-o", "tmp_path_retention_policy=failed", "--rootdir", str(folder), str(folder / "tests")]
    if plugin:
        command[3:3] = ["-p", "tests.folder_cleanup"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    return {p.name for p in basetemp.iterdir() if not p.is_symlink()}, run.stdout  # not "NAMEcurrent"


def test_a_passing_modules_folders_go_and_a_failing_modules_stay(tmp_path):
    left, output = _run(tmp_path / "with", plugin=True)
    assert "1 failed, 3 passed" in output, output
    assert left == {"failing0"}, left  # the passing module's fixture folder and the passing tests' folders went
    # Without the plugin, pytest's retention keeps every module's fixture folder to the session's end.
    left_alone, _ = _run(tmp_path / "without", plugin=False)
    assert left_alone == {"passing0", "failing0"}, left_alone
