"""``report.kcidb.json``: a validation in KernelCI's KCIDB I/O schema (v5), from ``report.json``'s dictionary.

KCIDB's objects and what each is here:

=========  ==================================================================
checkout   one per (base, series): Debian's ``linux-source-6.12`` at its
           package version, and the series' ``patchset_hash`` (stock: none)
build      one per kernel: config, compiler, duration, status (from build.json)
test       one per contract clause, kernel selftest case and benchmark scenario
=========  ==================================================================

Statuses, mapped as KCIDB defines them: a clause that passed or failed is
PASS / FAIL; ``absent`` (the kernel lacks the feature, so the clause ran on the
simulator only) is SKIP with that reason; a clause of a kernel that booted but
crashed or hung is ERROR; one of a kernel that never ran (build failure) is
MISS.  Benchmark scenarios that produced a median are DONE with the median as
``number`` (KCIDB's status for a measurement), absent ones SKIP, failed ones
ERROR.  IDs are ``<origin>:...`` as the schema requires; build IDs are the
build's cache key (the same inputs are the same build), test IDs add a run
ID taken from a hash of the report, so two runs never overwrite each other.
The schema library ``kcidb-io`` (``kcidb_io.schema.LATEST.validate``) checks
the output in tests/test_kernel_ci.py; it is not needed to write it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timedelta
from typing import Any, Optional

from harness import paths

#: the environment variable and the default of KCIDB's ``origin`` (the CI system's name)
ENV_ORIGIN = paths.ENV_KCIDB_ORIGIN
DEFAULT_ORIGIN = "uffd_harness"
#: the schema version written (kcidb-io's LATEST when this was written)
SCHEMA_VERSION = {"major": 5, "minor": 3}

#: KCIDB's rules for an origin and for one segment of a test path
_ORIGIN = re.compile(r"^[a-z0-9_]+$")
_PATH_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")

_CLAUSE_STATUS = {"pass": "PASS", "fail": "FAIL", "absent": "SKIP"}
_CASE_STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def origin_from_env() -> str:
    return os.environ.get(ENV_ORIGIN) or DEFAULT_ORIGIN


def check_origin(origin: str) -> str:
    """``origin`` if KCIDB accepts it, else ValueError saying its rule."""
    if not _ORIGIN.match(origin):
        raise ValueError(
            f"KCIDB origin {origin!r}: must match [a-z0-9_]+ (lower-case letters, digits, '_'); "
            f"set --kcidb-origin or {ENV_ORIGIN}"
        )
    return origin


def _segment(text: str) -> str:
    """One segment of a KCIDB test path: letters, digits, '_' and '-' only."""
    return _PATH_UNSAFE.sub("_", text).strip("_") or "unnamed"


def patchset_hash(patch_sha256s: list[str]) -> str:
    """KCIDB's patchset hash: sha256 over the newline-terminated sha256 of each patch, in order ("" for none)."""
    if not patch_sha256s:
        return ""
    return hashlib.sha256("".join(h + "\n" for h in patch_sha256s).encode()).hexdigest()


def _run_id(report: dict) -> str:
    return hashlib.sha256(json.dumps(report, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _start_time(build: dict) -> Optional[str]:
    """When the build started: ``built_at`` (its end) less its duration, in RFC 3339."""
    try:
        end = datetime.strptime(build["built_at"], "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, TypeError, ValueError):
        return None
    return (end - timedelta(seconds=float(build.get("total_seconds") or 0))).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _base(report: dict) -> dict:
    """The base every kernel of the report shares (source version), from any build that has one."""
    for k in report["kernels"].values():
        if k.get("build"):
            return k["build"]
    return {}


def _checkout(origin: str, name: str, k: dict, base: dict) -> dict:
    build = k.get("build") or {}
    if k["where"] == "host":
        # no checkout of ours: the host's own kernel, validated where QEMU could not run
        return {
            "id": f"{origin}:host-{_segment(k['release'] or 'unknown')}",
            "origin": origin,
            "comment": f"the host's running kernel {k['release']}, not built by uffd-harness",
            "valid": True,
        }
    hashes = [p["sha256"] for p in build.get("patches", [])]
    # build.json's source_version is "<package> <version>" (dpkg's words for the tarball's package)
    package, _, version = (build.get("source_version") or base.get("source_version") or "unknown").rpartition(" ")
    package = package or "linux-source-6.12"
    pset = patchset_hash(hashes)
    checkout: dict[str, Any] = {
        "id": f"{origin}:{package}={version}" + (f"+{pset[:16]}" if pset else ("" if build else f"+{name}")),
        "origin": origin,
        "tree_name": f"debian-{package}",
        "comment": f"Debian {package} {version}"
        + (f" with {len(hashes)} patch(es) from {build.get('patches_dir')}" if hashes else "")
        + ("" if build else f" with the series of kernel '{name}' (its build failed)"),
        "misc": {
            "source_package": package,
            "source_version": version,
            "kernel_version": build.get("kernel_version"),
            "patches": build.get("patches", []),
        },
    }
    if build:
        checkout["patchset_hash"] = pset
        checkout["valid"] = True
    elif "does not apply" in (k.get("error") or ""):
        checkout["valid"] = False
        checkout["log_excerpt"] = k["error"][:16000]
    return checkout


def _build(origin: str, name: str, k: dict, checkout_id: str) -> dict:
    build = k.get("build") or {}
    if k["where"] == "host":
        return {
            "id": f"{checkout_id}:running",
            "origin": origin,
            "checkout_id": checkout_id,
            "architecture": "x86_64",
            "status": "PASS",
            "comment": f"the host's running kernel {k['release']} (not built here)",
        }
    out: dict[str, Any] = {
        "id": f"{origin}:{build['key']}" if build.get("key") else f"{checkout_id}:{_segment(name)}",
        "origin": origin,
        "checkout_id": checkout_id,
        "architecture": "x86_64",
        "comment": f"kernel '{name}'",
    }
    if build:
        out.update(
            status="PASS",
            compiler=build.get("gcc", ""),
            duration=float(build.get("total_seconds") or 0),
            config_name="tinyconfig+" + os.path.basename(build.get("config_fragment", "kernel.config")),
            command=f"uffd-harness vm build --kernel {name}",
            misc={
                "cache_key": build.get("key"),
                "config_fragment_sha256": build.get("config_fragment_sha256"),
                "config_missing": build.get("config_missing", []),
                "kernel_build_seconds": build.get("kernel_build_seconds"),
                "seeded_from": build.get("seeded_from"),
            },
        )
        start = _start_time(build)
        if start:
            out["start_time"] = start
    elif (k.get("error") or "").startswith("build failed"):
        out.update(status="FAIL", log_excerpt=k["error"][:16000])
    return out


def _kernel_ran(k: dict) -> bool:
    """Whether the kernel ran at all (a guest that booted, or the host): else its tests are MISS."""
    return k["where"] == "host" or bool(k.get("build")) and not (k.get("error") or "").startswith("build failed")


def _tests(origin: str, run: str, name: str, k: dict, build_id: str, report: dict) -> list[dict]:
    prefix = f"{origin}:{run}:{_segment(name)}"
    environment = {
        "comment": f"QEMU guest ({k['accel'] or '?'})" if k["where"] == "guest" else f"host kernel {k['release']}",
        "misc": {"where": k["where"], "accel": k["accel"], "kernel_release": k["release"]},
    }
    ran = _kernel_ran(k)
    tests = []
    seen: dict[str, int] = {}

    def add(path: str, status: str, comment: str = "", **extra) -> None:
        # selftests print some case names twice (mkdirty: "SIGSEGV generated, page not modified"): number repeats
        seen[path] = seen.get(path, 0) + 1
        if seen[path] > 1:
            path = f"{path}_{seen[path]}"
        test = {
            "id": f"{prefix}:{path}",
            "origin": origin,
            "build_id": build_id,
            "path": path,
            "status": status,
            "environment": environment,
            **extra,
        }
        if comment:
            test["comment"] = comment
        tests.append(test)

    for n, clause in report["clauses"].items():
        result = clause.get(name, "absent")
        status = _CLAUSE_STATUS.get(result) or ("ERROR" if ran else "MISS")
        comment = clause["text"]
        if result == "absent":
            comment += "; absent: the kernel lacks what the clause needs, so it ran on the simulator only"
        elif status in ("ERROR", "MISS"):
            comment += f"; did not run: {(k.get('error') or 'no result').splitlines()[0]}"
        add(
            f"uffd_harness.contract.clause_{n}",
            status,
            comment,
            misc={
                "observed_via": clause.get("observed_via", {}).get(name, {}),
                "memory": clause.get("memory", {}).get(name, {}),
            },
        )
    for test, selftest in k["selftests"].items():
        base = f"uffd_harness.selftests.{_segment(test)}"
        for case in selftest["cases"]:
            add(
                f"{base}.{_segment(case['name'])}",
                _CASE_STATUS[case["result"]],
                case["name"] + (f"; {case['reason']}" if case.get("reason") else ""),
            )
        if selftest.get("error"):
            # the run as a whole: a hang or crash is ERROR; a binary that was never built never ran
            never = selftest.get("returncode") is None and "timed out" not in selftest["error"]
            add(base, "MISS" if never else "ERROR", selftest["error"])
    for scenario, s in (report.get("benchmarks", {}).get(name, {}).get("scenarios") or {}).items():
        path = "uffd_harness.bench." + ".".join(_segment(p) for p in scenario.split("."))
        if s["status"] == "ok" and s.get("median") is not None:
            emulated = report["benchmarks"][name]["tcg"]
            add(
                path,
                "DONE",
                "median first-touch cost" + (" under QEMU TCG (no hardware A/D assists)" if emulated else ""),
                number={"value": float(s["median"]), "unit": s.get("unit") or "cycles"},
                misc={"ci95": [s.get("ci_lo"), s.get("ci_hi")], "n": s.get("n"), "tcg": emulated},
            )
        elif s["status"].startswith("absent"):
            add(path, "SKIP", s["status"])
        else:
            add(path, "ERROR", s["status"])
    return tests


def document(report: dict, origin: Optional[str] = None) -> dict:
    """The KCIDB I/O document of a validation report (``report.json``'s dictionary)."""
    origin = check_origin(origin or origin_from_env())
    run = _run_id(report)
    base = _base(report)
    checkouts: dict[str, dict] = {}
    builds, tests = [], []
    for name, k in report["kernels"].items():
        checkout = _checkout(origin, name, k, base)
        checkouts.setdefault(checkout["id"], checkout)
        build = _build(origin, name, k, checkout["id"])
        builds.append(build)
        tests += _tests(origin, run, name, k, build["id"], report)
    return {"version": dict(SCHEMA_VERSION), "checkouts": list(checkouts.values()), "builds": builds, "tests": tests}
