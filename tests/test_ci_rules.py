"""The CI rules of ci_rules.py, run on small test files by a pytest of their own, with and without CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CASES = """
import pytest

@pytest.mark.browser
def test_browser_skipped():
    pytest.skip("no Chromium")

@pytest.mark.milvus
@pytest.mark.skipif(True, reason="no Milvus Lite")
def test_milvus_skipped():
    pass

def test_plain_skip():
    pytest.skip("not needed here")

@pytest.mark.browser
@pytest.mark.xfail(reason="known")
def test_browser_expected_to_fail():
    assert False

@pytest.mark.browser
def test_browser_runs():
    pass
"""


def run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "ci_rules",
            "-p",
            "no:cacheprovider",
            "-rA",
            "-W",
            "ignore",
            str(folder),
        ],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=120,
    )


@pytest.fixture()
def cases(tmp_path: Path) -> Path:
    (tmp_path / "test_cases.py").write_text(CASES)
    return tmp_path


def test_under_ci_a_skipped_browser_or_milvus_test_fails(cases: Path) -> None:
    result = run_pytest(cases, "true")
    assert result.returncode == 1, result.stdout
    assert "FAILED test_cases.py::test_browser_skipped" in result.stdout
    assert "ERROR test_cases.py::test_milvus_skipped" in result.stdout
    assert "skipped under CI, where browser tests must run: no Chromium" in result.stdout
    assert "milvus tests must run: no Milvus Lite" in result.stdout
    assert "SKIPPED [1] test_cases.py" in result.stdout and "not needed here" in result.stdout  # unmarked: a skip
    # a skip in the test's body fails it; a skip while setting it up (skipif) is an error
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in result.stdout


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_elsewhere_skips_stay_skips(cases: Path, ci: str | None) -> None:
    result = run_pytest(cases, ci)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout


def test_under_ci_a_test_module_skipped_at_import_fails(tmp_path: Path) -> None:
    (tmp_path / "test_needs_a_package.py").write_text(
        'import pytest\n\npytest.importorskip("no_such_package_here")\n\n\ndef test_a():\n    pass\n'
    )
    (tmp_path / "test_other.py").write_text("def test_b():\n    pass\n")
    assert run_pytest(tmp_path, None).returncode == 0
    result = run_pytest(tmp_path, "true")
    assert result.returncode != 0
    assert "test module skipped under CI" in result.stdout and "no_such_package_here" in result.stdout
