"""QEMU never outlives the harness: SIGTERM, SIGHUP and SIGKILL of the process that runs a guest.

The harness runs as a separate process that the test then signals, through
the real entry points: the ``vm run`` and ``suite`` (``make vm-test``) verbs,
and validate's ``_run_guests()`` with two guests (both at once, and one at a
time as on a one-core host), plus the KVM probe's own QEMU.  The kernels are
stand-ins under ``UFFD_HARNESS_BUILD_DIR`` and vng is a stand-in that starts a
process named like QEMU with the bzImage on its command line (as
tests/vm/test_runner_fake_vng.py does): nothing is built or booted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import paths
from harness.vm.runner import qemu_processes

#: the host side of a guest; second interpreters (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

#: the stand-in QEMU runs this long unless someone ends it
FAKE_QEMU_SECONDS = 60

#: the harness, by entry point (argv[1]); the stand-in kernels are "fake" and "fake2"
HARNESS = textwrap.dedent("""\
    import argparse, sys
    from harness.cli import main, report_errors
    from harness.vm import build as vm_build
    from harness.vm import runner
    runner.check_runner_host = lambda install=None: None  # no QEMU, udev or vng needed on this host
    how = sys.argv[1]
    if how == "vm-run":
        sys.exit(main(["vm", "run", "--kernel", "fake", "--", "true"]))
    if how == "suite":
        from harness.validate import run
        vm_build.build_kernel = lambda name, *a, **k: vm_build.load_kernel(name)
        run.compile_for_guests = lambda log=None: None
        sys.exit(main(["suite", "--kernel", "fake"]))
    if how.startswith("validate-"):
        from harness import paths
        from harness.validate import run
        from harness.validate.outcome import KernelOutcome
        outcomes = [KernelOutcome(k, "guest", paths.RESULTS_DIR / k) for k in ("fake", "fake2")]
        for o in outcomes:
            o.out.mkdir(parents=True, exist_ok=True)
        workers = int(how.split("-")[1])
        guests = lambda args: run._run_guests(outcomes, workers, True, lambda msg: print(msg, file=sys.stderr))
        sys.exit(report_errors(guests, argparse.Namespace(command="validate")))
    if how == "probe":
        import os
        exists = os.path.exists
        os.path.exists = lambda p: p == "/dev/kvm" or exists(p)  # the probe starts QEMU only where KVM exists
        probe = lambda args: runner.probe_kvm(vm_build.load_kernel("fake").path)
        sys.exit(report_errors(probe, argparse.Namespace(command="vm", vm_command="run")))
    raise SystemExit(f"unknown entry point {how!r}")
    """)


def _stand_ins(tmp_path: Path) -> dict[str, str]:
    """Kernels "fake" and "fake2", a vng and a qemu-system-x86_64 (for the probe): the environment to use them."""
    build = tmp_path / "build"
    for name in ("fake", "fake2"):
        kdir = build / "kernels" / name
        (kdir / "uapi" / "linux").mkdir(parents=True)
        (kdir / "bzImage").write_bytes(b"")
        (kdir / "uapi" / "linux" / "userfaultfd.h").write_text("")
        (kdir / "build.json").write_text(json.dumps({"key": "0" * 64, "patched": False}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # sleep, not tail -f: tail exits when the pipe it writes to loses its reader, and QEMU does not
    qemu_line = (
        f"exec -a qemu-system-x86_64 timeout --foreground {FAKE_QEMU_SECONDS} "
        f'sh -c "sleep {FAKE_QEMU_SECONDS}" {tmp_path}/bzImage'
    )
    (bin_dir / "vng").write_text(f"#!/bin/bash\nbash -c '{qemu_line}' &\nwait $!\n")
    (bin_dir / "qemu-system-x86_64").write_text(
        f'#!/bin/bash\n[ "$1" = --version ] && {{ echo "QEMU emulator version 0 (stand-in)"; exit 0; }}\n{qemu_line}\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {
        **os.environ,
        paths.ENV_BUILD_DIR: str(build),
        paths.ENV_VNG: str(bin_dir / "vng"),
        paths.ENV_ACCEL: "tcg",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


#: entry point -> (QEMUs running when the signal comes, whether a guest command script exists)
ENTRY_POINTS = {
    "vm-run": (1, True),
    "suite": (1, True),
    "validate-2": (2, True),  # both guests at once, as on a host with two cores
    "validate-1": (1, True),  # one at a time: the second must not start after the first is killed
    "probe": (1, False),  # the KVM probe's QEMU (no script)
}


@pytest.mark.parametrize(
    "sig, how",
    [
        (signal.SIGTERM, "vm-run"),
        (signal.SIGHUP, "vm-run"),
        (signal.SIGKILL, "vm-run"),
        (signal.SIGTERM, "suite"),
        (signal.SIGKILL, "suite"),
        (signal.SIGTERM, "validate-2"),
        (signal.SIGKILL, "validate-2"),
        (signal.SIGTERM, "validate-1"),
        (signal.SIGHUP, "validate-1"),
        (signal.SIGKILL, "probe"),
        (signal.SIGTERM, "probe"),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v,
)
def test_qemu_and_its_script_go_when_the_harness_is_killed(tmp_path, sig, how):
    bzimage = tmp_path / "bzImage"
    guests, has_script = ENTRY_POINTS[how]
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, how],
        env=_stand_ins(tmp_path),
        cwd=paths.REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    scripts = lambda: list((tmp_path / "build").glob("**/.guest-command-*.sh"))  # noqa: E731
    try:
        assert _wait_for(lambda: len(qemu_processes(bzimage)) == guests, 20), (
            f"the stand-in QEMUs never started ({len(qemu_processes(bzimage))} of {guests})"
        )
        assert bool(scripts()) == has_script, f"guest command scripts while the guest runs: {scripts()}"
        harness.send_signal(sig)
        try:
            harness.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the harness was still running 20 s after {sig.name} (QEMUs: {qemu_processes(bzimage)})")
        gone = _wait_for(lambda: not qemu_processes(bzimage), 5)
        assert gone, f"QEMU {qemu_processes(bzimage)} outlived the harness killed by {sig.name}"
        assert _wait_for(lambda: not scripts(), 5), f"the guest command script stayed after {sig.name}"
        if sig != signal.SIGKILL:
            err = harness.stderr.read()
            assert harness.returncode == 128 + sig, f"exit status {harness.returncode}: {err}"
            assert "Traceback" not in err and f"terminated by {sig.name}" in err, err
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        for pid in qemu_processes(bzimage):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
