"""The simulator on its own: Linux 6.12 facts it must reproduce, errno behaviour, profiles, costs, CLI.

Each fact names the kernel function (or BRIEF section) it comes from; the
differential test checks the same model against the running kernel.
"""

from __future__ import annotations

import errno
import functools
import json
import signal

import pytest

from harness import abi
from harness.abi import Feature, RegisterMode
from harness.backends.sim import SimBackend
from harness.memory import PAGE_SIZE, PROT_READ, PROT_RW, MemoryKind
from harness.operations import HINT_COMBINATIONS, Hints
from harness.sim import profiles
from harness.sim.cost import CostModel
from harness.sim.model import Mm

ANON, SHMEM, SHMEM_PRIVATE = MemoryKind.ANON, MemoryKind.SHMEM, MemoryKind.SHMEM_PRIVATE


def sim(profile="linux-6.12", features=(), **kwargs) -> SimBackend:
    b = SimBackend(profile, **kwargs)
    b.api(features)
    return b


def raw(b, r):
    """The modelled PTE itself."""
    return b.observe(r, 0, "sim")


def errno_of(call) -> int:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


# -- BRIEF 2 and 3: what stock 6.12 does -----------------------------------------------


def test_free_then_unprotect_leaves_anon_pte_writable_old_clean():
    """BRIEF 3: write, MADV_FREE, protect, un-protect: present and writable but old and clean."""
    b = sim()
    r = b.create(ANON)
    b.write(r)
    b.madvise(r, "free")
    b.protect(r)
    assert raw(b, r).uffd_wp and not raw(b, r).writable
    b.unprotect(r)
    st = raw(b, r)
    assert (st.present, st.writable, st.young, st.dirty, st.uffd_wp) == (True, True, False, False, False)
    smaps = b.observe(r, 0, "smaps")
    assert (smaps.young, smaps.dirty) == (False, False)
    assert b.read(r) == 0 and b.observe(r, 0, "smaps").young and not b.observe(r, 0, "smaps").dirty
    assert b.write(r) == 0 and b.observe(r, 0, "smaps").dirty


def test_unprotect_never_write_upgrades_shmem_ptes():
    """vma_wants_manual_pte_write_upgrade() is false for shmem: uffd-wp already took
    the write bit out of vm_page_prot (seen on the patched 6.12 guest)."""
    b = sim()
    clean, dirty = b.create(SHMEM), b.create(SHMEM)
    b.read(clean)
    b.write(dirty)
    for r in (clean, dirty):
        b.protect(r)
        b.unprotect(r)
    assert not raw(b, clean).writable and not raw(b, clean).dirty
    assert not raw(b, dirty).writable and raw(b, dirty).dirty
    assert b.write(dirty) == 0 and b.events() == [] and raw(b, dirty).writable, (
        "the write takes an ordinary write fault (wp_page_shared()), not a uffd one"
    )


def test_unprotect_never_makes_private_page_cache_pte_writable():
    """can_change_pte_writable(): a private mapping needs an exclusive anonymous page."""
    b = sim()
    r = b.create(SHMEM_PRIVATE)
    b.read(r)
    b.protect(r)
    b.unprotect(r)
    st = raw(b, r)
    assert st.present and st.file_shared and not st.writable


def test_uffdio_copy_installs_dirty_young_writable_pte():
    """mfill_atomic_install_pte(): always pte_mkdirty(); writable with VM_WRITE; MODE_WP protects."""
    b = sim()
    plain, wp = b.create(ANON), b.create(ANON)
    assert b.copy(plain) == PAGE_SIZE
    assert b.copy(wp, wp=True) == PAGE_SIZE
    st = raw(b, plain)
    assert (st.present, st.young, st.dirty, st.writable, st.uffd_wp) == (True, True, True, True, False)
    st = raw(b, wp)
    assert (st.dirty, st.writable, st.uffd_wp) == (True, False, True)


def test_zeropage_maps_the_zero_page_which_smaps_does_not_count():
    b = sim()
    r = b.create(ANON)
    b.zeropage(r)
    st, smaps = raw(b, r), b.observe(r, 0, "smaps")
    assert st.present and not st.exclusive and not st.writable
    assert (smaps.young, smaps.dirty) == (False, False)
    assert b.write(r) == 0, "a write to the zero page COWs"
    assert raw(b, r).exclusive and raw(b, r).dirty and raw(b, r).writable


def test_write_to_protected_page_delivers_wp_fault_resolved_by_handler():
    b = sim()
    r = b.create(ANON)
    b.write(r)
    b.protect(r)
    assert b.write(r) == 0
    events = b.events()
    assert [(e.kind, e.write) for e in events] == [("wp", True)]
    assert not raw(b, r).uffd_wp and raw(b, r).dirty


def test_missing_fault_is_resolved_with_uffdio_copy():
    b = sim()
    r = b.create(ANON, register=RegisterMode.MISSING | RegisterMode.WP)
    assert b.read(r) == 0
    assert [(e.kind, e.write) for e in b.events()] == [("missing", False)]
    assert raw(b, r).dirty, "UFFDIO_COPY pages are dirty"


def test_markers_only_with_wp_unpopulated_for_anon_always_for_shmem():
    """userfaultfd_wp_use_markers()."""
    without = sim()
    r = without.create(ANON)
    without.protect(r)
    assert not raw(without, r).uffd_wp
    with_ = sim(features=(Feature.WP_UNPOPULATED,))
    r = with_.create(ANON)
    with_.protect(r)
    st = raw(with_, r)
    assert (st.present, st.swapped, st.uffd_wp) == (False, True, True)
    shm = without.create(SHMEM)
    without.protect(shm)
    assert raw(without, shm).uffd_wp
    assert errno_of(lambda: with_.zeropage(r)) == errno.EEXIST, "ZEROPAGE wants pte_none(), not a marker"
    assert with_.copy(r) == PAGE_SIZE, "COPY accepts pte_none_mostly(): a marker"


def test_dontneed_keeps_uffd_wp_as_marker_for_shmem_not_anon():
    """zap_install_uffd_wp_if_needed()."""
    b = sim()
    a, s = b.create(ANON), b.create(SHMEM)
    for r in (a, s):
        b.write(r)
        b.protect(r)
        b.madvise(r, "dontneed")
    assert not raw(b, a).uffd_wp and not raw(b, a).swapped
    assert raw(b, s).uffd_wp and raw(b, s).swapped and not raw(b, s).present
    assert b.read(s) == 0, "the page is still in the page cache"
    st = raw(b, s)
    assert st.present and st.uffd_wp and b.observe(s, 0, "smaps").dirty


def test_fork_write_protects_parent_and_unprotect_cannot_restore_write():
    """copy_present_ptes() and folio_try_dup_anon_rmap(): PageAnonExclusive is lost."""
    b = sim()
    r = b.create(ANON)
    b.write(r)
    b.fork()
    assert not raw(b, r).writable
    b.protect(r)
    b.unprotect(r)
    assert not raw(b, r).writable
    assert b.write(r) == 0 and b.events() == [] and raw(b, r).writable


def test_soft_dirty_tracking_blocks_write_upgrade():
    """clear_refs 4, then pte_needs_soft_dirty_wp() in can_change_pte_writable()."""
    b = sim(soft_dirty=True)
    r = b.create(ANON)
    b.write(r)
    assert raw(b, r).soft_dirty
    b.clear_refs(abi.CLEAR_REFS_SOFT_DIRTY)
    st = raw(b, r)
    assert not st.soft_dirty and not st.writable and st.dirty
    b.protect(r)
    b.unprotect(r)
    assert not raw(b, r).writable
    assert b.write(r) == 0 and raw(b, r).soft_dirty and raw(b, r).writable


def test_no_soft_dirty_without_the_config():
    b = sim(soft_dirty=False)
    r = b.create(ANON)
    b.write(r)
    b.clear_refs(abi.CLEAR_REFS_SOFT_DIRTY)
    assert not raw(b, r).soft_dirty and raw(b, r).writable


def test_pageout_with_swap_keeps_uffd_wp_and_swap_in_on_read_is_clean():
    b = sim(swap=True)
    r = b.create(ANON)
    b.write(r)
    b.protect(r)
    b.madvise(r, "pageout")
    st = raw(b, r)
    assert (st.present, st.swapped, st.uffd_wp) == (False, True, True)
    assert b.read(r) == 0
    st = raw(b, r)
    assert st.present and st.uffd_wp and not st.writable
    assert not b.observe(r, 0, "smaps").dirty, "a read swap-in leaves the folio clean in the swap cache"
    assert b.write(r) == 0 and [e.kind for e in b.events()] == ["wp"] and b.observe(r, 0, "smaps").dirty


def test_pageout_without_swap_leaves_anon_alone():
    b = sim(swap=False)
    r = b.create(ANON)
    b.write(r)
    b.madvise(r, "pageout")
    assert raw(b, r).present


def test_mprotect_read_only_then_write_is_sigsegv_and_rw_restores():
    b = sim()
    r = b.create(ANON)
    b.write(r)
    b.mprotect(r, PROT_READ)
    assert not raw(b, r).writable
    assert b.write(r) == signal.SIGSEGV
    b.mprotect(r, PROT_RW)
    assert raw(b, r).writable, "mprotect's MM_CP_TRY_CHANGE_WRITABLE upgrade of an exclusive anon page"


def test_clear_refs_clears_young_not_dirty():
    b = sim()
    r = b.create(ANON)
    b.write(r)
    b.clear_refs(abi.CLEAR_REFS_ALL)
    st = b.observe(r, 0, "smaps")
    assert (st.young, st.dirty) == (False, True)


# -- errno behaviour ------------------------------------------------------------------


def test_errnos_of_the_ioctls():
    b = sim(features=(Feature.WP_UNPOPULATED,))
    r = b.create(ANON)
    unreg = b.create(ANON, register=None)
    mm, start = b.mm, b.mm.vmas[r.index].start
    assert errno_of(lambda: mm.writeprotect(start + 1, PAGE_SIZE)) == errno.EINVAL, "unaligned"
    assert errno_of(lambda: mm.writeprotect(start, 0)) == errno.EINVAL, "empty"
    assert errno_of(lambda: b.protect(unreg)) == errno.ENOENT, "not registered"
    assert errno_of(lambda: b.copy(unreg)) == errno.ENOENT
    mode = abi.WRITEPROTECT_MODE_WP | abi.WRITEPROTECT_MODE_DONTWAKE
    assert errno_of(lambda: b.writeprotect(r, True, raw_mode=mode)) == errno.EINVAL, "WP + DONTWAKE"
    b.write(r)
    assert errno_of(lambda: b.copy(r)) == errno.EEXIST
    assert errno_of(lambda: b.zeropage(r)) == errno.EEXIST
    shm = b.create(SHMEM)
    assert errno_of(lambda: b.madvise(shm, "free")) == errno.EINVAL, "MADV_FREE is anon-only"
    missing_only = b.create(ANON, register=RegisterMode.MISSING)
    assert errno_of(lambda: b.copy(missing_only, wp=True)) == errno.EINVAL, "COPY MODE_WP needs WP registration"
    assert errno_of(lambda: b.api(())) == errno.EINVAL, "UFFDIO_API twice"


def test_shmem_copy_where_page_cache_has_a_page_is_eexist():
    """shmem_mfill_atomic_pte(): the page cache decides, not the PTE."""
    b = sim()
    r = b.create(SHMEM)
    b.write(r)
    b.madvise(r, "dontneed")
    assert not raw(b, r).present
    assert errno_of(lambda: b.copy(r)) == errno.EEXIST


@pytest.mark.parametrize("hints", HINT_COMBINATIONS, ids=lambda hints: hints.label)
def test_hint_bits_without_feature_are_einval_on_every_profile(hints):
    for name in profiles.PROFILES:
        b = sim(name)
        r = b.create(ANON)
        b.write(r)
        b.protect(r)
        unprotect = functools.partial(
            b.unprotect, r, access_likely=hints.access_likely, write_likely=hints.write_likely
        )
        assert errno_of(unprotect) == errno.EINVAL, name
        assert raw(b, r).uffd_wp, f"{name}: a rejected un-protect changed the PTE"


def test_stock_profile_refuses_access_hints_feature():
    b = SimBackend("linux-6.12")
    assert not b.has_feature(Feature.ACCESS_HINTS)
    assert errno_of(lambda: b.api((Feature.ACCESS_HINTS,))) == errno.EINVAL


# -- the access-hints profile -------------------------------------------------------------


def test_write_likely_dirties_what_it_makes_writable():
    b = sim("access-hints", (Feature.ACCESS_HINTS,))
    r = b.create(ANON)
    b.write(r)
    b.madvise(r, "free")
    b.protect(r)
    b.unprotect(r, write_likely=True)
    st = raw(b, r)
    assert (st.writable, st.young, st.dirty) == (True, True, True)


def test_access_likely_makes_young_only():
    b = sim("access-hints", (Feature.ACCESS_HINTS,))
    r = b.create(ANON)
    b.write(r)
    b.madvise(r, "free")
    b.protect(r)
    b.unprotect(r, access_likely=True)
    st = raw(b, r)
    assert (st.writable, st.young, st.dirty) == (True, True, False)


def test_hints_leave_clean_shared_pte_read_only_and_clean():
    b = sim("access-hints", (Feature.ACCESS_HINTS,))
    r = b.create(SHMEM)
    b.read(r)
    b.protect(r)
    b.unprotect(r, access_likely=True, write_likely=True)
    st = raw(b, r)
    assert (st.writable, st.young, st.dirty) == (False, True, False)


def test_hints_with_mode_wp_are_einval():
    b = sim("access-hints", (Feature.ACCESS_HINTS,))
    r = b.create(ANON)
    hints = abi.hint_abi()
    mode = abi.WRITEPROTECT_MODE_WP | hints.write_likely
    assert errno_of(lambda: b.writeprotect(r, True, raw_mode=mode)) == errno.EINVAL


def test_a_user_profile_can_be_registered_and_used():
    def always_young(pte, vma, hints, made_writable):
        pte.young = True

    mine = profiles.register(
        profiles.Profile(
            name="test-always-young",
            description="test",
            release="0-test",
            features=profiles.ACCESS_HINTS.features,
            check_wp_mode=profiles.hints_check_wp_mode,
            uffd_wp_resolve=always_young,
        )
    )
    try:
        b = sim("test-always-young", (Feature.ACCESS_HINTS,))
        r = b.create(ANON)
        b.write(r)
        b.madvise(r, "free")
        b.protect(r)
        b.unprotect(r, write_likely=True)
        assert raw(b, r).young and not raw(b, r).dirty
        assert b.profile == mine.name and b.kernel_release == "0-test"
    finally:
        profiles.PROFILES.pop("test-always-young")


# -- cost model -------------------------------------------------------------------------

CAL = {
    "schema": "uffd-harness/calibration/1",
    "models_hardware_assists": True,
    "tsc_hz": 2e9,
    "net_medians": {
        "first_touch.young_dirty.read.warm_tlb": 20,
        "first_touch.young_dirty.read": 70,
        "first_touch.old_dirty.read": 900,
        "first_touch.young_clean.write": 700,
        "first_touch.young_dirty.write": 50,
        "uffd.missing_roundtrip.py_handler": 27000,
    },
}


def test_cost_model_derives_parameters_from_calibration():
    m = CostModel.from_calibration(CAL, source="test")
    assert (m.base_access, m.tlb_walk, m.accessed_assist, m.dirty_assist, m.uffd_round_trip) == (
        20,
        50,
        830,
        650,
        27000,
    )
    assert m.assumed == ("minor_fault",)
    over = CostModel.from_calibration(dict(CAL, cost_model={"minor_fault": 1234}))
    assert over.minor_fault == 1234 and over.assumed == ()


def test_cost_model_defaults_when_no_file(tmp_path, monkeypatch):
    from harness.sim import cost

    # the default file is absolute (paths.CALIBRATION_JSON): a `make bench` of this checkout writes it
    monkeypatch.setattr(cost, "DEFAULT_CALIBRATION", tmp_path / "calibration.json")
    m = CostModel.load()
    assert m.source.startswith("defaults") and m.base_access + m.tlb_walk == 52


def test_cost_model_of_a_named_missing_file_is_an_error_not_the_defaults(tmp_path):
    from harness.errors import DocumentError

    with pytest.raises(DocumentError, match="missing.json: cannot read a calibration JSON: ENOENT"):
        CostModel.load(tmp_path / "missing.json")


def test_predicted_costs_follow_the_pte_state():
    model = CostModel.from_calibration(CAL)
    mm = Mm("access-hints")
    mm.api([Feature.ACCESS_HINTS])
    vma = mm.mmap(ANON, 1)
    mm.register(vma.start, PAGE_SIZE, RegisterMode.WP)
    first = model.access(mm, vma.start, True)
    assert first.faults == 1 and "minor_fault" in first.parts
    mm.madvise(vma, "free")
    clean = model.access(mm, vma.start, True)
    assert clean.parts.get("dirty_assist") == 650 and clean.faults == 0
    mm.madvise(vma, "free")
    mm.writeprotect(vma.start, PAGE_SIZE, True)
    mm.writeprotect(vma.start, PAGE_SIZE, False, write_likely=True)
    hinted = model.access(mm, vma.start, True)
    assert hinted.cycles == 70 and "dirty_assist" not in hinted.parts
    mm.writeprotect(vma.start, PAGE_SIZE, True)
    trip = model.access(mm, vma.start, True)
    assert trip.events == 1 and trip.parts["uffd_round_trip"] == 27000


# -- scenarios, CLI, bench -------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["linux-6.12", "access-hints"])
def test_every_scenario_runs(profile):
    from harness.sim import scenarios

    for name in scenarios.SCENARIOS:
        hints = Hints.BOTH if profiles.get(profile).offers_access_hints else Hints.NONE
        result = scenarios.run(name, profile, hints, CostModel())
        assert result.states and all(st.source == "sim" for st in result.states)


def test_scenario_shows_write_likely_saves_the_dirty_assist():
    from harness.sim import scenarios

    plain = scenarios.run("free-unprotect-write", "access-hints", Hints.NONE, CostModel())
    hinted = scenarios.run("free-unprotect-write", "access-hints", Hints.WRITE_LIKELY, CostModel())
    assert plain.steps[-1][1].cycles - hinted.steps[-1][1].cycles == CostModel().dirty_assist


def test_cli_sim_verbs(capsys):
    from harness.cli import main

    assert main(["sim", "profiles", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)}
    assert {"linux-6.12", "access-hints", "access-hints-young-only"} <= names
    assert main(["sim", "run", "free-unprotect-write", "--profile", "access-hints", "--hints", "W", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["states"][0]["dirty"] is True and doc["states"][0]["writable"] is True
    assert main(["sim", "run", "no-such-scenario"]) == 2
    assert main(["sim", "scenarios"]) == 0
    assert "rfc-loop" in capsys.readouterr().out


def test_bench_counts_page_operations():
    from harness.sim import bench

    result = bench.measure(seconds=0.05, npages=32)
    assert result["page_ops"] >= result["rounds"] * 2 * 32 * 5
    assert result["ops_per_second"] > 0


def test_pageout_discards_a_clean_madv_free_folio_even_without_swap():
    """try_to_unmap_one(): a lazyfree folio not written since MADV_FREE is dropped (found by the differential test)."""
    b = sim(swap=False)
    dropped, kept = b.create(ANON), b.create(ANON)
    for r in (dropped, kept):
        b.write(r)
        b.madvise(r, "free")
    b.read(dropped)
    b.write(kept)
    b.madvise(dropped, "pageout")
    b.madvise(kept, "pageout")
    assert not raw(b, dropped).present and not raw(b, dropped).swapped
    assert raw(b, kept).present and b.observe(kept, 0, "smaps").dirty


def test_young_is_unknown_after_access_through_a_possibly_stale_tlb_entry():
    """clear_refs 1 clears young with no TLB flush; the next access may not set it again
    (seen on the TCG guest).  A flush in between (MADV_FREE, protect) makes it certain."""
    b = sim()
    stale, flushed = b.create(SHMEM_PRIVATE), b.create(ANON)
    for r in (stale, flushed):
        b.write(r)
    b.clear_refs(abi.CLEAR_REFS_ALL)
    b.protect(flushed)  # write-protecting flushes the TLB entry
    b.unprotect(flushed)
    b.write(stale)
    b.write(flushed)
    assert b.uncertain_fields(stale) == {"young"}
    assert b.uncertain_fields(flushed) == frozenset()
    b.clear_refs(abi.CLEAR_REFS_ALL)
    assert b.uncertain_fields(stale) == frozenset(), "clearing young again makes it known"


def test_poison_marker_sigbus_and_eexist():
    """mfill_atomic_pte_poison(): only over pte_none(); accesses get SIGBUS; DONTNEED clears it."""
    b = sim(features=(Feature.WP_UNPOPULATED,))
    r, marked = b.create(ANON), b.create(ANON)
    assert b.poison(r) == PAGE_SIZE
    assert b.read(r) == signal.SIGBUS and b.write(r) == signal.SIGBUS
    st = raw(b, r)
    assert (st.present, st.swapped, st.uffd_wp) == (False, True, False)
    assert errno_of(lambda: b.poison(r)) == errno.EEXIST
    b.protect(marked)
    assert errno_of(lambda: b.poison(marked)) == errno.EEXIST, "not even over a uffd-wp marker"
    b.madvise(r, "dontneed")
    assert b.read(r) == 0


def test_user_profiles_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "myprofile.py"
    path.write_text(
        "from harness.sim import profiles\n"
        "profiles.register(profiles.Profile(name='env-test-profile', description='x', release='0-x'))\n"
    )
    monkeypatch.setenv(profiles.USER_PROFILES_ENV, str(path))
    monkeypatch.setattr(profiles, "_user_loaded", False)
    try:
        assert profiles.get("env-test-profile").release == "0-x"
    finally:
        profiles.PROFILES.pop("env-test-profile", None)


def test_move_makes_a_fresh_writable_young_pte_and_needs_exclusive_anon():
    """move_present_pte(): young, writable, dirty only if the source was; uffd-wp is not carried over."""
    b = sim()
    dst, src, other = b.create(ANON), b.create(ANON), b.create(ANON)
    b.write(src)
    b.madvise(src, "free")
    b.protect(src)
    assert b.move(dst, 0, src, 0) == PAGE_SIZE
    st = raw(b, dst)
    assert (st.present, st.young, st.dirty, st.writable, st.uffd_wp) == (True, True, False, True, False)
    assert not raw(b, src).present
    assert errno_of(lambda: b.move(dst, 0, other, 0)) == errno.EEXIST
    assert errno_of(lambda: b.move(other, 0, src, 0)) == errno.ENOENT
    assert b.move(other, 0, src, 0, allow_src_holes=True) == PAGE_SIZE
    b.fork()
    assert errno_of(lambda: b.move(other, 0, dst, 0)) == errno.EBUSY, "not PageAnonExclusive after fork"
    shm = b.create(SHMEM)
    assert errno_of(lambda: b.move(shm, 0, dst, 0)) == errno.EINVAL, "anonymous VMAs only"
