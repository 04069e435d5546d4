"""A simulator of the kernel's page-table logic for userfaultfd write-protection.

``model`` holds the page tables and the operations (each naming the Linux
6.12 function it mirrors); ``profiles`` what differs between kernels (stock,
the access-hints patch, deliberately broken examples); ``cost`` predicts
first-touch costs from a calibration file; ``scenarios`` names a few
sequences for ``uffd-harness sim run``; ``projection`` prices them with and
without hints from a host calibration (what a TCG validation reports instead
of timing verdicts); ``bench`` measures the simulator's speed.
"""

from harness.sim.model import Folio, Mm, Pte, Vma
from harness.sim.profiles import PROFILES, Profile
from harness.sim.profiles import get as get_profile

__all__ = ["Folio", "Mm", "Pte", "Vma", "PROFILES", "Profile", "get_profile"]
