"""Kernel sources as a parameter, without building anything: resolving --source, the config fragment
against a version's Kconfig, the selftests a tree has, and 6.1's monolithic userfaultfd output."""

from __future__ import annotations

import pytest

from harness.selftests import parse_userfaultfd, selftests_of_tree
from harness.vm import build as vb
from harness.vm import sources

#: kernel source trees and tarballs: the same on any kernel (guest suites deselect host_only)
pytestmark = pytest.mark.host_only


def _tree(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_default_source_keeps_612_names_and_identity():
    src = sources.resolve(None)
    assert src.version == "6.12" and src.kernel_name("stock") == "stock" and src.kernel_name("patched") == "patched"
    assert src.default_series == sources.SERIES_DIRS["6.12"] and src.default_series.name == "patches"
    assert src.identity.startswith("linux-source-6.12") or src.identity.startswith("linux-source-6.12.tar.xz")
    assert src.config_addendum is None


def test_61_is_its_own_pair_with_its_own_series_and_addendum():
    src = sources.resolve("6.1")
    assert (src.kernel_name("stock"), src.kernel_name("patched")) == ("stock-6.1", "patched-6.1")
    assert src.default_series.name == "patches-6.1" and (src.default_series / "series").exists()
    assert src.config_addendum is not None and "CONFIG_INET=y" in src.config_addendum.read_text()
    assert src.requirements[str(sources.debian_tarball("6.1"))] == "linux-source-6.1"


@pytest.mark.parametrize(
    "spec,message", [("5.10", "no Debian tarball for 5.10"), ("/no/such/dir", "no such directory")]
)
def test_bad_source_is_one_line(spec, message):
    with pytest.raises(sources.SourceError, match=message) as exc:
        sources.resolve(spec)
    assert exc.value.exit_status == 2 and "\n" not in str(exc.value)


def test_a_directory_that_is_not_a_kernel_is_named(tmp_path):
    _tree(tmp_path, {"Makefile": "all:\n"})
    with pytest.raises(sources.SourceError, match="not a Linux kernel tree .no Kconfig, mm/mprotect.c"):
        sources.resolve(str(tmp_path))


def test_config_options_split_into_absent_and_not_applied(tmp_path):
    _tree(tmp_path, {"Kconfig": "config A\n\tbool\nmenuconfig B\n\tbool\n", "fs/Kconfig.binfmt": "config C\n\tbool\n"})
    symbols = vb.kconfig_symbols(tmp_path)
    assert symbols == {"CONFIG_A", "CONFIG_B", "CONFIG_C"}
    fragment = vb.parse_config("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_NEW_IN_612=y\n")
    final = vb.parse_config("CONFIG_A=y\n# CONFIG_B is not set\n")
    assert vb.classify_config(fragment, final, symbols) == {
        "absent": ["CONFIG_NEW_IN_612=y"],
        "not_applied": ["CONFIG_B=y (got not set)"],
    }


def test_selftests_are_found_where_the_tree_keeps_them(tmp_path):
    old = _tree(
        tmp_path / "61", {"tools/testing/selftests/vm/userfaultfd.c": "", "tools/testing/selftests/vm/soft-dirty.c": ""}
    )
    new = _tree(
        tmp_path / "612",
        {
            f"tools/testing/selftests/mm/{t}.c": ""
            for t in ("uffd-unit-tests", "uffd-stress", "mkdirty", "pagemap_ioctl")
        },
    )
    assert selftests_of_tree(old) == (old / "tools/testing/selftests/vm", ["userfaultfd"])
    assert selftests_of_tree(new) == (
        new / "tools/testing/selftests/mm",
        ["uffd-unit-tests", "mkdirty", "pagemap_ioctl"],
    )


def test_61_userfaultfd_output_becomes_cases():
    out = (
        "nr_pages: 1024, nr_pages_per_cpu: 512\n"
        "bounces: 3, mode: rnd racing ver poll, userfaults: 12 missing (6+6)\n"
        "bounces: 0, mode:, userfaults: 3 missing (2+1)\n"
        "testing uffd-wp with pagemap (pgsize=4096): done\n"
        "testing UFFDIO_ZEROPAGE: done.\n"
        "testing events (fork, remap, remove): userfaults: 1 missing (1)\n"
        "testing minor faults: ERROR: register failure (errno=22, line=1352)\n"
    )
    cases = parse_userfaultfd(out, prefix="shmem: ")
    assert [(c.name, c.result) for c in cases] == [
        ("shmem: bounce 3 (rnd-racing-ver-poll)", "pass"),
        ("shmem: bounce 0 (plain)", "pass"),
        ("shmem: uffd-wp with pagemap (pgsize=4096)", "pass"),
        ("shmem: UFFDIO_ZEROPAGE", "pass"),
        ("shmem: events (fork, remap, remove)", "pass"),
        ("shmem: minor faults", "fail"),
    ]
    assert cases[-1].reason.startswith("register failure")


def test_a_tarball_is_unpacked_once_and_again_when_its_identity_changes(tmp_path):
    """untar_once: the one unpacker of both the default 6.12 tree and other tarballs."""
    import subprocess

    from harness.vm import sources

    (tmp_path / "src" / "linux-source-9.9").mkdir(parents=True)
    (tmp_path / "src" / "linux-source-9.9" / "Makefile").write_text("VERSION = 9\n")
    tarball = tmp_path / "t.tar.xz"
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(tmp_path / "src"), "linux-source-9.9"], check=True)
    lines: list[str] = []
    tree = sources.untar_once(tarball, "linux-source-9.9", tmp_path / "cache", "v1", lines.append)
    assert (tree / "Makefile").read_text() == "VERSION = 9\n"
    (tree / "Makefile").write_text("changed\n")
    assert sources.untar_once(tarball, "linux-source-9.9", tmp_path / "cache", "v1", lines.append) == tree
    assert (tree / "Makefile").read_text() == "changed\n", "the same identity must not unpack again"
    sources.untar_once(tarball, "linux-source-9.9", tmp_path / "cache", "v2", lines.append)
    assert (tree / "Makefile").read_text() == "VERSION = 9\n", "a new identity unpacks afresh"
    assert sum("unpacking" in line for line in lines) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["linux-source-9.9"], "no scratch left"
