"""A LAVA job from ``harness.lava.job_definition`` run by LAVA's own dispatcher (``lava-run``) on this machine.

What runs: the deploy (kernel and a cpio ramdisk with LAVA's overlay and the
harness bundle unpacked at /opt/uffd-harness), the boot of a kernel built by
``make kernel`` under QEMU TCG, and LAVA's test shell, in which the results of
a real validation (tests/kernel_ci_data.py) are reported with the same
lava-test-case calls ``python -m harness.lava cases`` makes.  What does not:
the suite itself, which needs Python and the project's dependencies in the
ramdisk; a lab supplies that root file system (README, "Kernel CI").  The
ramdisk here is busybox, made by the test; the device is
tests/data/lava/qemu-device.yaml (no lava-server here to render one).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernel_ci_data  # noqa: E402
from harness import lava  # noqa: E402
from harness.vm import build as vmbuild  # noqa: E402

pytestmark = pytest.mark.vm

DEVICE = Path(__file__).resolve().parent.parent / "data" / "lava" / "qemu-device.yaml"
#: what the dispatcher run needs here: tool -> Debian package (installed as root, like the builder's)
DISPATCHER_NEEDS = {
    "lava-run": "lava-dispatcher",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "qemu-system-x86_64": "qemu-system-x86",
}
LAVA_RUN_TIMEOUT = 300

_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec setsid cttyhack sh
"""


@pytest.fixture(scope="module")
def dispatcher():
    from harness.vm.errors import VmError

    try:
        vmbuild.check_host(DISPATCHER_NEEDS)
    except VmError as exc:
        pytest.skip(f"LAVA's dispatcher: {exc}")


@pytest.fixture(scope="module")
def kernel():
    from harness.vm.errors import KernelNotBuilt

    for name in ("stock", "patched"):
        try:
            return vmbuild.load_kernel(name)
        except KernelNotBuilt:
            continue
    pytest.skip("no built kernel: run `make kernel KERNEL=stock`")


def _ramdisk(tmp_path: Path, script: str) -> Path:
    """An uncompressed busybox cpio (the project's kernel has no CONFIG_RD_GZIP) with /cases.sh."""
    root = tmp_path / "root"
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "root"):
        (root / d).mkdir(parents=True)
    shutil.copy2(shutil.which("busybox"), root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "sbin" / "init").write_text(_INIT)
    (root / "sbin" / "init").chmod(0o755)
    (root / "cases.sh").write_text(script)
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
    out = tmp_path / "rootfs.cpio"
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(), stdout=f, check=True)
    return out


def _lava_results(log: str) -> list[dict]:
    """The test-case results of a lava-run log (one JSON object a line), LAVA's own ones left out."""
    results = []
    for line in log.splitlines():
        # lava-run prints YAML-flavoured JSON ("endtc": ! "360"): only the fields we need are read
        m = re.search(r'"lvl": "results", "msg": (\{.*\})\}$', line)
        if not m:
            continue
        msg = m.group(1)
        definition = re.search(r'"definition": "([^"]+)"', msg).group(1)
        if definition == "lava":
            continue
        case = re.search(r'"case": "([^"]+)"', msg).group(1)
        result = re.search(r'"result": "([^"]+)"', msg).group(1)
        measurement = re.search(r'"measurement": ! "([^"]+)"|"measurement": ([0-9.]+)', msg)
        results.append(
            {
                "definition": definition,
                "case": case,
                "result": result,
                "measurement": float(next(g for g in measurement.groups() if g)) if measurement else None,
            }
        )
    return results


def test_lava_dispatcher_runs_the_job_and_reads_every_result(dispatcher, kernel, tmp_path):
    kernel_ci_data.outcomes(tmp_path / "results")
    cases = lava.lava_cases(tmp_path / "results" / "patched")
    script = "\n".join(shlex.join(argv) for argv in lava.case_commands(cases)) + "\n"
    ramdisk = _ramdisk(tmp_path, script)
    bundle = lava.bundle(kernel.name, tmp_path / "bundle.tar.gz")
    job = lava.job_definition(
        kernel.name,
        kernel.info,
        kernel_url=kernel.path.resolve().as_uri(),
        ramdisk_url=ramdisk.as_uri(),
        bundle_url=bundle.as_uri(),
        no_kvm=True,
        memory_mb=1024,
        cpus=1,
        job_minutes=25,
    )
    definition = job["actions"][2]["test"]["definitions"][0]["repository"]["run"]
    # busybox has no Python: check the bundle arrived, then report the results as the harness would
    definition["steps"] = [
        f"lava-test-case bundle-unpacked --shell test -f {lava.GUEST_HARNESS_DIR}/harness/lava.py",
        "lava-test-case userfaultfd-sysctl --shell test -e /proc/sys/vm/unprivileged_userfaultfd",
        "sh /cases.sh",
    ]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(lava.to_yaml(job))
    proc = subprocess.run(
        [
            "lava-run",
            "--job-id",
            f"uffd{os.getpid()}",
            "--output-dir",
            str(tmp_path / "out"),
            "--device",
            str(DEVICE),
            str(job_file),
        ],
        capture_output=True,
        text=True,
        timeout=LAVA_RUN_TIMEOUT,
    )
    log = proc.stdout + proc.stderr
    (tmp_path / "lava-run.log").write_text(log)
    assert proc.returncode == 0, (
        f"lava-run failed (log {tmp_path / 'lava-run.log'}):\n"
        + "\n".join(line for line in log.splitlines() if '"error' in line or "Kernel panic" in line)[-3000:]
    )
    got = _lava_results(log)
    by_name = {r["case"]: r for r in got}
    assert by_name["bundle-unpacked"]["result"] == "pass", "the harness bundle was not unpacked in the guest"
    assert by_name["userfaultfd-sysctl"]["result"] == "pass", "the booted kernel has no userfaultfd"
    reported = [r for r in got if r["case"] not in ("bundle-unpacked", "userfaultfd-sysctl")]
    assert len(reported) == len(cases), f"LAVA read {len(reported)} results, the harness reported {len(cases)}"
    for case, r in zip(cases, reported, strict=True):
        assert (r["case"], r["result"]) == (case["name"], case["result"])
        if "measurement" in case:
            assert r["measurement"] == pytest.approx(case["measurement"], abs=0.06)
