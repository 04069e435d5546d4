"""validate with bad patch series: each gives a clear error for that kernel, and loses nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.validate import run
from harness.validate.outcome import KernelOutcome
from harness.validate.verdict import build_report
from harness.vm import build as vmbuild

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

PATCHES = Path(__file__).resolve().parents[2] / "vm" / "patches"


@pytest.fixture
def stock_outcome(tmp_path):
    """A synthetic control outcome: these tests are about the candidate's build, not about stock's."""
    o = KernelOutcome("stock", "guest", tmp_path / "stock")
    o.summary = {"kernel_release": "6.12", "patched": False, "clauses": {}, "tests": {"passed": 1}}
    return o


@pytest.fixture(autouse=True)
def scratch_build_dir(tmp_path, monkeypatch):
    """Builds go to a scratch build directory, never the real build/kernels; the unpacked source
    tree (read-only to a build) is shared with the real cache when it is there."""
    real_src = vmbuild.BUILD_DIR / "cache" / "src"
    scratch = tmp_path / "build"
    (scratch / "cache").mkdir(parents=True)
    if real_src.is_dir():
        (scratch / "cache" / "src").symlink_to(real_src)
    monkeypatch.setattr(vmbuild, "BUILD_DIR", scratch)
    return scratch


def _candidate(tmp_path: Path, series_dir: Path) -> KernelOutcome:
    return run._build("bad-series-test", series_dir, tmp_path / "bad-series-test", lambda msg: None)


def test_empty_patch_directory(tmp_path, stock_outcome):
    empty = tmp_path / "empty"
    empty.mkdir()
    outcome = _candidate(tmp_path, empty)
    assert "no series file and no *.patch" in outcome.error
    report = build_report([stock_outcome, outcome], empty, False, 1.0)
    assert report["verdict"]["kind"] == "error" and not report["ok"]
    assert "no series file" in report["verdict"]["line"]


def test_series_naming_a_missing_patch(tmp_path, stock_outcome):
    d = tmp_path / "series-only"
    d.mkdir()
    (d / "series").write_text("0001-not-here.patch\n")
    outcome = _candidate(tmp_path, d)
    assert "0001-not-here.patch" in outcome.error, outcome.error
    report = build_report([stock_outcome, outcome], d, False, 1.0)
    assert report["verdict"]["kind"] == "error" and "0001-not-here.patch" in report["verdict"]["line"]


def test_a_patch_that_does_not_apply_names_patch_file_and_hunk(tmp_path, stock_outcome):
    d = tmp_path / "drifted"
    shutil.copytree(PATCHES, d)
    patch = d / "0002-userfaultfd-add-access-likely-and-write-likely-hints.patch"
    text = patch.read_text()
    # Change a line the hunk removes, as a series written for another base would have it: patch(1)
    # may fuzz over context lines, never over removed ones.
    drifted = text.replace(
        "\n-\t\t\t       UFFDIO_WRITEPROTECT_MODE_WP))", "\n-\t\t\t       UFFDIO_WRITEPROTECT_MODE_WP_DRIFTED))", 1
    )
    assert drifted != text, "the patch no longer has the line this test edits"
    patch.write_text(drifted)
    outcome = _candidate(tmp_path, d)
    assert "does not apply" in outcome.error
    assert "0002-userfaultfd" in outcome.error and "fs/userfaultfd.c" in outcome.error and "hunk" in outcome.error
    report = build_report([stock_outcome, outcome], d, False, 1.0)
    assert report["verdict"]["kind"] == "error" and "does not apply" in report["verdict"]["line"]
    kdir = vmbuild.BUILD_DIR / "kernels" / "bad-series-test"
    assert str(kdir).startswith(str(tmp_path)), "the test must not build into the real build/kernels"
    assert not (kdir / "build.json").exists(), "no half-built kernel is left looking built"
    assert not (kdir / "src").exists() or not any((kdir / "src").glob("**/*.rej")), "no half-patched tree left"
