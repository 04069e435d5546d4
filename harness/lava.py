"""LAVA: a job definition that boots a built kernel on LAVA's ``qemu`` device type and runs the validation.

``uffd-harness lava-job --kernel NAME`` writes two files (``uffd-harness validate``
writes them for both of its kernels, under ``build/results/lava/``):

- ``<name>.yaml``, the job: deploy ``to: tmpfs`` the bzImage and a cpio
  ramdisk (your root filesystem, with LAVA's own overlay and the harness
  bundle below unpacked into it at ``/opt/uffd-harness``), ``boot: method:
  qemu``, then an inline test definition that runs the validation's guest
  steps (:mod:`harness.validate.guest`: the contract suite, the kernel's mm
  selftests, the benchmarks) and reports every result as a LAVA test case.
- ``<name>-bundle.tar.gz``, the harness for the guest: the tracked source
  files, the compiled CFFI extension, and the kernel's ``build.json``,
  bzImage, uapi header and selftest binaries (``build/kernels/<name>/``).
  The guest's Python must be the one the extension was built for.

Results become LAVA test cases (``lava-test-case NAME --result pass|fail|skip``)
in three sets: ``contract`` (one case per clause; ``absent`` is skip),
``selftests`` (one per case) and ``bench`` (one per scenario, with the median as
its measurement in cycles).  ``python -m harness.lava cases OUT`` does that in
the guest; :func:`lava_cases` is the part tests check.

LAVA's schema (Debian's ``lava-common``, ``lava_common.schemas.validate``)
accepts the job: tests/test_kernel_ci.py checks that.  Whether a dispatcher
on this machine can run it is in the README (section on kernel CI).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable, Optional

from harness import paths

#: where the bundle is unpacked in the guest, and where results go there
GUEST_HARNESS_DIR = "/opt/uffd-harness"
GUEST_RESULTS_DIR = "/tmp/uffd-harness-results"
#: the kernel command line: the ramdisk is the root file system, the console the first serial port
KERNEL_ARGS = "console=ttyS0,115200 rdinit=/sbin/init"
#: shell prompts of the ramdisk's root shell that LAVA waits for
PROMPTS = ["root@(.*):[/~]#", "/ #"]
#: the ramdisk of the jobs ``validate`` writes when ``$UFFD_HARNESS_LAVA_RAMDISK_URL`` names none: the lab's
#: root file system goes there (or the job's url is edited), see the README's LAVA section
ENV_RAMDISK_URL = paths.ENV_LAVA_RAMDISK_URL
RAMDISK_PLACEHOLDER = "file:///srv/uffd-harness/rootfs.cpio"
#: what the guest's Python needs, beside the bundle (the project's dependencies, test extra)
GUEST_PYTHON_NEEDS = (
    "python3 (the version the bundle's extension was built with)",
    "cffi",
    "psutil",
    "tabulate",
    "pytest",
    "pytest-timeout",
    "hypothesis",
)

_LAVA_RESULT = {"pass": "pass", "fail": "fail", "absent": "skip", "skip": "skip"}


# -- in the guest: results to test cases ---------------------------------------------------


def _case_name(text: str) -> str:
    """A LAVA test case name: letters, digits, '.', '_' and '-' (lava-test-case rejects spaces and '/')."""
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_")
    return out or "unnamed"


def lava_cases(out: Path) -> list[dict]:
    """Every result the guest steps left under ``out``, as LAVA test cases.

    ``[{"set": "contract"|"selftests"|"bench", "name", "result": "pass"|"fail"|"skip",
    "measurement"?, "units"?}]``.  A clause with no result (the suite crashed) is fail.
    """
    from harness.validate.verdict import CLAUSES

    cases: list[dict] = []
    summary = _load(out / "summary.json")
    clauses = (summary or {}).get("clauses", {})
    for n in CLAUSES:
        result = clauses.get(str(n), {}).get("result")
        cases.append({"set": "contract", "name": f"clause_{n}", "result": _LAVA_RESULT.get(result, "fail")})
    steps = _load(out / "steps.json") or {}
    for test, run in (steps.get("selftests") or {}).items():
        for case in run.get("cases", []):
            cases.append(
                {
                    "set": "selftests",
                    "name": _case_name(f"{test}.{case['name']}"),
                    "result": _LAVA_RESULT[case["result"]],
                }
            )
        if run.get("error"):
            cases.append({"set": "selftests", "name": _case_name(test), "result": "fail"})
    _number_repeats(cases)
    bench = _load(out / "bench.json")
    for name, s in ((bench or {}).get("scenarios") or {}).items():
        case = {"set": "bench", "name": _case_name(name)}
        if s.get("status") == "ok" and s.get("summary"):
            case.update(result="pass", measurement=s["summary"]["median"], units=s.get("unit") or "cycles")
        else:
            case["result"] = "skip" if str(s.get("status", "")).startswith("absent") else "fail"
        cases.append(case)
    return cases


def _number_repeats(cases: list[dict]) -> None:
    """Make names unique: selftests print some twice (mkdirty: "SIGSEGV generated, page not modified")."""
    seen: dict[str, int] = {}
    for case in cases:
        seen[case["name"]] = seen.get(case["name"], 0) + 1
        if seen[case["name"]] > 1:
            case["name"] = f"{case['name']}_{seen[case['name']]}"


def _load(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def case_commands(cases: list[dict]) -> list[list[str]]:
    """The LAVA shell-helper calls (lava-test-set, lava-test-case) that report ``cases``, in order."""
    commands, current = [], None
    for case in cases:
        if case["set"] != current:
            if current is not None:
                commands.append(["lava-test-set", "stop", current])
            current = case["set"]
            commands.append(["lava-test-set", "start", current])
        argv = ["lava-test-case", case["name"], "--result", case["result"]]
        if "measurement" in case:
            argv += ["--measurement", f"{case['measurement']:.1f}", "--units", case["units"]]
        commands.append(argv)
    if current is not None:
        commands.append(["lava-test-set", "stop", current])
    return commands


def emit(cases: list[dict], run: Callable = subprocess.run) -> int:
    """Report ``cases`` to LAVA with its shell helpers; the number of cases reported."""
    for argv in case_commands(cases):
        run(argv, check=False)
    return len(cases)


# -- on the host: the job and the bundle ------------------------------------------------------


def job_definition(
    name: str,
    build: dict,
    *,
    kernel_url: str,
    ramdisk_url: str,
    bundle_url: str,
    ramdisk_compression: Optional[str] = None,
    no_kvm: bool = False,
    memory_mb: int = 2048,
    cpus: int = 2,
    job_minutes: int = 90,
) -> dict:
    """The LAVA job (a dict; YAML when written) for kernel ``name`` with its build.json ``build``.

    The ramdisk is uncompressed by default: the project's kernel config has
    no CONFIG_RD_GZIP, and LAVA recompresses the ramdisk after adding its
    overlays with the compression named here ("Initramfs unpacking failed:
    compression method gzip not configured" otherwise).
    """
    patches = build.get("patches") or []
    description = f"{build.get('source_version') or 'unknown source'}" + (
        f" with {len(patches)} patch(es)" if patches else ", no patches"
    )
    env = (
        f"UFFD_HARNESS_KERNEL={name} "
        f"UFFD_HARNESS_UAPI_HEADER={GUEST_HARNESS_DIR}/build/kernels/{name}/uapi/linux/userfaultfd.h "
        f"UFFD_HARNESS_BUILD_DIR={GUEST_HARNESS_DIR}/build"
    )
    ramdisk = {
        "url": ramdisk_url,
        "format": "cpio.newc",
        "image_arg": "-initrd {ramdisk}",
        "overlays": {
            "lava": True,
            "uffd-harness": {"url": bundle_url, "compression": "gz", "format": "tar", "path": GUEST_HARNESS_DIR},
        },
    }
    if ramdisk_compression:
        ramdisk["compression"] = ramdisk_compression
    context = {"arch": "amd64", "memory": memory_mb, "extra_options": [f"-smp {cpus}"]}
    if no_kvm:
        context["no_kvm"] = "True"  # TCG: timings then do not model hardware A/D assists (the report says so)
    return {
        "device_type": "qemu",
        "job_name": f"uffd-harness validation: kernel {name} ({description})"[:200],
        "timeouts": {
            "job": {"minutes": job_minutes},
            "action": {"minutes": job_minutes - 5},
            "connection": {"minutes": 2},
        },
        "priority": "medium",
        "visibility": "public",
        "context": context,
        "metadata": {
            "uffd-harness.kernel": name,
            "uffd-harness.build-key": build.get("key", ""),
            "uffd-harness.source-version": build.get("source_version", ""),
            "uffd-harness.patches": ",".join(p["sha256"][:12] for p in patches),
        },
        "actions": [
            {
                "deploy": {
                    "to": "tmpfs",
                    "timeout": {"minutes": 10},
                    "images": {
                        "kernel": {"url": kernel_url, "image_arg": f'-kernel {{kernel}} -append "{KERNEL_ARGS}"'},
                        "ramdisk": ramdisk,
                    },
                }
            },
            {"boot": {"method": "qemu", "media": "tmpfs", "timeout": {"minutes": 5}, "prompts": list(PROMPTS)}},
            {
                "test": {
                    "timeout": {"minutes": job_minutes - 20},
                    "definitions": [
                        {
                            "from": "inline",
                            "name": "uffd-harness",
                            "path": "inline/uffd-harness.yaml",
                            "repository": {
                                "metadata": {
                                    "format": "Lava-Test Test Definition 1.0",
                                    "name": "uffd-harness",
                                    "description": "userfaultfd hint contract, mm selftests, first-touch benchmarks",
                                },
                                "run": {
                                    "steps": [
                                        f"cd {GUEST_HARNESS_DIR}",
                                        # each step is bounded in time and records its own failure in steps.json
                                        f"{env} python3 -m harness.validate.guest {GUEST_RESULTS_DIR} || true",
                                        f"{env} python3 -m harness.lava cases {GUEST_RESULTS_DIR}",
                                    ]
                                },
                            },
                        }
                    ],
                }
            },
        ],
    }


def bundle(name: str, dest: Path) -> Path:
    """``dest``: a tar.gz of what the guest needs from here (see the module's docstring)."""
    from harness.vm.build import load_kernel

    kb = load_kernel(name)
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=paths.REPO_ROOT, capture_output=True, check=True, timeout=60)
        .stdout.decode()
        .split("\0")
    )
    extras = [p.relative_to(paths.REPO_ROOT) for p in (paths.REPO_ROOT / "harness").glob("_native*.so")]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for rel in [f for f in files if f] + [str(p) for p in extras]:
            path = paths.REPO_ROOT / rel
            if path.is_file():
                tar.add(path, arcname=rel)
        kdir = f"build/kernels/{name}"
        for path, arc in (
            (kb.directory / "build.json", f"{kdir}/build.json"),
            (kb.path, f"{kdir}/bzImage"),
            (kb.uapi_header, f"{kdir}/uapi/linux/userfaultfd.h"),
            (kb.selftests_dir, f"{kdir}/selftests"),
        ):
            if path.exists():
                tar.add(path, arcname=arc)
    return dest


def write_job(
    name: str,
    out: Path,
    *,
    ramdisk_url: str,
    kernel_url: Optional[str] = None,
    bundle_url: Optional[str] = None,
    no_kvm: bool = False,
) -> tuple[Path, Path]:
    """Write kernel ``name``'s job to ``out`` and its bundle beside it (``NAME-bundle.tar.gz``); both paths.

    Without ``kernel_url``/``bundle_url`` the job points at ``file://`` paths on this machine.
    """
    from harness.vm.build import load_kernel

    kb = load_kernel(name)  # VmError: not built
    bundle_path = out.with_name(f"{out.stem}-bundle.tar.gz")
    bundle(name, bundle_path)
    job = job_definition(
        name,
        kb.info,
        kernel_url=kernel_url or kb.path.resolve().as_uri(),
        ramdisk_url=ramdisk_url,
        bundle_url=bundle_url or bundle_path.resolve().as_uri(),
        no_kvm=no_kvm,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_yaml(job))
    return out, bundle_path


def to_yaml(job: dict) -> str:
    import yaml  # PyYAML: a dependency of the [ci] extra

    return yaml.safe_dump(job, sort_keys=False, width=1000)


# -- the verbs ----------------------------------------------------------------------------


def _lava_job(args: argparse.Namespace) -> int:
    from harness.vm.build import load_kernel
    from harness.vm.errors import VmError

    try:
        load_kernel(args.kernel)
    except VmError as exc:
        print(f"uffd-harness lava-job: {exc}", file=sys.stderr)
        return 2
    if not args.ramdisk_url:
        print(
            "uffd-harness lava-job: --ramdisk-url is required: a cpio.newc root file system whose /sbin/init "
            f"starts a shell, with {', '.join(GUEST_PYTHON_NEEDS)}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else paths.RESULTS_DIR / "lava" / f"{args.kernel}.yaml"
    job, bundle_path = write_job(
        args.kernel,
        out,
        ramdisk_url=args.ramdisk_url,
        kernel_url=args.kernel_url,
        bundle_url=args.bundle_url,
        no_kvm=args.no_kvm,
    )
    print(f"LAVA job: {job}\nbundle:   {bundle_path}")
    return 0


def write_validation_jobs(names: list[str], results: Path) -> list[Path]:
    """The jobs of ``validate``: one per kernel it built, under ``results/lava/`` (an earlier run's removed),
    with the ramdisk of ``$UFFD_HARNESS_LAVA_RAMDISK_URL`` or :data:`RAMDISK_PLACEHOLDER`."""
    lava_dir = results / "lava"
    shutil.rmtree(lava_dir, ignore_errors=True)
    ramdisk = os.environ.get(ENV_RAMDISK_URL) or RAMDISK_PLACEHOLDER
    return [write_job(name, lava_dir / f"{name}.yaml", ramdisk_url=ramdisk)[0] for name in names]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lava-job",
        help="write a LAVA job (qemu device type) that validates a built kernel",
        description="Write a LAVA job definition that boots the kernel built as NAME on "
        "LAVA's qemu device type and runs the contract suite, the mm selftests and "
        "the benchmarks, each result a LAVA test case; and the bundle it deploys.",
    )
    p.add_argument("--kernel", required=True, metavar="NAME", help="a kernel built by `make kernel KERNEL=NAME`")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the job's YAML (default build/results/lava/NAME.yaml); the bundle goes beside it as NAME-bundle.tar.gz",
    )
    p.add_argument(
        "--ramdisk-url",
        metavar="URL",
        help="uncompressed cpio.newc root file system with Python and the project's dependencies (required)",
    )
    p.add_argument(
        "--kernel-url", metavar="URL", help="where the lab fetches the bzImage (default file:// of the build)"
    )
    p.add_argument("--bundle-url", metavar="URL", help="where the lab fetches the bundle (default file:// of it)")
    p.add_argument("--no-kvm", action="store_true", help="TCG in the lab too (timings then say nothing of hardware)")
    p.set_defaults(func=_lava_job)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m harness.lava cases OUT``: in a LAVA guest, report OUT's results as LAVA test cases."""
    parser = argparse.ArgumentParser(prog="python -m harness.lava")
    sub = parser.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("cases", help="report the results under OUT as LAVA test cases")
    c.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if not shutil.which("lava-test-case"):
        print(
            "python -m harness.lava cases: lava-test-case is not on PATH (run this inside a LAVA test shell)",
            file=sys.stderr,
        )
        return 2
    n = emit(lava_cases(args.out))
    print(f"reported {n} LAVA test cases from {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
