"""``uffd-harness sim``: the simulator's verbs.

``sim profiles``                 list the kernel profiles (``--json`` for a program)
``sim scenarios``                list the named scenarios
``sim run SCENARIO [--profile P] [--hints A|W|AW] [--calibration PATH] [--json]``
                                 run a scenario; print each step, the PTE state at the end and
                                 the predicted cost of each touch
``sim bench [--seconds S]``      page operations per second on one core
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from harness.operations import Hints

#: the longest ``sim bench`` run accepted: a typo such as 1e9 should not occupy a core for ever
MAX_BENCH_SECONDS = 3600.0


def _bench_seconds(text: str) -> float:
    """A duration for ``sim bench``: a finite number of seconds, more than 0 and at most an hour."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_BENCH_SECONDS:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_BENCH_SECONDS:.0f}, not {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sim",
        help="the page-table simulator: profiles, scenarios, speed",
        description="Run the simulator of the kernel's page-table logic.",
    )
    sub = p.add_subparsers(dest="sim_command", metavar="VERB", required=True)

    q = sub.add_parser("profiles", help="list the kernel profiles")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_profiles)

    q = sub.add_parser("scenarios", help="list the named scenarios")
    q.set_defaults(func=_scenarios)

    q = sub.add_parser("run", help="run a named scenario and print the PTE state after it")
    q.add_argument("scenario", help="a name from 'sim scenarios'")
    q.add_argument("--profile", default="access-hints", help="kernel profile (default access-hints)")
    q.add_argument(
        "--hints",
        default=Hints.NONE.short,
        choices=[hints.short for hints in Hints.__members__.values()],
        help="hints for the scenario's un-protects: "
        + ", ".join(f"{hints.short}={hints.label}" for hints in (Hints.ACCESS_LIKELY, Hints.WRITE_LIKELY)),
    )
    q.add_argument(
        "--calibration",
        default=None,
        metavar="PATH",
        help="calibration JSON for the cost model (default build/results/calibration.json)",
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_run)

    q = sub.add_parser("bench", help="measure the simulator's page operations per second")
    q.add_argument(
        "--seconds",
        type=_bench_seconds,
        default=1.0,
        help=f"how long to run (default 1, at most {MAX_BENCH_SECONDS:.0f})",
    )
    q.add_argument("--profile", default="access-hints")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_bench)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _profiles(args) -> int:
    from harness.sim import profiles

    profiles.load_user_profiles()
    rows: list[dict[str, Any]] = []
    for p in profiles.PROFILES.values():
        rows.append(
            {
                "name": p.name,
                "access_hints": p.offers_access_hints,
                "broken": p.broken,
                "expected_failures": sorted(p.expected_failures),
                "description": p.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        _table(
            [
                [
                    r["name"],
                    "yes" if r["access_hints"] else "no",
                    ",".join(map(str, r["expected_failures"])) or "-",
                    r["description"],
                ]
                for r in rows
            ],
            ["profile", "hints", "breaks", "description"],
        )
    )
    return 0


def _scenarios(args) -> int:
    from harness.sim.scenarios import SCENARIOS

    print(
        _table(
            [[s.name, ",".join(kind.value for kind in s.setup.kinds), s.description] for s in SCENARIOS.values()],
            ["scenario", "memory", "description"],
        )
    )
    return 0


def _state_row(i, st) -> list:
    def yn(v):
        return "-" if v is None else ("yes" if v else "no")

    return [
        f"r{i}",
        yn(st.present),
        yn(st.writable),
        yn(st.young),
        yn(st.dirty),
        yn(st.uffd_wp),
        yn(st.soft_dirty),
        yn(st.swapped),
    ]


def _run(args) -> int:
    from harness.sim import profiles, scenarios
    from harness.sim.cost import AccessCost, CostModel

    if args.scenario not in scenarios.SCENARIOS:
        print(
            f"uffd-harness sim run: no scenario {args.scenario!r}; known: {', '.join(scenarios.SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    try:
        profiles.get(args.profile)
    except KeyError as exc:
        print(f"uffd-harness sim run: {exc.args[0]}", file=sys.stderr)
        return 2
    model = CostModel.load(args.calibration)
    result = scenarios.run(args.scenario, args.profile, Hints.parse(args.hints), model)
    if args.json:
        doc = {
            "scenario": args.scenario,
            "profile": args.profile,
            "hints": args.hints,
            "cost_model": {"source": model.source, "assumed": list(model.assumed)},
            "steps": [
                {
                    "op": list(op.words()),
                    "result": (res.cycles if isinstance(res, AccessCost) else res),
                    **({"parts": res.parts} if isinstance(res, AccessCost) else {}),
                }
                for op, res in result.steps
            ],
            "events": [str(e) for e in result.events],
            "states": [
                {
                    k: getattr(st, k)
                    for k in ("present", "writable", "young", "dirty", "uffd_wp", "soft_dirty", "swapped")
                }
                for st in result.states
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"scenario {args.scenario} on profile {args.profile}, hints {args.hints or 'none'}")
    print(f"  {result.scenario.description}\n")
    for op, res in result.steps:
        text = res.describe() if isinstance(res, AccessCost) else ("ok" if res == 0 else str(res))
        print(f"  {' '.join(map(str, op.words())):<24} {text}")
    if result.events:
        print("\nfaults delivered: " + " ".join(str(e) for e in result.events))
    print("\nPTE state at the end:")
    print(
        _table(
            [_state_row(i, st) for i, st in enumerate(result.states)],
            ["region", "present", "writable", "young", "dirty", "uffd-wp", "soft-dirty", "swapped"],
        )
    )
    print(f"\ncost model: {model.source}" + (f" (assumed: {', '.join(model.assumed)})" if model.assumed else ""))
    if not model.models_hardware_assists:
        print("note: the calibration was taken under TCG: assist costs are not real")
    return 0


def _bench(args) -> int:
    from harness.sim import bench, profiles

    profiles.get(args.profile)  # an unknown name is bad input, said before any work
    result = bench.measure(args.profile, seconds=args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"simulator ({result['profile']}): {result['page_ops']:,} page operations in {result['seconds']} s"
            f" = {result['ops_per_second']:,} ops/s on one core "
            f"(target {result['target']:,}: {'met' if result['meets_target'] else 'NOT met'})"
        )
    return 0 if result["meets_target"] else 1
