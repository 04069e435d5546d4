# Type stub for the CFFI extension built by harness/_ffi_build.py (cbits/*.cdef): cffi generates no
# types, so `ffi` and `lib` are dynamic. This file only lets mypy resolve the module when it is not built.
from typing import Any

ffi: Any
lib: Any
