"""The guest commands given bad input: refused before any build or boot, in one line.

No kernel is built and no guest booted here: build.json and the pristine
tree are stand-ins in tmp_path.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from harness.cli import main
from harness.errors import DocumentError
from harness.vm import build as vmbuild
from harness.vm.errors import KernelNotBuilt, PatchApplyError, VmError

#: no kernel of its own to check: stand-ins in tmp_path (guest suites deselect host_only)
pytestmark = pytest.mark.host_only


def run_cli(argv, capsys):
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--cpus", "-3"], "--cpus"),
        (["--cpus", "x"], "--cpus"),
        (["--memory", "banana"], "--memory"),
        (["--memory", "0"], "--memory"),
        (["--hugepages", "-7"], "--hugepages"),
        (["--timeout", "nan"], "--timeout"),
        (["--timeout", "-1"], "--timeout"),
    ],
)
def test_vm_run_refuses_values_qemu_would_choke_on(capsys, argv, says):
    status, err = run_cli(["vm", "run", "--kernel", "stock", *argv, "--dry-run", "--", "true"], capsys)
    assert status == 2 and says in err and "Traceback" not in err, err


BUILD_JSONS = {
    "garbage": "{not json",
    "empty": "",
    "no-key": json.dumps({"patched": False}),
    "list": "[]",
    "key-not-hex": json.dumps({"key": "x" * 64, "patched": False}),
    "patched-string": json.dumps({"key": "0" * 64, "patched": "no"}),
    "binary": "\udcff\udcfe",
}


@pytest.fixture
def kernel_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(vmbuild, "BUILD_DIR", tmp_path)
    kdir = tmp_path / "kernels" / "k"
    kdir.mkdir(parents=True)
    (kdir / "bzImage").write_bytes(b"")
    return kdir


@pytest.mark.parametrize("case", sorted(BUILD_JSONS))
@pytest.mark.parametrize("verb", [["vm", "info", "--kernel", "k"], ["vm", "run", "--kernel", "k", "--", "true"]])
def test_a_corrupt_build_json_is_one_line_naming_it(kernel_dir, capsys, case, verb):
    (kernel_dir / "build.json").write_bytes(BUILD_JSONS[case].encode("utf-8", "surrogateescape"))
    status, err = run_cli(verb, capsys)
    assert status == KernelNotBuilt.exit_status, err
    assert "Traceback" not in err and str(kernel_dir / "build.json") in err and "vm build --kernel k" in err, err


def test_a_good_build_json_loads(kernel_dir):
    (kernel_dir / "build.json").write_text(json.dumps({"key": "0" * 64, "patched": True}))
    assert vmbuild.load_kernel("k").patched


def test_vm_build_patches_naming_a_file_says_so(tmp_path):
    patch = tmp_path / "one.patch"
    patch.write_text("")
    with pytest.raises(VmError, match="a file, not a directory"):
        vmbuild.read_series(patch)


@pytest.mark.parametrize("case", ["a-file", "series-binary", "series-dir", "missing-patch", "empty-dir"])
def test_vm_build_with_a_bad_series_is_one_line_and_exit_2_before_the_host_is_touched(
    tmp_path, monkeypatch, capsys, case
):
    """Bad --patches is bad input (exit 2, as validate --patches says it), found before any package is installed."""
    monkeypatch.setattr(vmbuild, "check_host", lambda *a, **k: pytest.fail("the host was checked (apt) first"))
    monkeypatch.setattr(vmbuild, "_build_locked", lambda *a, **k: pytest.fail("a kernel was built"))
    d = tmp_path / "series-dir"
    d.mkdir()
    if case == "a-file":
        d = d / "one.patch"
        d.write_text(_patch("two", "2"))
    elif case == "series-binary":
        (d / "series").write_bytes(b"\x00\xff\xfe\x00")
    elif case == "series-dir":
        (d / "series").mkdir()
    elif case == "missing-patch":
        (d / "series").write_text("nope.patch\n")
    status, err = run_cli(["vm", "build", "--kernel", "mine", "--patches", str(d)], capsys)
    lines = err.splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("uffd-harness vm build: ") and str(d) in lines[0], err


# -- the series, checked before anything is built ------------------------------------------------


@pytest.fixture
def pristine(tmp_path, monkeypatch):
    """A pristine tree of one file, where check_series looks for it."""
    monkeypatch.setattr(vmbuild, "BUILD_DIR", tmp_path / "build")
    tree = tmp_path / "build" / "cache" / "src" / vmbuild.SOURCE_DIRNAME
    (tree / "mm").mkdir(parents=True)
    (tree / "mm" / "a.c").write_text("one\ntwo\nthree\n")
    (tree / ".uffd-harness-pristine").write_text("fake")
    return tree


def _patch(old: str, new: str) -> str:
    return textwrap.dedent(f"""\
        --- a/mm/a.c
        +++ b/mm/a.c
        @@ -1,3 +1,3 @@
         one
        -{old}
        +{new}
         three
        """)


def _series(tmp_path, *patches: str, series: str | None = None):
    d = tmp_path / "series-dir"
    d.mkdir()
    for i, text in enumerate(patches):
        (d / f"{i:04d}.patch").write_text(text)
    if series is not None:
        (d / "series").write_text(series)
    return d


def test_check_series_applies_a_good_series_in_order(tmp_path, pristine):
    d = _series(tmp_path, _patch("two", "2"), _patch("2", "II"))
    assert [p.name for p in vmbuild.check_series(d)] == ["0000.patch", "0001.patch"]
    assert (pristine / "mm" / "a.c").read_text() == "one\ntwo\nthree\n", "the pristine tree was changed"


def test_check_series_finds_a_patch_that_does_not_apply(tmp_path, pristine):
    d = _series(tmp_path, _patch("two", "2"), _patch("two", "II"))
    with pytest.raises(PatchApplyError, match="0001.patch does not apply"):
        vmbuild.check_series(d)


@pytest.mark.parametrize("case", ["empty-dir", "missing-patch", "series-binary", "series-dir", "not-a-diff"])
def test_check_series_refuses_a_broken_series(tmp_path, pristine, case):
    if case == "empty-dir":
        d = _series(tmp_path)
    elif case == "missing-patch":
        d = _series(tmp_path, series="nope.patch\n")
    elif case == "series-binary":
        d = _series(tmp_path)
        (d / "series").write_bytes(b"\x00\xff\xfe\x00")
    elif case == "series-dir":
        d = _series(tmp_path)
        (d / "series").mkdir()
    else:
        d = _series(tmp_path, "hello\n")
    with pytest.raises(VmError) as info:
        vmbuild.check_series(d)
    assert "\n" not in str(info.value) and str(d) in str(info.value), str(info.value)


@pytest.mark.parametrize("case", ["does-not-apply", "not-a-diff", "series-binary", "series-dir"])
def test_validate_refuses_a_broken_series_before_any_build(tmp_path, pristine, monkeypatch, case):
    """validate --patches D applies D's series to a scratch tree first: one line, exit 2, nothing built."""
    from harness.validate import run

    if case == "does-not-apply":
        d = _series(tmp_path, _patch("two", "2"), _patch("two", "II"))
    elif case == "not-a-diff":
        d = _series(tmp_path, "hello\n")
    elif case == "series-binary":
        d = _series(tmp_path)
        (d / "series").write_bytes(b"\x00\xff\xfe\x00")
    else:
        d = _series(tmp_path)
        (d / "series").mkdir()
    monkeypatch.setattr(vmbuild, "check_host", lambda *a, **k: None)
    monkeypatch.setattr(vmbuild, "build_kernel", lambda *a, **k: pytest.fail("validate built a kernel"))
    lines: list[str] = []
    assert run.validate(d, results=tmp_path / "results", log=lines.append) == 2
    assert len(lines) == 1 and f"--patches {d}" in lines[0], lines


def test_document_error_is_a_value_error_naming_the_file(tmp_path):
    """What the command line's boundary relies on to print it as one line with exit status 2."""
    from harness.vm.documents import load_build_info

    (tmp_path / "build.json").write_text("[]")
    with pytest.raises(DocumentError) as info:
        load_build_info(tmp_path / "build.json")
    assert isinstance(info.value, ValueError) and str(tmp_path / "build.json") in str(info.value)


@pytest.mark.parametrize("content", ["[]", "{", "null", json.dumps({"key": 5, "patched": False})])
def test_a_corrupt_build_json_means_rebuild_not_a_traceback(kernel_dir, content):
    """build_kernel's cache check (_is_current) reads build.json too: a corrupt one is "not current"."""
    (kernel_dir / "build.json").write_text(content)
    (kernel_dir / "uapi").mkdir()
    kb = vmbuild.KernelBuild(
        name="k",
        path=kernel_dir / "bzImage",
        key="0" * 64,
        uapi_header=kernel_dir / "bzImage",
        patched=False,
        directory=kernel_dir,
        selftests_dir=kernel_dir,
    )
    for tool in vmbuild.SELFTESTS:
        (kernel_dir / tool).write_text("")
    assert vmbuild._is_current(kb) is False


@pytest.mark.parametrize("content", ["[]", "{", "null", '"x"'])
def test_a_corrupt_kvm_probe_cache_is_probed_again(tmp_path, monkeypatch, content):
    from harness.vm import runner

    monkeypatch.setattr(runner, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(runner.os.path, "exists", lambda p: True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kvm-probe.json").write_text(content)
    probed = []

    class NoQemu(Exception):
        pass

    def popen(*a, **k):
        probed.append(a)
        raise NoQemu

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    monkeypatch.setattr(runner, "_probe_cache_key", lambda: "k")
    with pytest.raises(NoQemu):
        runner.probe_kvm(tmp_path / "bzImage")
    assert probed, "the corrupt cache was not ignored"


@pytest.mark.parametrize(
    "verb", [["validate", "--tree"], ["suite", "--kernel", "k", "--source"]], ids=["tree", "source"]
)
def test_a_file_given_for_a_tree_says_it_is_a_file(tmp_path, capsys, verb):
    """Like vm build --patches FILE: a path that exists must not be called missing."""
    path = tmp_path / "linux.tar"
    path.write_text("")
    status, err = run_cli([*verb, str(path)], capsys)
    assert status == 2 and "Traceback" not in err and f"{path}: a file, not a directory" in err, err
