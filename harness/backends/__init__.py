"""One test, two backends: the running kernel or the simulator (see :mod:`harness.backends.base`)."""

from harness.backends.base import KERNEL, SIM, SIMULATOR, Backend, FaultEvent, RegionRef

__all__ = ["KERNEL", "SIM", "SIMULATOR", "Backend", "FaultEvent", "RegionRef", "make_backend"]


def make_backend(name: str, profile=None, **kwargs) -> Backend:
    """``make_backend("kernel")`` or ``make_backend("sim", "access-hints")``."""
    if name == KERNEL:
        from harness.backends.kernel import KernelBackend

        return KernelBackend(**kwargs)
    if name == SIMULATOR:
        from harness.backends.sim import SimBackend
        from harness.sim import profiles

        return SimBackend(profiles.default_profile(profile) if not hasattr(profile, "name") else profile, **kwargs)
    raise ValueError(f"unknown backend {name!r}: kernel or sim")
