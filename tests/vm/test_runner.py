"""The guest runner: exit status, environment, panic, timeout, clean-up.

Each test boots the kernel under QEMU (TCG on machines where KVM cannot run
an ordinary guest), so each takes several seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.vm import GuestPanic, GuestTimeout, run_in_guest
from harness.vm.build import REPO_ROOT

pytestmark = [pytest.mark.vm, pytest.mark.slow]

BOOT_TIMEOUT = 180  # generous: TCG on a loaded 2-core machine


def _assert_no_qemu_left(kernel) -> None:
    from harness.vm.runner import qemu_processes

    left = qemu_processes(kernel.path)
    assert not left, f"QEMU processes left behind: {left}"


@pytest.mark.timeout(BOOT_TIMEOUT + 30)
def test_exit_status_is_passed_through(guest_kernel):
    res = run_in_guest(guest_kernel, ["sh", "-c", "exit 7"], timeout=BOOT_TIMEOUT)
    assert res.returncode == 7, f"guest `sh -c 'exit 7'` came back as {res.returncode}; console:\n" + "\n".join(
        res.console_tail
    )
    _assert_no_qemu_left(guest_kernel)


@pytest.mark.timeout(BOOT_TIMEOUT + 30)
def test_guest_environment_and_directories(guest_kernel, tmp_path):
    """The guest sees the project tree (and cannot change it on the host), the
    uapi header through UFFD_HARNESS_UAPI_HEADER, the kernel name, a
    writable rwdir, huge pages and every CPU it was given.

    Under paths virtme-ng overlays in the guest (a clone in /tmp, say) a
    write to the tree succeeds inside the guest and stays there; what
    matters is that it never reaches the host.
    """
    rw = tmp_path / "rw"
    script = (
        "set -e; "
        f'test "$UFFD_HARNESS_KERNEL" = "{guest_kernel.name}"; '
        'grep -q UFFD_FEATURE_MOVE "$UFFD_HARNESS_UAPI_HEADER"; '
        f"test -f {REPO_ROOT}/harness/vm/runner.py; "
        f"touch {REPO_ROOT}/.uffd-harness-ro-probe 2>/dev/null || true; "
        'echo from-guest > "$UFFD_HARNESS_RWDIR/out.txt"; '
        "uname -r; grep HugePages_Total /proc/meminfo; echo cpus=$(nproc)"
    )
    res = run_in_guest(guest_kernel, ["sh", "-c", script], timeout=BOOT_TIMEOUT, rwdir=rw, capture=True, cpus=2)
    assert res.returncode == 0, (
        f"guest checks failed with {res.returncode}; output:\n{res.output}\nconsole:\n" + "\n".join(res.console_tail)
    )
    assert (rw / "out.txt").read_text().strip() == "from-guest", (
        "a file written to the rwdir in the guest is not on the host"
    )
    assert "6.12" in res.output, f"guest did not boot the 6.12 kernel: {res.output}"
    total = int(res.output.split("HugePages_Total:")[1].split()[0])
    assert total > 0, "no huge pages reserved in the guest (hugepages= on the cmdline)"
    # a kernel without ACPI counts CPUs from the MP table, which lists one per socket
    assert "cpus=2" in res.output, f"the guest does not see the 2 CPUs QEMU was given: {res.output}"
    assert not (REPO_ROOT / ".uffd-harness-ro-probe").exists(), (
        "a write to the project tree in the guest reached the host"
    )


@pytest.mark.timeout(BOOT_TIMEOUT + 30)
def test_panic_is_reported_and_qemu_killed(guest_kernel):
    t0 = time.monotonic()
    with pytest.raises(GuestPanic) as exc:
        run_in_guest(guest_kernel, ["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 1000"], timeout=BOOT_TIMEOUT)
    assert time.monotonic() - t0 < BOOT_TIMEOUT, "panic was not detected before the timeout"
    assert any("Kernel panic" in line or "sysrq" in line.lower() for line in exc.value.console_tail), (
        "the panic report does not show the console lines of the panic"
    )
    assert "panicked" in str(exc.value)
    _assert_no_qemu_left(guest_kernel)


@pytest.mark.timeout(120)
def test_timeout_kills_qemu(guest_kernel):
    t0 = time.monotonic()
    with pytest.raises(GuestTimeout) as exc:
        run_in_guest(guest_kernel, ["sleep", "1000"], timeout=20)
    elapsed = time.monotonic() - t0
    assert 19 <= elapsed < 40, f"timeout of 20 s took {elapsed:.1f} s"
    assert "timed out after 20 s" in str(exc.value)
    _assert_no_qemu_left(guest_kernel)


@pytest.mark.timeout(BOOT_TIMEOUT + 30)
def test_cli_exit_status(guest_kernel):
    """``python -m harness.vm run -- CMD`` exits with CMD's status."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.vm",
            "run",
            "--kernel",
            guest_kernel.name,
            "--timeout",
            str(BOOT_TIMEOUT),
            "--",
            "sh",
            "-c",
            "echo hi; exit 5",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT + 20,
    )
    assert proc.returncode == 5, f"CLI exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr[-3000:]}"
    assert "hi" in proc.stdout
    _assert_no_qemu_left(guest_kernel)


@pytest.mark.timeout(BOOT_TIMEOUT + 30)
def test_ctrl_c_kills_qemu(guest_kernel, qemu_procs):
    """SIGINT to the CLI (Ctrl-C) kills QEMU and leaves nothing behind."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.vm",
            "run",
            "--kernel",
            guest_kernel.name,
            "--timeout",
            str(BOOT_TIMEOUT),
            "--",
            "sleep",
            "1000",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # as from a terminal: a run started in the background by a non-interactive shell (`cmd &`)
        # inherits SIGINT ignored, and Python then leaves it ignored (a nohup'd CLI ignores Ctrl-C too)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not qemu_procs(guest_kernel.path) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert qemu_procs(guest_kernel.path), "QEMU never started"
        time.sleep(2)
        proc.send_signal(2)  # SIGINT, as the terminal sends it on Ctrl-C
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate(timeout=30)
            left = qemu_procs(guest_kernel.path)
            for pid in left:  # vng runs in a session of its own: nothing here may outlive the test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            pytest.fail(
                "the CLI still ran 30 s after Ctrl-C; what it printed:\n"
                + (out + err).decode(errors="replace")[-3000:]
                + f"\nQEMU processes then (killed): {left}"
            )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert rc == 130, f"Ctrl-C exit status {rc}, expected 130"
    time.sleep(0.5)
    _assert_no_qemu_left(guest_kernel)
