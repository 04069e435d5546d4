"""The guest runner against a stand-in for vng: what needs no kernel to check.

The stand-in behaves like vng in the case under test: it prints console
lines on stderr, starts a process that looks like QEMU, waits for it and
then exits with the status "read from its ret file", as vng does.
"""

from __future__ import annotations

import shlex
import textwrap
import time
from pathlib import Path

import pytest

from harness.vm import GuestTimeout, run_in_guest, runner
from harness.vm.build import KernelBuild
from harness.vm.runner import qemu_processes

#: the stand-in's "QEMU" runs this long unless the runner stops it
FAKE_QEMU_SECONDS = 60


def _fake_vng(tmp_path: Path, console: list[str]) -> Path:
    """A vng that prints ``console`` and then waits for its "QEMU" to exit.

    The "QEMU" is named like QEMU and has the bzImage on its command line,
    so that qemu_processes(bzimage) finds it and no other.
    """
    vng = tmp_path / "vng"
    vng.write_text(
        textwrap.dedent(f"""\
        #!/bin/bash
        # a QEMU look-alike in vng's process group, as vng's fork+exec makes it
        bash -c 'exec -a qemu-system-x86_64 timeout --foreground \\
                 {FAKE_QEMU_SECONDS} tail -f {tmp_path}/bzImage' &
        qemu=$!
        sleep 0.5   # QEMU is up before the console says anything
        printf '%s\\n' {shlex.join(console)} >&2
        wait $qemu
        exit 3      # vng: "the command's status, from the ret file"
        """)
    )
    vng.chmod(0o755)
    return vng


def _kernel(tmp_path: Path) -> KernelBuild:
    (tmp_path / "bzImage").write_bytes(b"")
    (tmp_path / "userfaultfd.h").write_text("")
    return KernelBuild(
        name="fake",
        path=tmp_path / "bzImage",
        key="0" * 64,
        uapi_header=tmp_path / "userfaultfd.h",
        patched=False,
        directory=tmp_path,
        selftests_dir=tmp_path,
    )


@pytest.fixture(autouse=True)
def _no_host_check(monkeypatch):
    """The stand-in needs neither QEMU nor udev on the host."""
    monkeypatch.setattr(runner, "check_runner_host", lambda install=None: None)


@pytest.mark.parametrize(
    "halt",
    [
        "reboot: Power off not available: System halted instead",  # 6.12
        "reboot: System halted",  # older kernels
    ],
)
def test_a_halted_guest_ends_qemu_and_keeps_the_exit_status(tmp_path, monkeypatch, halt):
    """A kernel that cannot power off (no ACPI) halts: the runner must end
    QEMU then, not wait for the timeout, and still return the command's
    exit status."""
    monkeypatch.setenv(
        "UFFD_HARNESS_VNG",
        str(_fake_vng(tmp_path, ["[    5.400000] virtme-ng-init: starting script", f"[    9.100000] {halt}"])),
    )
    t0 = time.monotonic()
    res = run_in_guest(
        _kernel(tmp_path),
        ["true"],
        timeout=FAKE_QEMU_SECONDS / 2,
        rwdir=tmp_path / "rw",
        accel="tcg",
        log=lambda _: None,
    )
    assert res.returncode == 3
    assert time.monotonic() - t0 < FAKE_QEMU_SECONDS / 4
    assert not qemu_processes(tmp_path / "bzImage"), "the stand-in QEMU was left running"


@pytest.mark.parametrize(
    "last_line",
    [
        "[    5.400000] virtme-ng-init: starting script",
        # the command's own stderr (no kernel timestamp) cannot end the guest
        "reboot: System halted",
    ],
)
def test_without_a_halt_the_timeout_still_applies(tmp_path, monkeypatch, last_line):
    """Only the kernel's halt line ends QEMU early: a guest that merely goes
    quiet runs into the timeout, and nothing is left behind."""
    monkeypatch.setenv("UFFD_HARNESS_VNG", str(_fake_vng(tmp_path, [last_line])))
    with pytest.raises(GuestTimeout):
        run_in_guest(_kernel(tmp_path), ["true"], timeout=3, rwdir=tmp_path / "rw", accel="tcg", log=lambda _: None)
    assert not qemu_processes(tmp_path / "bzImage")
