"""QEMU never outlives the harness: SIGTERM, SIGHUP and SIGKILL of the process that runs a guest.

The guest is a stand-in for vng that starts a process named like QEMU with
the bzImage on its command line (as tests/vm/test_runner_fake_vng.py does),
in a harness run as a separate process that the test then kills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.vm.runner import qemu_processes

#: the host side of a guest; second interpreters (guest suites deselect host_only)
pytestmark = pytest.mark.host_only

#: the stand-in QEMU runs this long unless someone ends it
FAKE_QEMU_SECONDS = 60

HARNESS = textwrap.dedent("""\
    import argparse, sys
    from pathlib import Path
    from harness.cli import report_errors
    from harness.vm import runner
    from harness.vm.build import KernelBuild
    runner.check_runner_host = lambda install=None: None
    tmp = Path(sys.argv[1])
    kernel = KernelBuild(name="fake", path=tmp / "bzImage", key="0" * 64, uapi_header=tmp / "userfaultfd.h",
                         patched=False, directory=tmp, selftests_dir=tmp)
    def one(rw):
        return runner.run_in_guest(kernel, ["true"], timeout=120, rwdir=rw, accel="tcg",
                                   log=lambda _: None).returncode
    def run(args):
        if sys.argv[2] == "1":
            return one(tmp / "rw")
        # two guests in threads, as validate's _run_guests() runs the stock and the patched kernel
        import concurrent.futures
        pool = concurrent.futures.ThreadPoolExecutor(2)
        try:
            futures = [pool.submit(one, rw) for rw in (tmp / "rw", tmp / "rw2")]
            while not all(f.done() for f in futures):
                concurrent.futures.wait(futures, timeout=1.0)
        except KeyboardInterrupt:
            runner.kill_all_guests()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return max(f.result() for f in futures)
    sys.exit(report_errors(run, argparse.Namespace(command="vm", vm_command="run")))
    """)


def _fake_vng(tmp_path: Path) -> Path:
    vng = tmp_path / "vng"
    vng.write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        # sleep, not tail -f: tail exits when the pipe it writes to loses its reader, and QEMU does not
        bash -c 'exec -a qemu-system-x86_64 timeout --foreground {FAKE_QEMU_SECONDS} sh -c "sleep {FAKE_QEMU_SECONDS}" \
                 {tmp_path}/bzImage' &
        wait $!
        """)
    )
    vng.chmod(0o755)
    return vng


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize(
    "sig, guests",
    [(signal.SIGTERM, 1), (signal.SIGHUP, 1), (signal.SIGKILL, 1), (signal.SIGKILL, 2), (signal.SIGTERM, 2)],
    ids=["SIGTERM", "SIGHUP", "SIGKILL", "SIGKILL-two-guests", "SIGTERM-two-guests"],
)
def test_qemu_and_its_script_go_when_the_harness_is_killed(tmp_path, sig, guests):
    (tmp_path / "bzImage").write_bytes(b"")
    (tmp_path / "userfaultfd.h").write_text("")
    bzimage = tmp_path / "bzImage"
    env = {**os.environ, "UFFD_HARNESS_VNG": str(_fake_vng(tmp_path))}
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path), str(guests)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_for(lambda: len(qemu_processes(bzimage)) == guests, 20), "the stand-in QEMUs never started"
        scripts = list(tmp_path.glob("rw*/.guest-command-*.sh"))
        assert scripts, "no guest command script while the guest runs (the test would prove nothing)"
        harness.send_signal(sig)
        harness.wait(timeout=20)
        gone = _wait_for(lambda: not qemu_processes(bzimage), 5)
        assert gone, f"QEMU {qemu_processes(bzimage)} outlived the harness killed by {sig.name}"
        assert _wait_for(lambda: not list(tmp_path.glob("rw*/.guest-command-*.sh")), 5), (
            f"the guest command script stayed after {sig.name}"
        )
        if sig != signal.SIGKILL:
            assert harness.returncode == 128 + sig, harness.returncode
            err = harness.stderr.read()
            assert "Traceback" not in err and f"terminated by {sig.name}" in err, err
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        for pid in qemu_processes(bzimage):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
