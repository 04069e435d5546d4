"""Stock Linux 6.1 (Debian's linux-source-6.1) as a second base.

The build adapts the config fragment (what 6.1's Kconfig lacks or cannot keep is recorded, not fatal),
finds 6.1's selftests in tools/testing/selftests/vm/ (the monolithic ``userfaultfd``), and the guest
runs that selftest with its output parsed into cases.  ``make vm-test KERNEL=stock SOURCE=6.1`` runs
the whole suite in the same guest.
"""

from __future__ import annotations

import json

import pytest

from harness import abi
from harness.vm import build as vmbuild
from harness.vm import sources

pytestmark = [pytest.mark.vm, pytest.mark.other_base, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def stock_61():
    src = sources.debian_source("6.1")
    try:
        vmbuild.check_host(src.requirements)  # apt-get installs linux-source-6.1 as root
    except vmbuild.MissingToolError as exc:
        pytest.skip(str(exc))
    return vmbuild.build_kernel("stock-6.1", source=src, log=print)


def test_stock_61_build_says_what_it_is_built_from(stock_61):
    info = stock_61.info
    assert info["source"]["debian_version"] == "6.1" and info["kernel_version"].startswith("6.1.")
    assert info["source_version"].startswith("linux-source-6.1 ")
    # 6.1 keeps its mm selftests in vm/ and has the monolithic userfaultfd, none of 6.12's three
    assert info["selftests_dir_in_tree"] == "tools/testing/selftests/vm"
    assert list(info["selftests"]) == ["userfaultfd"]
    # ZRAM needs a crypto compressor on 6.1 (not on 6.12): vm/kernel-6.1.config adds one, so the guest
    # has swap; whatever else 6.1 cannot keep is reported as not applied, not dropped, not fatal
    assert not any(o.startswith(("CONFIG_ZRAM=", "CONFIG_ZSMALLOC=")) for o in info["config_not_applied"]), info
    assert isinstance(info["config_absent"], list)
    assert set(info["config_missing"]) >= set(info["config_not_applied"])
    # the instrumentation travels with the harness: 6.1 gets the pte channel too
    assert info["instrumentation_applied"] and info["pte_channel"]["available"], info["pte_channel"]
    # the hint ABI comes from the tree: 6.1's header has none, so the feature is absent, never guessed
    assert abi.parse_uapi_header(stock_61.uapi_header).defined is False


def test_stock_61_is_keyed_apart_from_612(stock_61):
    stock_612_key = vmbuild.cache_key(
        sources.debian_source("6.12").identity, [], stock_61.info["config_fragment_sha256"], stock_61.info["gcc"]
    )
    assert stock_61.key != stock_612_key
    again = vmbuild.build_kernel("stock-6.1", source="6.1", log=print)
    assert again.cached and again.key == stock_61.key


def test_stock_61_guest_runs_its_userfaultfd_selftest(stock_61, tmp_path):
    from harness.vm.runner import check_runner_host, run_in_guest

    try:
        check_runner_host()
    except Exception as exc:  # noqa: BLE001 - MissingToolError and friends, with a message
        pytest.skip(f"cannot boot a guest: {exc}")
    script = (
        "import json, sys; from harness.selftests import run_userfaultfd; "
        f"r = run_userfaultfd('{stock_61.selftests_dir / 'userfaultfd'}', timeout=600); "
        f"open('{tmp_path / 'uffd.json'}', 'w').write(json.dumps(r.to_dict())); "
        f"open('{tmp_path / 'uffd.log'}', 'w').write(r.log)"
    )
    import sys

    res = run_in_guest(stock_61, [sys.executable, "-c", script], timeout=900, rwdir=tmp_path, log=print)
    assert res.returncode == 0
    run = json.loads((tmp_path / "uffd.json").read_text())
    log = (tmp_path / "uffd.log").read_text()
    names = [c["name"] for c in run["cases"]]
    # one run per memory type, each case named by it; the stress bounces and the feature tests all parsed
    for kind in ("anon", "shmem", "hugetlb"):
        assert any(n.startswith(f"{kind}: bounce ") for n in names), (kind, names, log[-2000:])
    assert "anon: UFFDIO_ZEROPAGE" in names and "shmem: minor faults" in names, names
    assert run["counts"]["fail"] == 0 and run["result"] == "pass", (run, log[-3000:])
