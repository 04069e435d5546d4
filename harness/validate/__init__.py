"""``uffd-harness validate``: from a patch series to a verdict, in one command.

The rooms:

========================  ===============================================================
``run``                   the host: build each kernel, boot its guest, collect (and ``suite``)
``guest``                 inside a guest: the suite, the selftests, the benchmarks
``outcome``               what one kernel's run produced
``verdict``               the verdict and ``report.json``'s document
``benchmarks``            each kernel's benchmarks, stock against candidate (no verdict under TCG)
``report``                the document rendered: Markdown, terminal, KTAP, JUnit
``kcidb``                 the document in KernelCI's KCIDB schema (report.kcidb.json)
``cli``                   the verbs
========================  ===============================================================
"""

from harness.validate.cli import register

__all__ = ["register"]
