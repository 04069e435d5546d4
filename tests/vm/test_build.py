"""The kernel builder's pieces that need no compiler run: series, patches,
config checks, the cache key, and a failing patch leaving the cache clean."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from harness.vm import PatchApplyError
from harness.vm import build as vb
from harness.vm.errors import BadInput, KernelNotBuilt


def _tree(root, files: dict[str, str]):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def _diff(old: str, new: str, rel: str) -> str:
    """A unified diff a/rel -> b/rel, as git format-patch writes it."""
    import difflib

    lines = difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{rel}", f"b/{rel}")
    return "".join(lines)


GOOD = {"mm/a.c": "int a;\nint b;\nint c;\n", "mm/b.c": "one\ntwo\nthree\n"}


def test_read_series_uses_series_file_in_order(tmp_path):
    for n in ("b.patch", "a.patch", "c.diff"):
        (tmp_path / n).write_text("")
    (tmp_path / "series").write_text("# comment\nb.patch -p1\n\nc.diff\n")
    assert [p.name for p in vb.read_series(tmp_path)] == ["b.patch", "c.diff"]


def test_read_series_without_series_file_sorts_patches(tmp_path):
    for n in ("0002-x.patch", "0001-y.patch", "notes.txt"):
        (tmp_path / n).write_text("")
    assert [p.name for p in vb.read_series(tmp_path)] == ["0001-y.patch", "0002-x.patch"]


def test_read_series_names_a_missing_patch(tmp_path):
    (tmp_path / "series").write_text("gone.patch\n")
    with pytest.raises(vb.VmError, match="gone.patch"):
        vb.read_series(tmp_path)


def test_parse_patch_failure_names_file_and_hunk():
    out = textwrap.dedent("""\
        checking file mm/mprotect.c
        Hunk #1 succeeded at 90 (offset 4 lines).
        checking file mm/userfaultfd.c
        Hunk #2 FAILED at 904.
        1 out of 2 hunks FAILED
        """)
    assert vb.parse_patch_failure(out) == ("mm/userfaultfd.c", "#2 (at line 904)")


def test_parse_patch_failure_missing_file():
    out = "can't find file to patch at input line 5\n"
    assert vb.parse_patch_failure(out)[1] == "file not found"


def test_config_mismatches_reports_unset_and_wrong_values():
    frag = vb.parse_config("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=8\n")
    final = vb.parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=4\n")
    assert vb.config_mismatches(frag, final) == ["CONFIG_B=y (got not set)", "CONFIG_C=n (got y)", "CONFIG_D=8 (got 4)"]


def test_cache_key_depends_on_every_input():
    base = ("6.12", [("p", "1")], "cfg", "gcc 12")
    k = vb.cache_key(*base)
    assert vb.cache_key(*base) == k
    assert vb.cache_key("6.13", *base[1:]) != k
    assert vb.cache_key(base[0], [("p", "2")], *base[2:]) != k
    assert vb.cache_key(*base[:2], "cfg2", base[3]) != k
    assert vb.cache_key(*base[:3], "gcc 13") != k


def test_failing_patch_is_named_and_leaves_no_tree(tmp_path):
    pristine = _tree(tmp_path / "pristine", GOOD)
    pdir = tmp_path / "series"
    pdir.mkdir()
    (pdir / "0001-ok.patch").write_text(_diff(GOOD["mm/a.c"], "int a;\nint B;\nint c;\n", "mm/a.c"))
    (pdir / "0002-bad.patch").write_text(_diff("one\nTWO\nthree\n", "one\n2\nthree\n", "mm/b.c"))
    kdir = tmp_path / "kernels" / "k"
    kdir.mkdir(parents=True)
    with pytest.raises(PatchApplyError) as exc:
        vb._prepare_source(pristine, kdir, vb.read_series(pdir), "key", log=lambda m: None)
    e = exc.value
    assert (e.patch, e.target) == ("0002-bad.patch", "mm/b.c")
    assert e.hunk and e.hunk.startswith("#1")
    assert "0002-bad.patch" in str(e) and "mm/b.c" in str(e)
    assert not (kdir / "src").exists() and not (kdir / "src.new").exists(), "a half-patched tree was left in the cache"
    assert (pristine / "mm/a.c").read_text() == GOOD["mm/a.c"], "pristine tree modified"


def test_patching_breaks_hard_links_and_rebuilds_reverted_files(tmp_path):
    pristine = _tree(tmp_path / "pristine", GOOD)
    pdir = tmp_path / "series"
    pdir.mkdir()
    (pdir / "0001.patch").write_text(_diff(GOOD["mm/a.c"], "int a;\nint B;\nint c;\n", "mm/a.c"))
    kdir = tmp_path / "kernels" / "k"
    kdir.mkdir(parents=True)
    src = vb._prepare_source(pristine, kdir, vb.read_series(pdir), "k1", log=lambda m: None)
    assert (src / "mm/a.c").read_text() == "int a;\nint B;\nint c;\n"
    assert (pristine / "mm/a.c").read_text() == GOOD["mm/a.c"], "pristine tree modified"
    assert os.stat(src / "mm/b.c").st_ino == os.stat(pristine / "mm/b.c").st_ino, (
        "unpatched files should stay hard links"
    )
    # The series changes to touch only b.c: a.c reverts to pristine content
    # but must get a new mtime so make recompiles it.
    (pdir / "0001.patch").write_text(_diff(GOOD["mm/b.c"], "one\n2\nthree\n", "mm/b.c"))
    before = os.stat(pristine / "mm/a.c").st_mtime_ns
    os.utime(pristine / "mm/a.c", ns=(before - 10**10, before - 10**10))
    src = vb._prepare_source(pristine, kdir, vb.read_series(pdir), "k2", log=lambda m: None)
    assert (src / "mm/a.c").read_text() == GOOD["mm/a.c"]
    assert os.stat(src / "mm/a.c").st_mtime_ns > os.stat(pristine / "mm/a.c").st_mtime_ns
    assert os.stat(src / "mm/a.c").st_ino != os.stat(pristine / "mm/a.c").st_ino


def test_missing_tool_names_the_package(monkeypatch):
    with pytest.raises(vb.MissingToolError) as exc:
        vb.check_host({"/nonexistent/tool-xyz": "some-package"}, install=False)
    assert exc.value.packages == ["some-package"]
    assert "apt-get install -y some-package" in str(exc.value)


@pytest.mark.vm
@pytest.mark.slow
def test_project_series_applies_to_pristine_tree(tmp_path):
    """vm/patches applies with patch -p1 to Debian's linux-source-6.12."""
    if not vb.SOURCE_TARBALL.exists():
        pytest.skip(f"{vb.SOURCE_TARBALL} missing: apt-get install -y {vb.SOURCE_PACKAGE}")
    pristine = vb.ensure_pristine(log=lambda m: None)  # ~15 s the first time
    patches = vb.read_series(vb.DEFAULT_PATCHES)
    assert len(patches) >= 4
    kdir = tmp_path / "k"
    kdir.mkdir()
    src = vb._prepare_source(pristine, kdir, patches, "t", log=lambda m: None)
    hdr = (src / "include/uapi/linux/userfaultfd.h").read_text()
    for sym in (
        "UFFD_FEATURE_ACCESS_HINTS",
        "UFFDIO_WRITEPROTECT_MODE_ACCESS_LIKELY",
        "UFFDIO_WRITEPROTECT_MODE_WRITE_LIKELY",
    ):
        assert sym in hdr, f"{sym} missing from the patched uapi header"
    assert "MM_CP_UFFD_WRITE_LIKELY" not in (pristine / "include/linux/mm.h").read_text(), (
        "patching modified the pristine tree"
    )


@pytest.mark.vm
def test_built_kernel_outputs():
    """build.json and the outputs of every kernel built so far are consistent."""
    kernels = vb.BUILD_DIR / "kernels"
    built = sorted(p.parent for p in kernels.glob("*/build.json")) if kernels.exists() else []
    if not built:
        pytest.skip("no kernel built yet: run `make kernel KERNEL=patched`")
    for kdir in built:
        info = json.loads((kdir / "build.json").read_text())
        assert (kdir / "bzImage").exists()
        hdr = (kdir / "uapi/linux/userfaultfd.h").read_text()
        if kdir.name == "stock":
            assert not info["patched"] and "UFFD_FEATURE_ACCESS_HINTS" not in hdr
        if kdir.name == "patched":
            assert info["patched"] and "UFFD_FEATURE_ACCESS_HINTS" in hdr
        for t in vb.SELFTESTS:
            assert os.access(kdir / "selftests" / t, os.X_OK), f"{kdir.name}: {t} not built"
        assert not info["config_missing"], f"{kdir.name}: {info['config_missing']}"
        if kdir.name in ("stock", "patched") and "pte_channel" in info:
            # vm/instrumentation applies to the project's own kernels
            assert info["instrumentation_applied"] and info["pte_channel"]["available"], info["pte_channel"]
            assert [i["file"] for i in info["instrumentation"]] == [
                p.name for p in vb.read_series(vb.INSTRUMENTATION_DIR)
            ]
        if "source_unpack_seconds" in info:  # build.json of this session on
            assert 0 <= info["source_unpack_seconds"] <= info["total_seconds"] - info["kernel_build_seconds"]


def test_cli_register_adds_vm_build_and_run():
    import argparse

    from harness.vm import cli

    parser = argparse.ArgumentParser(prog="uffd-harness")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["vm", "build", "--kernel", "stock", "--jobs", "2"])
    assert (args.vm_command, args.kernel, args.jobs) == ("build", "stock", 2)
    args = parser.parse_args(["vm", "run", "--kernel", "patched", "--timeout", "20", "--", "sh", "-c", "exit 7"])
    assert args.vm_command == "run" and args.timeout == 20.0
    assert args.argv[-3:] == ["sh", "-c", "exit 7"]
    assert callable(args.func)


def test_cli_names_an_unbuilt_kernel(capsys):
    from harness.vm import cli

    rc = cli.main(["run", "--kernel", "no-such-kernel", "--", "true"])
    from harness.vm.errors import KernelNotBuilt

    assert rc == KernelNotBuilt.exit_status
    assert "no-such-kernel" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, error",
    [
        (["vm", "build", "--kernel", "someones-series"], BadInput),  # no --patches: bad input, exit 2
        (["vm", "run", "--kernel", "no-such-kernel", "--", "true"], KernelNotBuilt),
    ],
)
def test_main_cli_reports_vm_errors_without_a_traceback(argv, error, capsys):
    """`uffd-harness vm ...` goes through harness.cli, not vm.cli.main: its
    errors must still come out as one line that says what to do."""
    from harness.cli import main

    assert main(argv) == error.exit_status
    err = capsys.readouterr().err
    assert err.startswith(f"uffd-harness {argv[0]} {argv[1]}: ") and "Traceback" not in err
    assert argv[3] in err


def test_unchanged_files_keep_their_mtime_across_series_changes(tmp_path):
    """Changing one patch must not make make rebuild files whose content
    stayed the same (e.g. include/linux/mm.h -> the whole kernel)."""
    pristine = _tree(tmp_path / "pristine", GOOD)
    pdir = tmp_path / "series"
    pdir.mkdir()
    a_new = "int a;\nint B;\nint c;\n"
    (pdir / "0001.patch").write_text(_diff(GOOD["mm/a.c"], a_new, "mm/a.c"))
    kdir = tmp_path / "kernels" / "k"
    kdir.mkdir(parents=True)

    def quiet(m):
        return None

    src = vb._prepare_source(pristine, kdir, vb.read_series(pdir), "k1", log=quiet)
    old_ns = 1_000_000_000_000_000_000
    os.utime(src / "mm/a.c", ns=(old_ns, old_ns))
    (pdir / "0002.patch").write_text(_diff(GOOD["mm/b.c"], "one\n2\nthree\n", "mm/b.c"))
    src = vb._prepare_source(pristine, kdir, vb.read_series(pdir), "k2", log=quiet)
    assert (src / "mm/a.c").read_text() == a_new
    assert os.stat(src / "mm/a.c").st_mtime_ns == old_ns, "unchanged a.c got a new mtime"
    assert os.stat(src / "mm/b.c").st_mtime_ns > old_ns
    assert (pristine / "mm/b.c").read_text() == GOOD["mm/b.c"]


# -- vm/instrumentation: applied after every series, never fatal -------------------------


def test_cache_key_depends_on_the_instrumentation():
    base = ("6.12", [("p", "1")], "cfg", "gcc 12")
    assert vb.cache_key(*base, instrumentation=[("i", "1")]) != vb.cache_key(*base, instrumentation=[("i", "2")])
    assert vb.cache_key(*base, instrumentation=[("i", "1")]) != vb.cache_key(*base)


def _instrumentation(tmp_path, old: str, new: str, rel: str = "mm/b.c"):
    idir = tmp_path / "instrumentation"
    idir.mkdir()
    (idir / "0001-instr.patch").write_text(_diff(old, new, rel))
    return vb.read_series(idir)


def test_instrumentation_is_applied_after_the_series(tmp_path):
    pristine = _tree(tmp_path / "pristine", GOOD)
    pdir = tmp_path / "series"
    pdir.mkdir()
    (pdir / "0001.patch").write_text(_diff(GOOD["mm/a.c"], "int a;\nint B;\nint c;\n", "mm/a.c"))
    kdir = tmp_path / "kernels" / "k"
    kdir.mkdir(parents=True)
    instr = _instrumentation(tmp_path, GOOD["mm/b.c"], "one\ntwo\nthree\nfour\n")
    src = vb._prepare_source(pristine, kdir, vb.read_series(pdir), "k1", log=lambda m: None, instrumentation=instr)
    assert (src / "mm/a.c").read_text() == "int a;\nint B;\nint c;\n"
    assert (src / "mm/b.c").read_text() == "one\ntwo\nthree\nfour\n"
    assert vb.instrumentation_state(kdir) == {"applied": True, "reason": None}
    assert (pristine / "mm/b.c").read_text() == GOOD["mm/b.c"], "pristine tree modified"


def test_instrumentation_that_does_not_apply_leaves_the_series_built_and_says_why(tmp_path):
    pristine = _tree(tmp_path / "pristine", GOOD)
    pdir = tmp_path / "series"
    pdir.mkdir()
    (pdir / "0001.patch").write_text(_diff(GOOD["mm/a.c"], "int a;\nint B;\nint c;\n", "mm/a.c"))
    kdir = tmp_path / "kernels" / "k"
    kdir.mkdir(parents=True)
    # a second patch that fails after the first applied: the tree must not keep the first
    instr = _instrumentation(tmp_path, GOOD["mm/b.c"], "one\ntwo\nthree\nfour\n")
    (instr[0].parent / "0002-bad.patch").write_text(_diff("x\ny\nz\n", "x\nY\nz\n", "mm/a.c"))
    (instr[0].parent / "series").write_text("0001-instr.patch\n0002-bad.patch\n")
    instr = vb.read_series(instr[0].parent)
    logged = []
    src = vb._prepare_source(pristine, kdir, vb.read_series(pdir), "k1", log=logged.append, instrumentation=instr)
    assert (src / "mm/a.c").read_text() == "int a;\nint B;\nint c;\n", "the series is applied"
    assert (src / "mm/b.c").read_text() == GOOD["mm/b.c"], "a half-applied instrumentation was left"
    state = vb.instrumentation_state(kdir)
    assert state["applied"] is False and "0002-bad.patch" in state["reason"] and "mm/a.c" in state["reason"]
    assert any("without the PTE channel" in line for line in logged)
    status = vb.pte_channel_status(state, tmp_path)
    assert status == {"available": False, "debugfs": vb.PTE_DEBUGFS, "reason": state["reason"]}


def test_pte_channel_status_needs_debugfs_and_the_object(tmp_path):
    applied = {"applied": True, "reason": None}
    (tmp_path / ".config").write_text("# CONFIG_DEBUG_FS is not set\n")
    assert "CONFIG_DEBUG_FS" in vb.pte_channel_status(applied, tmp_path)["reason"]
    (tmp_path / ".config").write_text("CONFIG_DEBUG_FS=y\n")
    assert vb.PTE_OBJECT in vb.pte_channel_status(applied, tmp_path)["reason"]
    (tmp_path / vb.PTE_OBJECT).parent.mkdir(parents=True)
    (tmp_path / vb.PTE_OBJECT).write_bytes(b"")
    assert vb.pte_channel_status(applied, tmp_path) == {"available": True, "debugfs": vb.PTE_DEBUGFS, "reason": None}


@pytest.mark.vm
@pytest.mark.slow
def test_instrumentation_applies_after_the_project_series(tmp_path):
    """vm/instrumentation applies to Debian's linux-source-6.12 alone (stock) and after vm/patches."""
    if not vb.SOURCE_TARBALL.exists():
        pytest.skip(f"{vb.SOURCE_TARBALL} missing: apt-get install -y {vb.SOURCE_PACKAGE}")
    pristine = vb.ensure_pristine(log=lambda m: None)
    instr = vb.read_series(vb.INSTRUMENTATION_DIR)
    for name, patches in (("stock", []), ("patched", vb.read_series(vb.DEFAULT_PATCHES))):
        kdir = tmp_path / name
        kdir.mkdir()
        src = vb._prepare_source(pristine, kdir, patches, name, log=lambda m: None, instrumentation=instr)
        assert vb.instrumentation_state(kdir) == {"applied": True, "reason": None}, name
        assert "uffd_harness_pte.o" in (src / "mm/Makefile").read_text()
        assert (src / "mm/uffd_harness_pte.c").exists()
    assert not (pristine / "mm/uffd_harness_pte.c").exists(), "patching modified the pristine tree"
