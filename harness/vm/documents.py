"""The shape of ``build/kernels/<name>/build.json`` (written by :func:`harness.vm.build.build_kernel`) and its reader.

The runner and ``vm info`` read it before booting anything: a corrupt or
key-less file means the kernel must be rebuilt, and the error says so.
"""

from __future__ import annotations

import os
from typing import Any

from harness.errors import DocumentError
from harness.schema import NUMBER, ListOf, MapOf, Maybe, Obj, check, read_json

BUILD_INFO = Obj(
    required={"key": str, "patched": bool},
    optional={
        "name": str,
        "source_version": str,
        # sources.Source.describe(): where the tree came from (the guest reads debian_version)
        "source": Obj(optional={"kind": str, "label": str, "identity": str, "debian_version": Maybe(str), "path": str}),
        "kernel_version": str,
        "patches": list,
        "patches_dir": Maybe(str),
        "config_fragment": str,
        "config_missing": ListOf(str),
        "gcc": str,
        "jobs": NUMBER,
        "kbuild_steps": NUMBER,
        "bzImage": str,
        "uapi_header": str,
        "selftests": MapOf(str),
        "total_seconds": NUMBER,
        "kernel_build_seconds": NUMBER,
        "source_unpack_seconds": NUMBER,
        "seeded_from": Maybe(str),
        "built_at": str,
    },
)


def load_build_info(path: os.PathLike | str) -> dict[str, Any]:
    """build.json, checked; :class:`~harness.errors.DocumentError` naming the file otherwise."""
    doc = read_json(path, "a kernel's build.json", "uffd-harness vm build")
    check(doc, BUILD_INFO, path)
    if len(doc["key"]) != 64 or any(c not in "0123456789abcdef" for c in doc["key"]):
        raise DocumentError(path, f"key: expected a sha256 in hex, got {doc['key'][:80]!r}")
    return doc
