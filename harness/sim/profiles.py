"""Kernel profiles: what differs between the kernels the simulator can play.

A profile is data plus two small functions.  To model your own patch, make a
:class:`Profile` (copy one below and change what your patch changes) and
:func:`register` it in a module named by ``$UFFD_HARNESS_SIM_PROFILES``
(comma-separated module names or ``.py`` paths, imported on first use);
``uffd-harness sim profiles`` lists it, and ``--sim-profile NAME`` runs the
contract tests on it.

``check_wp_mode(mode, enabled, hints) -> errno or 0``
    Validation of the ``UFFDIO_WRITEPROTECT`` mode word, before any PTE is
    touched (``userfaultfd_writeprotect()`` in fs/userfaultfd.c).  ``hints``
    is the :class:`~harness.operations.Hints` the mode word carries.
``uffd_wp_resolve(pte, vma, hints, made_writable) -> None``
    Called by ``change_pte_range()`` (mm/mprotect.c) for every present PTE an
    un-protect visits, after the stock logic has decided whether the PTE is
    made writable; it may set ``pte.young`` / ``pte.dirty`` (use
    :func:`harness.sim.pgtable.pte_mkdirty` for the latter: on x86 it sets the
    soft-dirty bit too).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Callable, Optional

from harness import abi, paths
from harness.abi import Feature
from harness.errors import InvalidArgument
from harness.operations import Hints
from harness.sim.pgtable import pte_mkdirty

#: the features of stock Linux 6.12 (bits 0..16): every name but the patch's
STOCK_FEATURES = frozenset(f for f in Feature if f is not Feature.ACCESS_HINTS)


def stock_check_wp_mode(mode: int, enabled: frozenset, hints: Hints) -> int:
    """userfaultfd_writeprotect() in 6.12: only MODE_WP and MODE_DONTWAKE are known."""
    if mode & ~(abi.WRITEPROTECT_MODE_WP | abi.WRITEPROTECT_MODE_DONTWAKE):
        return errno.EINVAL
    if mode & abi.WRITEPROTECT_MODE_WP and mode & abi.WRITEPROTECT_MODE_DONTWAKE:
        return errno.EINVAL
    return 0


def hints_check_wp_mode(mode: int, enabled: frozenset, hints: Hints) -> int:
    """The patch: hint bits are known only when ACCESS_HINTS was negotiated, and only when un-protecting."""
    known = abi.WRITEPROTECT_MODE_WP | abi.WRITEPROTECT_MODE_DONTWAKE
    if Feature.ACCESS_HINTS in enabled:
        known |= Hints.BOTH.mode_bits()
    if mode & ~known:
        return errno.EINVAL  # clause 1: hints without the feature
    if mode & abi.WRITEPROTECT_MODE_WP and (mode & abi.WRITEPROTECT_MODE_DONTWAKE or hints):
        return errno.EINVAL  # clause 6: hints with MODE_WP
    return 0


def stock_uffd_wp_resolve(pte, vma, hints: Hints, made_writable: bool) -> None:
    """Linux 6.12 change_pte_range(): young and dirty are left as they were."""


def hints_uffd_wp_resolve(pte, vma, hints: Hints, made_writable: bool) -> None:
    """The patch (MM_CP_WILL_NEED): mkyoung on ACCESS_LIKELY; mkdirty+mkyoung where it made the PTE writable.

    A clean shared PTE is never made writable (can_change_pte_writable()
    returns pte_dirty() for VM_SHARED), so it is never dirtied here either.
    """
    if hints:
        if hints.access_likely:
            pte.young = True
        if hints.write_likely and made_writable:
            pte.young = True
            pte_mkdirty(pte)


def young_only_uffd_wp_resolve(pte, vma, hints: Hints, made_writable: bool) -> None:
    """A deliberately broken patch: WRITE_LIKELY sets young but forgets dirty."""
    if hints:
        if hints.access_likely:
            pte.young = True
        if hints.write_likely and made_writable:
            pte.young = True


def hints_61_uffd_wp_resolve(pte, vma, hints: Hints, made_writable: bool) -> None:
    """vm/patches-6.1 in change_pte_range(): 6.1's un-protect never upgrades a PTE through
    can_change_pte_writable() (no MM_CP_TRY_CHANGE_WRITABLE), so ``made_writable`` is False there;
    a shared PTE that newprot left writable and that is dirty is made young by WRITE_LIKELY."""
    if hints.access_likely:
        pte.young = True
    if hints.write_likely:
        if made_writable:
            pte.young = True
            pte_mkdirty(pte)
        elif pte.write and pte.dirty:
            pte.young = True


def dirty_shared_uffd_wp_resolve(pte, vma, hints: Hints, made_writable: bool) -> None:
    """A deliberately broken patch: WRITE_LIKELY dirties and write-enables every PTE, shared or not."""
    if hints.access_likely:
        pte.young = True
    if hints.write_likely and vma.vm_write:
        pte.young = True
        pte_mkdirty(pte)
        pte.write = not pte.uffd_wp


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    #: the ``kernel_release`` a simulator backend on this profile reports
    release: str
    #: the features ``UFFDIO_API`` offers
    features: frozenset = STOCK_FEATURES
    check_wp_mode: Callable = stock_check_wp_mode
    uffd_wp_resolve: Callable = stock_uffd_wp_resolve
    #: True for profiles that exist to show the contract tests can fail
    broken: bool = False
    #: clauses of BRIEF 2.2 this profile is expected to fail (for the self-tests)
    expected_failures: frozenset = field(default_factory=frozenset)
    #: uffd_wp_range() passes MM_CP_TRY_CHANGE_WRITABLE on un-protect (6.2+); 6.1 does not
    uffd_try_change_writable: bool = True
    #: un-protect's newprot is vm_get_page_prot(vm_flags) (6.1), not vma->vm_page_prot (6.2+):
    #: a writable shared VMA gets writable PTEs back even where writenotify wants the fault
    uffd_newprot_from_vm_flags: bool = False
    #: can_change_pte_writable() refuses clean PTEs of private mappings too (6.1)
    upgrade_needs_dirty: bool = False
    #: ioctls this kernel does not know (it answers EINVAL): 6.1 predates POISON and MOVE
    lacks_ioctls: frozenset = field(default_factory=frozenset)
    #: MADV_PAGEOUT makes every young PTE it passes old, as MADV_COLD does (6.1's
    #: madvise_cold_or_pageout_pte_range(); 6.12 leaves young alone for pageout, which ignores references)
    pageout_makes_old: bool = False

    @property
    def offers_access_hints(self) -> bool:
        return Feature.ACCESS_HINTS in self.features


_HINT_FEATURES = STOCK_FEATURES | {Feature.ACCESS_HINTS}
#: Linux 6.1 offers bits 0..12: WP_UNPOPULATED (6.4), POISON (6.6), WP_ASYNC (6.7) and MOVE (6.8) came later
FEATURES_6_1 = STOCK_FEATURES - {Feature.WP_UNPOPULATED, Feature.POISON, Feature.WP_ASYNC, Feature.MOVE}

PROFILES: dict[str, Profile] = {}


def register(profile: Profile) -> Profile:
    """Add a profile (replacing one of the same name)."""
    PROFILES[profile.name] = profile
    return profile


STOCK = register(
    Profile(
        name="linux-6.12",
        description="stock Linux 6.12: no ACCESS_HINTS; un-protect leaves young/dirty alone",
        release="6.12.0-sim",
    )
)
ACCESS_HINTS = register(
    Profile(
        name="access-hints",
        description="6.12 + the access-hints patch (BRIEF 2.2): hints make PTEs young / dirty+young",
        release="6.12.0-access-hints-sim",
        features=_HINT_FEATURES,
        check_wp_mode=hints_check_wp_mode,
        uffd_wp_resolve=hints_uffd_wp_resolve,
    )
)
#: what 6.1 does differently from 6.12 (see Profile's fields)
_LINUX_6_1_LACKS = frozenset({"UFFDIO_POISON", "UFFDIO_MOVE"})
STOCK_6_1 = register(
    Profile(
        name="linux-6.1",
        description="stock Linux 6.1 (Debian linux-source-6.1): no WP_UNPOPULATED, POISON, WP_ASYNC, MOVE; "
        "un-protect takes vm_get_page_prot(vm_flags) and never upgrades through can_change_pte_writable()",
        release="6.1.0-sim",
        features=FEATURES_6_1,
        uffd_try_change_writable=False,
        uffd_newprot_from_vm_flags=True,
        upgrade_needs_dirty=True,
        lacks_ioctls=_LINUX_6_1_LACKS,
        pageout_makes_old=True,
    )
)
ACCESS_HINTS_6_1 = register(
    Profile(
        name="access-hints-6.1",
        description="6.1 + vm/patches-6.1: the hints on 6.1's un-protect (ACCESS_LIKELY young; WRITE_LIKELY young "
        "where newprot left a dirty PTE writable)",
        release="6.1.0-access-hints-sim",
        features=FEATURES_6_1 | {Feature.ACCESS_HINTS},
        check_wp_mode=hints_check_wp_mode,
        uffd_wp_resolve=hints_61_uffd_wp_resolve,
        uffd_try_change_writable=False,
        uffd_newprot_from_vm_flags=True,
        upgrade_needs_dirty=True,
        lacks_ioctls=_LINUX_6_1_LACKS,
        pageout_makes_old=True,
    )
)
YOUNG_ONLY = register(
    Profile(
        name="access-hints-young-only",
        description="BROKEN example: WRITE_LIKELY sets young but not dirty (fails clause 3)",
        release="6.12.0-young-only-sim",
        features=_HINT_FEATURES,
        check_wp_mode=hints_check_wp_mode,
        uffd_wp_resolve=young_only_uffd_wp_resolve,
        broken=True,
        expected_failures=frozenset({3}),
    )
)
DIRTY_SHARED = register(
    Profile(
        name="access-hints-dirty-shared",
        description="BROKEN example: WRITE_LIKELY dirties (and makes writable) clean shared PTEs and "
        "soft-dirty-tracked PTEs (fails 2 with both hints, 3, 4, 8)",
        release="6.12.0-dirty-shared-sim",
        features=_HINT_FEATURES,
        check_wp_mode=hints_check_wp_mode,
        uffd_wp_resolve=dirty_shared_uffd_wp_resolve,
        broken=True,
        expected_failures=frozenset({2, 3, 4, 8}),
    )
)
IGNORED = register(
    Profile(
        name="access-hints-ignored",
        description="BROKEN example: accepts the hints and does nothing with them, as 6.12 would (fails 2, 3)",
        release="6.12.0-ignored-sim",
        features=_HINT_FEATURES,
        check_wp_mode=hints_check_wp_mode,
        uffd_wp_resolve=stock_uffd_wp_resolve,
        broken=True,
        expected_failures=frozenset({2, 3}),
    )
)


#: environment variable naming modules that register more profiles
USER_PROFILES_ENV = paths.ENV_SIM_PROFILES
_user_loaded = False


def load_user_profiles() -> None:
    """Import the modules named in ``$UFFD_HARNESS_SIM_PROFILES`` (once)."""
    global _user_loaded
    if _user_loaded:
        return
    _user_loaded = True
    import importlib
    import importlib.util
    import os

    for spec in filter(None, (part.strip() for part in os.environ.get(USER_PROFILES_ENV, "").split(","))):
        # What names no loadable module is bad input; an error raised by the module's own code is its
        # author's to see, with the traceback.
        try:
            if spec.endswith(".py"):
                mod_spec = importlib.util.spec_from_file_location(f"uffd_harness_user_profile_{len(PROFILES)}", spec)
                if mod_spec is None or mod_spec.loader is None:
                    raise ValueError(f"{spec} cannot be loaded as a Python file")
                module = importlib.util.module_from_spec(mod_spec)
                mod_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except (ImportError, OSError, SyntaxError, ValueError) as exc:
            raise InvalidArgument(
                f"${USER_PROFILES_ENV}",
                repr(spec),
                f"cannot load it ({type(exc).__name__}: {exc}); give comma-separated module "
                "names on sys.path or paths of .py files",
            ) from exc


class UnknownProfile(InvalidArgument, KeyError):
    """No profile of that name (a KeyError too, for callers that look profiles up like a dict)."""

    __str__ = InvalidArgument.__str__


def get(name: str) -> Profile:
    load_user_profiles()
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise UnknownProfile(
            "simulator", "profile", f"no profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None


def for_kernel(offers_access_hints: bool, release: Optional[str] = None) -> Profile:
    """The profile that should match a kernel: the patched one if it offers ACCESS_HINTS, else stock;
    the 6.1 ones for a 6.1 kernel (``release``, default: the running kernel's)."""
    import platform

    release = platform.release() if release is None else release
    if release.startswith("6.1.") or release == "6.1":
        return ACCESS_HINTS_6_1 if offers_access_hints else STOCK_6_1
    return ACCESS_HINTS if offers_access_hints else STOCK


def default_profile(name: Optional[str] = None) -> Profile:
    return get(name) if name else ACCESS_HINTS
