#!/usr/bin/env python3
"""Regenerate the mutant series from vm/patches/ (after vm/patches/ changed).

    python vm/mutants/regen.py            # rewrite vm/mutants/young-only/
    python vm/mutants/regen.py --check    # exit 1 if it is out of date

Each mutant is vm/patches/ with a few exact text substitutions; a
substitution that does not match exactly once is an error (the patch it
edits has changed: update MUTANTS below).  The substitutions keep every
hunk's line counts.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATCHES = HERE.parent / "patches"

_NOTE = ("\nMUTANT (vm/mutants/young-only): WRITE_LIKELY makes the PTE/PMD young but\n"
         "NOT dirty, breaking contract clause 3 on purpose.  Everything else is\n"
         "identical to vm/patches/.\n")

#: mutant -> {patch file name prefix: [(old, new), ...]}, plus its series header
MUTANTS = {
    "young-only": {
        "series_header": (
            "# uffd-harness MUTANT young-only: vm/patches with WRITE_LIKELY making PTEs young but NOT dirty\n"
            "# (contract clause 3 broken on purpose).  Applied in this order with `patch -p1` by harness/vm/build.py.\n"),
        "0001-": [
            ("+\t\t\tentry = pmd_mkyoung(pmd_mkdirty(entry));\n",
             "+\t\t\tentry = pmd_mkyoung(entry);\t/* MUTANT young-only: not dirty */\n"),
            ("+\t\t\t\t\tptent = pte_mkyoung(pte_mkdirty(ptent));\n",
             "+\t\t\t\t\tptent = pte_mkyoung(ptent);\t/* MUTANT young-only: not dirty */\n"),
            ("Subject: [PATCH 1/4] mm/mprotect:",
             "Subject: [PATCH 1/4] MUTANT young-only: mm/mprotect:"),
            ("There are no users yet; the userfaultfd side follows.\n",
             "There are no users yet; the userfaultfd side follows.\n" + _NOTE),
        ],
    },
}


def render(mutant: str) -> dict[str, str]:
    """{file name: content} of the mutant series, from vm/patches/."""
    spec = MUTANTS[mutant]
    out: dict[str, str] = {}
    series = (PATCHES / "series").read_text().splitlines(keepends=True)
    body = [l for l in series if not l.startswith("#")]
    out["series"] = spec["series_header"] + "".join(body)
    for line in body:
        name = line.split("#", 1)[0].strip().split()[0] if line.strip() else ""
        if not name:
            continue
        text = (PATCHES / name).read_text()
        for prefix, subs in spec.items():
            if prefix == "series_header" or not name.startswith(prefix):
                continue
            for old, new in subs:
                if text.count(old) != 1:
                    raise SystemExit(f"{mutant}: {name}: expected exactly one {old!r}, "
                                     f"found {text.count(old)}; update vm/mutants/regen.py")
                text = text.replace(old, new)
        out[name] = text
    return out


def stale(mutant: str) -> list[str]:
    """Files of vm/mutants/<mutant>/ that differ from what render() gives."""
    want = render(mutant)
    d = HERE / mutant
    have = {p.name: p.read_text() for p in d.iterdir() if p.is_file()} if d.is_dir() else {}
    return sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    rc = 0
    for mutant in MUTANTS:
        bad = stale(mutant)
        if not bad:
            continue
        if check:
            print(f"vm/mutants/{mutant} is out of date with vm/patches: {', '.join(bad)}")
            rc = 1
            continue
        d = HERE / mutant
        d.mkdir(exist_ok=True)
        for p in d.iterdir():
            if p.is_file():
                p.unlink()
        for name, text in render(mutant).items():
            (d / name).write_text(text)
        print(f"vm/mutants/{mutant}: rewrote {', '.join(bad)}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
