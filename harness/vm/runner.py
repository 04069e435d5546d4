"""Run one command inside a built kernel, booted by virtme-ng under QEMU.

The guest sees the host's root filesystem read-only over 9p (so the project
tree and its venv are there at the same paths), plus one writable directory
(``build/results/<kernel>`` unless told otherwise).  The command's exit
status comes back as ``GuestResult.returncode``.

Every wait is bounded: a "Kernel panic" on the console, a run past
``timeout`` and Ctrl-C all kill QEMU's whole process group and report the
last console lines.  KVM is used only if a bounded probe shows that it can
boot an ordinary kernel; otherwise QEMU runs under TCG (on the development
machine KVM only runs paravirtual guests, so expect TCG).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping, NamedTuple, Sequence

from harness import paths
from harness.vm.build import BUILD_DIR, REPO_ROOT, KernelBuild, check_host, load_kernel
from harness.vm.errors import GuestError, GuestPanic, GuestTimeout, MissingToolError

#: huge pages reserved on the guest command line, for the hugetlb cases
DEFAULT_HUGEPAGES = 32
DEFAULT_MEMORY = "2G"
DEFAULT_CPUS = 2
DEFAULT_TIMEOUT = 600.0
#: The root's 9p mount options: virtme-ng's own (1.42, run.py) plus cache=loose.
#: Without a cache every stat and open of an import is a round trip to the host;
#: with it Python starts ~30% faster in a TCG guest.  The root is read-only and
#: nothing changes it while a guest runs; the writable directory (--rwdir) is
#: mounted separately, uncached.  The kernel keeps the last rootflags= given.
ROOT_9P_FLAGS = "version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose"
#: the KVM probe must answer within this many seconds
KVM_PROBE_TIMEOUT = 20.0
#: console lines kept for error reports
CONSOLE_TAIL = 20
#: after "Kernel panic", wait this long for the rest of the trace
PANIC_GRACE = 2.0

PANIC_MARKERS = (b"Kernel panic - not syncing", b"Kernel panic")
#: What the kernel prints when init asks it to power off and it has no way to
#: (no ACPI, see vm/kernel.config): it halts, and QEMU would wait for the
#: timeout.  By then init has written the command's exit status to vng's ret
#: port.  6.12 says "reboot: Power off not available: System halted instead".
#: Only a kernel line counts (_is_console_line), not the command's stderr.
HALT_MARKER = re.compile(r"\] reboot: .*System halted")
#: what QEMU says when the runner stops it after a halt (not worth showing)
QEMU_STOPPED = re.compile(r"^qemu-system-\w+: terminating on signal 15")

#: environment variables the runner sets for the in-guest harness
ENV_UAPI_HEADER = paths.ENV_UAPI_HEADER
ENV_KERNEL = paths.ENV_KERNEL
ENV_ACCEL = paths.ENV_ACCEL


class GuestResult(NamedTuple):
    """What came back from the guest."""

    returncode: int  #: the command's exit status
    console_tail: list[str]  #: last console lines (kernel log + vng)
    elapsed: float  #: seconds from starting vng to its exit
    accel: str  #: "kvm" or "tcg"
    output: str  #: the command's stdout, if captured ("" if streamed)


# --------------------------------------------------------------------------
# host tools


def find_vng() -> str:
    """The vng executable: $UFFD_HARNESS_VNG, next to this Python, or $PATH."""
    env = os.environ.get(paths.ENV_VNG)
    if env:
        return env
    here = Path(sys.executable).parent / "vng"
    if here.exists():
        return str(here)
    found = shutil.which("vng")
    if found:
        return found
    raise MissingToolError(
        ["vng"], [], install_command="pip install virtme-ng (or `pip install -e .[vm]` in the project's venv)"
    )


#: tool -> Debian package the runner needs on the host
RUNNER_REQUIREMENTS = {
    "qemu-system-x86_64": "qemu-system-x86",
    # without udev, vng cannot find its virtio-serial ports ("cannot find
    # script I/O ports") and loses the command's output and exit status
    "udevadm": "udev",
}


def check_runner_host(install: bool | None = None) -> None:
    """QEMU, udev and vng are there (apt-get installs the first two when
    root, like the builder); raises MissingToolError naming what to install."""
    check_host(RUNNER_REQUIREMENTS, install=install)
    find_vng()


# --------------------------------------------------------------------------
# KVM or TCG


def _probe_cache_key() -> str:
    try:
        qemu = subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        qemu = "?"
    return f"{os.uname().release}|{qemu}"


def probe_kvm(bzimage: Path, timeout: float = KVM_PROBE_TIMEOUT) -> tuple[bool, str]:
    """Can KVM boot an ordinary kernel here?  Bounded by ``timeout``.

    Boots ``bzimage`` with no root filesystem: a working KVM reaches the
    expected "VFS: Unable to mount root fs" panic within a second or two;
    a broken one asserts, fails or hangs.  The result is cached per host
    kernel and QEMU version in build/cache/kvm-probe.json.
    """
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    cache = BUILD_DIR / "cache" / "kvm-probe.json"
    key = _probe_cache_key()
    try:
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return bool(data["kvm"]), str(data["reason"]) + " (cached)"
    except (OSError, ValueError, KeyError, AttributeError):  # absent or corrupt: probe again
        pass
    cmd = [
        "qemu-system-x86_64",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        str(bzimage),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    t0 = time.monotonic()
    guard = _Guard(None)  # a broken KVM may hang: a probe QEMU must not outlive a harness killed meanwhile
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except BaseException:
        guard.stand_down()
        raise
    guard.watch(proc.pid)
    out = b""
    try:
        out = _read_until(proc, b"Unable to mount root fs", timeout)
    finally:
        _kill_group(proc)
        guard.stand_down()
    dt = time.monotonic() - t0
    if b"Unable to mount root fs" in out:
        ok, reason = True, f"KVM booted a test kernel in {dt:.1f} s"
    else:
        text = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|.)", "", out.decode(errors="replace"))
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1][:200] if lines else "no kernel output"
        ok, reason = False, (f"KVM could not boot a test kernel within {timeout:.0f} s (last output: {last})")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "kvm": ok, "reason": reason}))
    except OSError:
        pass
    return ok, reason


def _read_until(proc: subprocess.Popen, marker: bytes, timeout: float) -> bytes:
    """Collect proc's stdout until marker appears, it exits, or timeout."""
    assert proc.stdout is not None
    buf = bytearray()
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            if marker in buf:
                break
        elif chunk == b"":  # EOF: qemu exited
            break
        else:
            time.sleep(0.05)
    return bytes(buf)


def choose_accel(bzimage: Path, log=None) -> str:
    """$UFFD_HARNESS_ACCEL ("kvm"/"tcg") if set, else the probe's answer."""
    forced = os.environ.get(ENV_ACCEL, "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    ok, reason = probe_kvm(bzimage)
    if log:
        log(f"[vm] {'KVM' if ok else 'TCG'}: {reason}")
    return "kvm" if ok else "tcg"


# --------------------------------------------------------------------------
# running


def _kill_group(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM then SIGKILL the whole process group; reap the leader."""
    pgid = proc.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


#: The guard: a shell in its own session, deaf to the signals that end the harness, reading a pipe
#: only the harness can write.  Line 1 is vng's process group; "done" means QEMU is gone.  End of
#: file without "done" means the harness died, however (SIGKILL included): then it ends the guest's
#: whole process group, as _kill_group() would, and removes the guest's command script (if any).
_GUARD_SCRIPT = r"""
trap '' TERM HUP INT QUIT
# (dash: kill takes no "--" before a negative process group id)
pgid=
while IFS= read -r line; do
    [ "$line" = done ] && exit 0
    pgid=$line
done
[ -z "$1" ] || rm -f -- "$1"
[ -n "$pgid" ] || exit 0
kill -TERM "-$pgid" 2>/dev/null
i=0
while kill -0 "-$pgid" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
kill -KILL "-$pgid" 2>/dev/null
exit 0
"""


class _Guard:
    """Ends a guest's (or the KVM probe's) process group and removes its script if this process dies first.

    A parent-death signal would not do: it goes to vng, and QEMU, vng's
    child, would stay; and it fires when the *thread* that started vng ends.
    The guard sees this process's end as the end of a pipe instead, which no
    signal can keep from happening.
    """

    def __init__(self, script: Path | None):
        read_end, self._write_end = os.pipe()  # both close-on-exec: no other child holds the write end
        try:
            self._proc = subprocess.Popen(
                ["sh", "-c", _GUARD_SCRIPT, "uffd-harness-guard", str(script or "")],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def watch(self, pgid: int) -> None:
        os.write(self._write_end, f"{pgid}\n".encode())

    def stand_down(self) -> None:
        """QEMU is gone and the script removed: the guard exits without touching anything."""
        try:
            os.write(self._write_end, b"done\n")
        except OSError:
            pass
        os.close(self._write_end)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _pump(stream: BinaryIO, name: str, q: "queue.Queue") -> None:
    for line in iter(stream.readline, b""):
        q.put((name, line))
    q.put((name, None))


def guest_command(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The shell line vng runs in the guest: ``env K=V ... argv``."""
    assigns = [f"{k}={v}" for k, v in env.items()]
    return shlex.join(["env", *assigns, *argv]) if assigns else shlex.join(argv)


def guest_environment(
    kernel: KernelBuild, rwdir: Path, accel: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What the in-guest harness is told: where the kernel's uapi header is
    (the hint ABI values come from it), which kernel, which accelerator,
    where to write."""
    env = {
        ENV_UAPI_HEADER: str(kernel.uapi_header.resolve()),
        ENV_KERNEL: kernel.name,
        ENV_ACCEL: accel,
        paths.ENV_RWDIR: str(Path(rwdir).resolve()),
    }
    env.update(extra or {})
    return env


#: zram swap in the guest, so MADV_PAGEOUT swaps anonymous pages out
#: (harness.backends.kernel.kernel_swap(); vm/kernel.config has SWAP and ZRAM)
GUEST_SWAP_SIZE = "256M"

#: What the guest gets before the command, as root: debugfs (the pte channel
#: of vm/instrumentation lives there, and virtme-ng's init does not mount it)
#: and a zram swap device.  Large folios (shmem THP, anonymous mTHP) are left
#: off, as the kernel boots: the tests that need them turn them on for their
#: module (tests/conftest.py, large_folios_enabled), so the kernel's own
#: selftests run with the defaults they expect.  A step that fails says so on stderr and the
#: command runs anyway: the tests that need it then name what is missing.
GUEST_SETUP = f"""\
export PATH="$PATH:/sbin:/usr/sbin"
grep -qs ' /sys/kernel/debug debugfs ' /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug \
  || echo "uffd-harness guest set-up: cannot mount debugfs at /sys/kernel/debug" >&2
if [ -e /sys/block/zram0/disksize ]; then
  grep -qs '^/dev/zram0 ' /proc/swaps || {{ echo {GUEST_SWAP_SIZE} > /sys/block/zram0/disksize \
    && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0; }} \
  || echo "uffd-harness guest set-up: no swap: zram0 ({GUEST_SWAP_SIZE}) could not be set up" >&2
else
  echo "uffd-harness guest set-up: no swap: the kernel has no zram0 (CONFIG_ZRAM)" >&2
fi
"""


def guest_script(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """A sh script that sets ``env``, does :data:`GUEST_SETUP` and execs ``argv``.

    vng passes --exec on the kernel command line (base64, limited to 2 KiB
    with everything else), so long commands go through a script in rwdir.
    """
    lines = ["#!/bin/sh", GUEST_SETUP.rstrip("\n")]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def vng_command(
    kernel: KernelBuild,
    argv: Sequence[str] | str,
    *,
    rwdir: Path,
    env: Mapping[str, str],
    accel: str,
    cwd: Path,
    memory: str = DEFAULT_MEMORY,
    cpus: int = DEFAULT_CPUS,
    hugepages: int = DEFAULT_HUGEPAGES,
    append: Sequence[str] = (),
) -> list[str]:
    """The vng command line (exposed for --dry-run and the tests)."""
    cmdline = [f"hugepages={hugepages}", "panic=-1", f"rootflags={ROOT_9P_FLAGS}", *append]
    cmd = [
        find_vng(),
        "--run",
        str(kernel.path),
        "--force-9p",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        "--rwdir",
        str(rwdir),
        "--cwd",
        str(cwd),
        "--append",
        " ".join(cmdline),
        "--verbose",
        # One socket per CPU: with `-smp N` alone QEMU puts N cores in one
        # package, and SeaBIOS's MP table lists one CPU per package, so a
        # kernel without ACPI (vm/kernel.config) booted with one CPU.
        "--qemu-opts",
        f"-smp sockets={cpus},cores=1,threads=1",
    ]
    if accel == "tcg":
        cmd.append("--disable-kvm")
    exec_line = argv if isinstance(argv, str) else guest_command(argv, env)
    cmd += ["--exec", exec_line]
    return cmd


def run_in_guest(
    kernel: KernelBuild | str,
    argv: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    rwdir: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    *,
    memory: str = DEFAULT_MEMORY,
    cpus: int = DEFAULT_CPUS,
    hugepages: int = DEFAULT_HUGEPAGES,
    accel: str | None = None,
    cwd: str | os.PathLike | None = None,
    capture: bool = False,
    show_console: bool = False,
    append: Sequence[str] = (),
    log=None,
    console_log: str | os.PathLike | None = None,
    on_line=None,
) -> GuestResult:
    """Boot ``kernel`` and run ``argv`` in it; return its exit status.

    With ``console_log``, every console line (kernel log and the command's
    stderr) is also written to that file, kept even when the guest panics
    or times out.  ``on_line`` (a callable) gets each console line as it
    arrives, so the host can time what the guest reports (a guest's own
    clock runs slow under a loaded TCG host).

    The command's stdout/stderr are streamed to ours (or, with
    ``capture=True``, stdout is returned in ``GuestResult.output``).  The
    guest gets ``UFFD_HARNESS_UAPI_HEADER`` (the kernel's
    include/uapi/linux/userfaultfd.h, as built) and ``UFFD_HARNESS_KERNEL``
    in its environment, plus ``env``.

    Raises GuestPanic if the kernel panics, GuestTimeout after ``timeout``
    seconds, GuestError if vng fails before the command could run; in every
    case QEMU is gone when this returns or raises.
    """
    if log is None:

        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

    if isinstance(kernel, str):
        kernel = load_kernel(kernel)
    check_runner_host()
    rw = Path(rwdir) if rwdir is not None else BUILD_DIR / "results" / kernel.name
    rw = rw.resolve()
    rw.mkdir(parents=True, exist_ok=True)
    accel = accel or choose_accel(kernel.path, log)
    guest_env = guest_environment(kernel, rw, accel, env)
    script = rw / f".guest-command-{os.getpid()}-{threading.get_ident()}.sh"
    guard = _Guard(script)  # before the script exists: whatever exists after this is guarded
    try:
        script.write_text(guest_script(argv, guest_env))
    except BaseException:
        guard.stand_down()
        raise
    cmd = vng_command(
        kernel,
        f"sh {shlex.quote(str(script))}",
        rwdir=rw,
        env=guest_env,
        accel=accel,
        cwd=Path(cwd or REPO_ROOT).resolve(),
        memory=memory,
        cpus=cpus,
        hugepages=hugepages,
        append=append,
    )

    console: collections.deque[str] = collections.deque(maxlen=CONSOLE_TAIL)
    captured: list[bytes] = []
    q: "queue.Queue[tuple[str, bytes | None]]" = queue.Queue()
    # vng runs virtme-run from $PATH: put vng's own bin directory first.
    host_env = dict(os.environ)
    host_env["PATH"] = os.pathsep.join([str(Path(cmd[0]).parent), host_env.get("PATH", "/usr/bin:/bin")])
    console_file = open(console_log, "w", buffering=1) if console_log else None
    t0 = time.monotonic()
    try:
        with _live_lock:  # started and registered, or refused: guests_stopped() misses none
            if _stopping:
                raise GuestError(
                    f"guest of kernel '{kernel.name}' not started: the run is being stopped "
                    "(Ctrl-C, SIGTERM or SIGHUP)",
                    [],
                )
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(REPO_ROOT),
                env=host_env,
                start_new_session=True,
            )
            _live_guests.add(proc)
    except BaseException:
        if console_file is not None:
            console_file.close()
        script.unlink(missing_ok=True)
        guard.stand_down()
        raise
    guard.watch(proc.pid)
    readers = [
        threading.Thread(target=_pump, args=(s, n, q), daemon=True)
        for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for r in readers:
        r.start()

    open_streams = 2
    panic_at: float | None = None
    halted = False
    deadline = t0 + timeout
    try:
        while open_streams:
            now = time.monotonic()
            if panic_at is not None and now - panic_at > PANIC_GRACE:
                break
            if now > deadline:
                _kill_group(proc)
                raise GuestTimeout(
                    f"guest command {shlex.join(argv)!r} on kernel "
                    f"'{kernel.name}' ({accel}) timed out after {timeout:.0f} s; "
                    "QEMU killed",
                    list(console),
                )
            try:
                name, line = q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            if name == "out":
                if capture:
                    captured.append(line)
                else:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
                continue
            # stderr carries the guest console (--verbose) and the
            # command's own stderr; keep all of it for the report.
            text = line.decode(errors="replace").rstrip("\r\n")
            console.append(text)
            if console_file is not None:
                console_file.write(text + "\n")
            if on_line is not None:
                on_line(text)
            if halted and QEMU_STOPPED.match(text):
                continue
            if show_console or not _is_console_line(text):
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
            if panic_at is None and any(m in line for m in PANIC_MARKERS):
                panic_at = time.monotonic()
            elif _is_console_line(text) and HALT_MARKER.search(text):
                # Stop QEMU only, not vng: vng then reads the exit status
                # from its ret file and exits with it.
                halted = True
                for pid in qemu_processes(group=proc.pid):
                    _signal(pid, signal.SIGTERM)
        if panic_at is not None:
            _kill_group(proc)
            raise GuestPanic(f"kernel '{kernel.name}' panicked while running {shlex.join(argv)!r}", list(console))
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise GuestTimeout(
                f"vng did not exit after closing its output; killed after {timeout:.0f} s", list(console)
            ) from None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        for r in readers:
            r.join(timeout=2)
        script.unlink(missing_ok=True)
        with _live_lock:
            _live_guests.discard(proc)
        if console_file is not None:
            console_file.close()
        if proc.poll() is None:  # not reaped: make sure, or the guard would stand down with QEMU alive
            _kill_group(proc)
        guard.stand_down()
    elapsed = time.monotonic() - t0
    if rc == 255 and any("cannot find script I/O ports" in c for c in console):
        raise GuestError(
            "vng could not find its virtio-serial ports, so the "
            "command's exit status is lost: install udev "
            "(apt-get install -y udev)",
            list(console),
        )
    return GuestResult(rc, list(console), elapsed, accel, b"".join(captured).decode(errors="replace"))


#: the vng processes run_in_guest() has started and not yet reaped
_live_guests: set = set()
#: how many guests_stopped() blocks are open: while any is, run_in_guest() starts no guest
_stopping = 0
#: guards _live_guests and _stopping, so that a guest is either registered before a stop or refused after it
_live_lock = threading.Lock()


@contextlib.contextmanager
def guests_stopped() -> Iterator[int]:
    """Kill every guest this process started, and start no new one until the block ends; yields how many.

    For a caller that runs guests in worker threads and was interrupted
    (Ctrl-C, or SIGTERM/SIGHUP as :class:`harness.cli.Terminated`): inside the
    block it waits for its workers.  Each sees its guest die and returns or
    raises as for any guest that died; a worker about to boot its next guest
    (a queued kernel, a guest still probing KVM) gets a GuestError instead of
    a guest the caller would then wait for, minutes on end.
    """
    global _stopping
    with _live_lock:
        _stopping += 1
        procs = list(_live_guests)
    try:
        for proc in procs:
            _kill_group(proc)
        yield len(procs)
    finally:
        with _live_lock:
            _stopping -= 1


def qemu_processes(bzimage: str | os.PathLike | None = None, *, group: int | None = None) -> list[int]:
    """PIDs of live QEMU processes: only those booting ``bzimage``, and only
    those in process group ``group``, when given."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            if group is not None and os.getpgid(int(entry)) != group:
                continue
        except OSError:
            continue
        if not args or b"qemu-system" not in os.path.basename(args[0]):
            continue
        if bzimage is not None and not any(os.fsencode(str(bzimage)) in a for a in args):
            continue
        pids.append(int(entry))
    return pids


def _signal(pid: int, sig: int) -> None:
    """kill(pid, sig), for a process that may have exited meanwhile."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_CONSOLE_LINE = re.compile(r"^\[\s*\d+\.\d+\]")


def _is_console_line(text: str) -> bool:
    """Kernel log lines: CONFIG_PRINTK_TIME puts "[    0.123456]" first.

    vng --verbose sends the guest console and the command's stderr both to
    its stderr; the timestamp is what tells them apart.
    """
    return bool(_CONSOLE_LINE.match(text))
