"""What a cycle count means on this machine: TSC rate, resolution, fixed cost, and where we run.

Everything here is measured or read, never assumed: the TSC frequency
against CLOCK_MONOTONIC, its resolution from the spacing of observed
deltas, the cost of an empty timed section, and the hypervisor from CPUID.
"""

from __future__ import annotations

import math
import platform
import struct
from dataclasses import asdict, dataclass
from typing import Optional

from harness._native import ffi, lib
from harness.timing import stats

#: CPUID leaf 0x40000000 vendor signatures (EBX, ECX, EDX as 12 ASCII bytes)
HYPERVISOR_SIGNATURES = {
    "KVMKVMKVM\0\0\0": "KVM",
    "TCGTCGTCGTCG": "QEMU TCG",
    "Microsoft Hv": "Hyper-V",
    "VMwareVMware": "VMware",
    "XenVMMXenVMM": "Xen",
    " lrpepyh  vr": "Parallels",
    "VBoxVBoxVBox": "VirtualBox",
    "ACRNACRNACRN": "ACRN",
    "bhyve bhyve ": "bhyve",
    " QNXQVMBSQG ": "QNX",
}

_CPUID_1_ECX_HYPERVISOR = 1 << 31  # "running under a hypervisor"
_CPUID_80000007_EDX_INVARIANT_TSC = 1 << 8
_EMPTY_SAMPLES = 20000


@dataclass(frozen=True)
class Calibration:
    """The facts reported with every timing result (see the schema in :mod:`harness.timing`)."""

    tsc_hz: float
    #: the TSC's step: the gcd of back-to-back deltas (1 on an exact counter)
    resolution_cycles: int
    #: smallest non-zero delta of two consecutive reads (the read's own cost, at least)
    tsc_read_cycles: int
    #: median cost of an empty timed section (fences and rdtsc/rdtscp)
    empty_cycles: float
    empty_p10: float
    empty_p90: float
    invariant_tsc: bool
    cpu_model: str
    hypervisor: bool
    hypervisor_vendor: Optional[str]
    tcg: bool
    tcg_evidence: str
    clocksource: str
    kernel: str
    #: False under TCG: its cycle counts contain no hardware accessed/dirty assist
    models_hardware_assists: bool
    note: str

    def to_dict(self) -> dict:
        return asdict(self)

    def cycles_to_ns(self, cycles: float) -> float:
        return cycles * 1e9 / self.tsc_hz


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    regs = ffi.new("struct harness_cpuid_regs *")
    lib.harness_cpuid(leaf, subleaf, regs)
    return regs.eax, regs.ebx, regs.ecx, regs.edx


def hypervisor_signature() -> str:
    """The 12-byte vendor signature of CPUID leaf 0x40000000 (garbage on bare metal: match exactly)."""
    _, ebx, ecx, edx = cpuid(0x40000000)
    return struct.pack("<III", ebx, ecx, edx).decode("latin-1")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def detect_tcg(signature: str, model: str) -> tuple[bool, str]:
    """Whether we run under QEMU's TCG (an emulator: its TSC counts no hardware assist).

    QEMU's TCG answers CPUID leaf 0x40000000 with "TCGTCGTCGTCG"; a model
    name "QEMU Virtual CPU" / "QEMU TCG CPU" without the signature of a
    hardware accelerator (KVM, Hyper-V, ...) is TCG too.  No dmesg, no root.
    """
    vendor = HYPERVISOR_SIGNATURES.get(signature)
    if vendor == "QEMU TCG":
        return True, "CPUID 0x40000000 signature TCGTCGTCGTCG"
    if "QEMU" in model and vendor is None:
        return True, f"cpuinfo model {model!r} and no hardware-accelerator CPUID signature"
    if vendor:
        return False, f"CPUID 0x40000000 signature {vendor}"
    return False, f"no hypervisor CPUID signature; model {model!r}"


def tsc_resolution(deltas: list[int]) -> int:
    """The step of the counter: the gcd of the observed back-to-back deltas.

    A counter that advances in steps of 26 cycles only ever shows multiples
    of 26; the smallest non-zero delta alone would confuse a step with the
    cost of reading the counter.
    """
    step = 0
    for d in set(deltas):
        step = math.gcd(step, int(d))
    return step


def calibrate(*, window_ns: int = 100_000_000) -> Calibration:
    """Measure this machine (about ``window_ns`` plus a few ms)."""
    buf = ffi.new("uint64_t[]", _EMPTY_SAMPLES)
    lib.harness_time_empty(buf, _EMPTY_SAMPLES)
    empty = list(buf)
    hz = ffi.new("double *")
    if lib.harness_tsc_hz(window_ns, hz) != 0:
        raise RuntimeError("the TSC did not advance against CLOCK_MONOTONIC")
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    model = info.get("model name", platform.processor() or "unknown")
    signature = hypervisor_signature()
    _, _, ecx1, _ = cpuid(1)
    max_ext = cpuid(0x80000000)[0]
    cpuid_invariant = max_ext >= 0x80000007 and bool(cpuid(0x80000007)[3] & _CPUID_80000007_EDX_INVARIANT_TSC)
    invariant = ("constant_tsc" in flags and "nonstop_tsc" in flags) or cpuid_invariant
    hypervisor = "hypervisor" in flags or bool(ecx1 & _CPUID_1_ECX_HYPERVISOR)
    vendor = HYPERVISOR_SIGNATURES.get(signature) if hypervisor or signature == "TCGTCGTCGTCG" else None
    tcg, evidence = detect_tcg(signature, model)
    if tcg:
        note = (
            "QEMU TCG: these figures do not model hardware A/D assists; "
            "an emulated access costs the same whatever the PTE's young/dirty bits"
        )
    elif hypervisor:
        note = (
            f"virtualised ({vendor or 'unknown hypervisor'}): assists are real hardware, but page walks "
            "are two-dimensional (guest and EPT/NPT tables); bare-metal figures differ"
        )
    else:
        note = "bare metal"
    return Calibration(
        tsc_hz=hz[0],
        resolution_cycles=tsc_resolution(empty),
        tsc_read_cycles=int(lib.harness_tsc_resolution(100_000)),
        empty_cycles=stats.median(empty),
        empty_p10=stats.quantile(empty, 0.1),
        empty_p90=stats.quantile(empty, 0.9),
        invariant_tsc=invariant,
        cpu_model=model,
        hypervisor=hypervisor,
        hypervisor_vendor=vendor,
        tcg=tcg,
        tcg_evidence=evidence,
        clocksource=_read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        kernel=platform.release(),
        models_hardware_assists=not tcg,
        note=note,
    )
