"""Which built kernel seeds a first build ("auto": the closest applied tree), and pruning old candidates.

The choice is checked on fake trees (a pristine tree, siblings with their
own src/ and src-state.json), with patches made by difflib; one test builds
real kernels (marked vm and slow).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from harness.vm import build as vb

PRISTINE = {
    "include/linux/mm.h": "struct mm;\nint x;\n",
    "mm/a.c": "int a;\nint b;\nint c;\n",
    "mm/b.c": "one\ntwo\nthree\n",
    "mm/c.c": "red\ngreen\nblue\n",
    "fs/d.c": "alpha\nbeta\n",
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def _diff(rel: str, old: str | None, new: str | None) -> str:
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(True),
            (new or "").splitlines(True),
            "/dev/null" if old is None else f"a/{rel}",
            "/dev/null" if new is None else f"b/{rel}",
        )
    )


def _series(d: Path, changes: dict[str, str | None]) -> list[Path]:
    """A one-patch series turning PRISTINE into PRISTINE + changes (None: remove the file)."""
    d.mkdir(parents=True)
    (d / "0001.patch").write_text("".join(_diff(rel, PRISTINE.get(rel), new) for rel, new in changes.items()))
    return vb.read_series(d)


def _sibling(kernels: Path, name: str, changes: dict[str, str], built_at: str = "2026-12-03T10:00:00Z") -> Path:
    """A built kernel's directory as _prepare_source and _build_locked leave it (src/, src-state.json, build.json)."""
    d = kernels / name
    files = {**PRISTINE, **changes}
    _write(d / "src", files)
    (d / "obj").mkdir(parents=True)
    (d / "src-state.json").write_text(json.dumps({"patch_key": name, "touched": sorted(changes)}))
    (d / "build.json").write_text(
        json.dumps(
            {
                "name": name,
                "key": "0" * 64,  # what the builder's readers require of every build.json (its schema)
                "patched": name != "stock",
                "built_at": built_at,
                "config_fragment_sha256": vb._sha256(b"CONFIG_X=y\n"),
                "gcc": "gcc 12",
                "source_version": "v1",
            }
        )
    )
    return d


@pytest.fixture
def pristine(tmp_path):
    return _write(tmp_path / "pristine", PRISTINE)


HDR = "include/linux/mm.h"


def test_series_contents_applies_only_the_files_the_series_names(tmp_path, pristine):
    series = _series(tmp_path / "s", {"mm/a.c": "int a;\nint B;\nint c;\n", "mm/new.c": "new\n", "fs/d.c": None})
    got = vb.series_contents(pristine, series, tmp_path / "scratch")
    assert got == {"mm/a.c": b"int a;\nint B;\nint c;\n", "mm/new.c": b"new\n", "fs/d.c": None}
    assert not (tmp_path / "scratch").exists(), "the scratch copy is removed"
    assert (pristine / "mm/a.c").read_text() == PRISTINE["mm/a.c"], "the pristine tree is never touched"


def test_the_sibling_with_the_fewest_differing_files_is_chosen(tmp_path, pristine):
    kernels = tmp_path / "kernels"
    one_line = {HDR: "struct mm;\nint x;\nint hint;\n", "mm/a.c": "int a;\nint HINT;\nint c;\n"}
    siblings = {
        "stock": _sibling(kernels, "stock", {}),
        "patched": _sibling(kernels, "patched", one_line),
        "other": _sibling(kernels, "other", {"fs/d.c": "alpha\nBETA\n"}),
    }
    # the new series: patched's, with one more line changed in mm/a.c
    new = vb.series_contents(
        pristine, _series(tmp_path / "s", {**one_line, "mm/a.c": "int a;\nint HINT2;\nint c;\n"}), tmp_path / "scratch"
    )
    best, ranked = vb.closest_seed(new, siblings, pristine)
    assert best.name == "patched" and best.differing == ("mm/a.c",), "the header both series change is the same"
    by_name = {c.name: c for c in ranked}
    assert by_name["stock"].differing == (HDR, "mm/a.c")
    assert by_name["other"].differing == ("fs/d.c", HDR, "mm/a.c"), "a file only the sibling changed differs too"
    assert [c.name for c in ranked] == ["patched", "stock", "other"]


def test_a_differing_header_weighs_more_than_several_c_files(tmp_path, pristine):
    kernels = tmp_path / "kernels"
    siblings = {
        "header": _sibling(kernels, "header", {HDR: "struct mm;\nint y;\n"}),
        "three-c": _sibling(kernels, "three-c", {"mm/a.c": "A\n", "mm/b.c": "B\n", "mm/c.c": "C\n"}),
    }
    best, ranked = vb.closest_seed({}, siblings, pristine)
    assert best.name == "three-c", "three .c files to recompile beat one header that most objects include"
    assert ranked[1].weight == vb.HEADER_WEIGHT and best.weight == 3


def test_a_tie_goes_to_the_newest_build(tmp_path, pristine):
    kernels = tmp_path / "kernels"
    siblings = {
        "candidate-old": _sibling(kernels, "candidate-old", {"mm/a.c": "old\n"}, "2026-12-03T10:00:00Z"),
        "candidate-new": _sibling(kernels, "candidate-new", {"mm/a.c": "newer\n"}, "2026-12-03T11:00:00Z"),
    }
    best, _ = vb.closest_seed({"mm/a.c": b"newest\n"}, siblings, pristine)
    assert best.name == "candidate-new"


def test_among_siblings_differing_in_the_same_file_the_nearer_content_wins(tmp_path, pristine):
    """A one-line edit of a series: the series itself beats a newer mutant of it that rewrote more lines."""
    kernels = tmp_path / "kernels"
    series_a = "int a;\nint HINT;\nint c;\n"
    siblings = {
        "patched": _sibling(kernels, "patched", {"mm/a.c": series_a}, "2026-12-03T10:00:00Z"),
        "mutant": _sibling(kernels, "mutant", {"mm/a.c": "int a;\nint MUT;\nint MUT2;\n"}, "2026-12-03T12:00:00Z"),
    }
    best, ranked = vb.closest_seed({"mm/a.c": ("/* edit */\n" + series_a).encode()}, siblings, pristine)
    assert [c.differing for c in ranked] == [("mm/a.c",), ("mm/a.c",)], "both differ in the one file"
    assert best.name == "patched" and best.changed_lines == 1
    assert ranked[1].changed_lines == 5, "the mutant: two lines removed, two put back, the edit added"


def test_auto_seed_compares_trees_with_the_instrumentation_applied(tmp_path, pristine):
    """Every built tree carries the instrumentation series: it must not count as a difference against any."""
    kernels = tmp_path / "kernels"
    instr_files = {"mm/b.c": "one\ntwo\nthree\nPTE\n", "mm/pte.c": "pte\n"}
    edit = "int a;\nint HINT;\nint c;\n"
    _sibling(kernels, "patched", {"mm/a.c": edit, **instr_files}, "2026-12-03T10:00:00Z")
    _sibling(kernels, "mutant", {"mm/a.c": "int a;\nint MUT;\nint c;\n", **instr_files}, "2026-12-03T12:00:00Z")
    series = _series(tmp_path / "s", {"mm/a.c": edit + "int edit;\n"})
    instrumentation = _series(tmp_path / "instr", instr_files)
    kb = vb.KernelBuild(
        name="candidate-new",
        path=kernels / "candidate-new" / "bzImage",
        key="k",
        uapi_header=Path("/nonexistent"),
        patched=True,
        directory=kernels / "candidate-new",
        selftests_dir=kernels / "candidate-new" / "selftests",
    )
    kb.directory.mkdir()
    lines = []
    seed = vb._seed_source(
        kb,
        "auto",
        "CONFIG_X=y\n",
        "gcc 12",
        "v1",
        lines.append,
        patches=series,
        pristine=pristine,
        instrumentation=instrumentation,
    )
    assert seed == kernels / "patched", lines
    assert "1 file(s) differ (mm/a.c)" in lines[0], lines


def test_auto_seed_names_the_sibling_and_how_many_files_differ(tmp_path, pristine, monkeypatch):
    kernels = tmp_path / "kernels"
    fragment = "CONFIG_X=y\n"
    _sibling(kernels, "stock", {})
    _sibling(kernels, "patched", {HDR: "struct mm;\nint x;\nint hint;\n"})
    unfit = _sibling(kernels, "candidate-unfit", {HDR: "struct mm;\nint x;\nint hint;\n", "mm/a.c": "z\n"})
    info = json.loads((unfit / "build.json").read_text())
    (unfit / "build.json").write_text(json.dumps({**info, "gcc": "gcc 13"}))
    series = _series(tmp_path / "s", {HDR: "struct mm;\nint x;\nint hint;\n", "mm/a.c": "z\n"})
    kb = vb.KernelBuild(
        name="candidate-new",
        path=kernels / "candidate-new" / "bzImage",
        key="k",
        uapi_header=Path("/nonexistent"),
        patched=True,
        directory=kernels / "candidate-new",
        selftests_dir=kernels / "candidate-new" / "selftests",
    )
    kb.directory.mkdir()
    lines = []
    seed = vb._seed_source(kb, "auto", fragment, "gcc 12", "v1", lines.append, patches=series, pristine=pristine)
    assert seed == kernels / "patched", "candidate-unfit matches best but was built with another compiler"
    assert lines == [
        "[vm] candidate-new: seeding from 'patched', the closest of 2 built kernel(s): 1 file(s) "
        "differ (mm/a.c); files differing from the next: stock 2"
    ]
    assert sorted(p.name for p in kb.directory.iterdir()) == [], "no scratch copy is left behind"


def test_a_series_that_does_not_apply_seeds_from_the_control(tmp_path, pristine):
    kernels = tmp_path / "kernels"
    _sibling(kernels, "stock", {})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "0001.patch").write_text(_diff("mm/a.c", "not\nwhat\nis there\n", "x\n"))
    kb = vb.KernelBuild(
        name="candidate-bad",
        path=kernels / "x",
        key="k",
        uapi_header=Path("/n"),
        patched=True,
        directory=kernels / "candidate-bad",
        selftests_dir=kernels / "x",
    )
    kb.directory.mkdir()
    lines = []
    seed = vb._seed_source(
        kb, "auto", "CONFIG_X=y\n", "gcc 12", "v1", lines.append, patches=vb.read_series(bad), pristine=pristine
    )
    assert seed == kernels / "stock" and "seeding from 'stock'" in lines[0]


def _built(kernels: Path, name: str, built_at: str, size: int = 0) -> Path:
    d = kernels / name
    (d / "obj").mkdir(parents=True)
    (d / "build.json").write_text(json.dumps({"key": "0" * 64, "patched": True, "built_at": built_at}))
    if size:
        (d / "obj" / "vmlinux").write_bytes(os.urandom(size))
    return d


def test_prune_keeps_the_newest_candidates_and_never_stock_or_patched(tmp_path):
    kernels = tmp_path / "kernels"
    for name in ("stock", "patched", "mutant-young-only"):
        _built(kernels, name, "2026-01-01T00:00:00Z")
    for i in range(5):
        _built(kernels, f"candidate-{i}", f"2026-12-03T1{i}:00:00Z")
    removed = vb.prune_candidates(kernels, keep=2, log=lambda m: None)
    assert sorted(removed) == ["candidate-0", "candidate-1", "candidate-2"]
    assert sorted(p.name for p in kernels.iterdir()) == [
        "candidate-3",
        "candidate-4",
        "mutant-young-only",
        "patched",
        "stock",
    ]


def test_prune_never_removes_the_newest_or_the_build_just_made(tmp_path):
    kernels = tmp_path / "kernels"
    for i in range(3):
        _built(kernels, f"candidate-{i}", f"2026-12-03T1{i}:00:00Z")
    removed = vb.prune_candidates(kernels, keep=1, keep_name="candidate-0", log=lambda m: None)
    assert removed == ["candidate-1"], "candidate-2 is the newest and candidate-0 was just built"


def test_prune_by_size_removes_the_oldest_first(tmp_path, monkeypatch):
    kernels = tmp_path / "kernels"
    for i in range(4):
        _built(kernels, f"candidate-{i}", f"2026-12-03T1{i}:00:00Z", size=1 << 20)
    lines = []
    removed = vb.prune_candidates(kernels, keep=10, max_mb=3, log=lines.append)
    assert removed == ["candidate-0", "candidate-1"]
    assert "within 3 MB" in lines[0] and "UFFD_HARNESS_CANDIDATES_MAX_MB" in lines[0]
    # and the limits come from the environment by default
    monkeypatch.setenv("UFFD_HARNESS_KEEP_CANDIDATES", "1")
    assert vb.prune_candidates(kernels, log=lambda m: None) == ["candidate-2"]


# -- real builds -------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str], touched: list[str]) -> Path:
    for rel, text in files.items():
        (root / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "src" / rel).write_text(text)
    (root / "obj").mkdir(parents=True, exist_ok=True)
    (root / "obj" / ".config").write_text("CONFIG_X=y\n")
    (root / "src-state.json").write_text(json.dumps({"touched": touched}))
    return root


@pytest.mark.parametrize(
    "rel, alike",
    [("mm/mprotect.c", True), ("mm/Kconfig", False), ("kernel/configs/tiny.config", False), ("Makefile", False)],
)
def test_a_seed_configuration_is_reused_only_when_no_kconfig_input_differs(tmp_path, rel, alike):
    seed = _tree(tmp_path / "seed", {rel: "old\n"}, [rel])
    kdir = _tree(tmp_path / "new", {rel: "new\n"}, [rel])
    assert vb._config_inputs_alike(seed, kdir) is alike


def test_a_seed_without_its_configuration_is_configured_again(tmp_path):
    seed = _tree(tmp_path / "seed", {"mm/mprotect.c": "a\n"}, ["mm/mprotect.c"])
    kdir = _tree(tmp_path / "new", {"mm/mprotect.c": "b\n"}, ["mm/mprotect.c"])
    (kdir / "obj" / ".config").unlink()
    assert not vb._config_inputs_alike(seed, kdir)


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_one_line_edits_seed_from_the_closest_build_and_rebuild_little(tmp_path):
    """Two successive edits of one .c file of vm/patches: the first seeds from 'patched', the second from the first."""
    for needed in ("stock", "patched"):
        if not (vb.BUILD_DIR / "kernels" / needed / "build.json").exists():
            pytest.skip(f"kernel '{needed}' is not built (make kernel KERNEL={needed})")
    names = []
    try:
        for i in range(2):
            series = tmp_path / f"edit{i}"
            shutil.copytree(vb.DEFAULT_PATCHES, series)
            # one more patch after the series: comment lines in mm/mprotect.c (one .c file differs); the
            # second edit keeps the first's line and adds one, as a developer's next edit does, so the
            # first candidate is closer to it (one changed line) than 'patched' (two)
            base = (vb.BUILD_DIR / "kernels" / "patched" / "src" / "mm" / "mprotect.c").read_text()
            lines_of = base.splitlines(True)
            comments = [f"/* uffd-harness seed test, edit {n} */\n" for n in range(1, i + 2)]
            edited = "".join(lines_of[:1] + comments + lines_of[1:])
            (series / "9999-seed-test.patch").write_text(_diff("mm/mprotect.c", base, edited))
            if (series / "series").exists():
                with open(series / "series", "a") as f:
                    f.write("9999-seed-test.patch\n")
            name = f"candidate-seedtest-{i}"
            names.append(name)
            shutil.rmtree(vb.BUILD_DIR / "kernels" / name, ignore_errors=True)
            lines = []
            t0 = time.monotonic()
            kb = vb.build_kernel(name, series, progress=False, log=lines.append)
            seconds = time.monotonic() - t0
            info = kb.info
            want = "patched" if i == 0 else names[0]
            assert info["seeded_from"] == want, "\n".join(lines)
            seed_line = next(line for line in lines if "seeding from" in line)
            assert f"seeding from '{want}'" in seed_line and "1 file(s) differ (mm/mprotect.c)" in seed_line
            assert f"configuration as '{want}' (no Kconfig file differs)" in "\n".join(lines), "\n".join(lines)
            print(f"{name}: seeded from {want}, {seconds:.0f} s; {seed_line}")
    finally:
        for name in names:
            shutil.rmtree(vb.BUILD_DIR / "kernels" / name, ignore_errors=True)
