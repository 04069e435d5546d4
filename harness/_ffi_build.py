"""Build script of the ``harness._native`` CFFI extension (API mode).

The whole binding is declared by the files in ``cbits/``: every ``*.cdef``
holds declarations (constants as ``#define NAME ...`` so the C compiler fills
them in from the real headers: no number is copied by hand here) and every
``*.c`` is compiled in.  A new room of C code only has to add its pair of
files.
"""

from pathlib import Path

from cffi import FFI

CBITS = Path(__file__).resolve().parent.parent / "cbits"

ffibuilder = FFI()
ffibuilder.cdef("\n".join(p.read_text() for p in sorted(CBITS.glob("*.cdef"))))
ffibuilder.set_source(
    "harness._native",
    '#include "harness_native.h"\n',
    sources=[str(p.relative_to(CBITS.parent)) for p in sorted(CBITS.glob("*.c"))],
    include_dirs=[str(CBITS)],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
