"""Reading a JSON document the harness wrote, and checking its shape before anything uses it.

Each document family declares its shape once, next to its writer's schema
name (:mod:`harness.timing.documents`: bench and calibration;
:mod:`harness.vm.documents`: build.json; :mod:`harness.reports`: summary.json
and report.json).  A shape is built from:

- a Python type: ``str``, ``bool``, ``dict``, ``list``; ``NUMBER`` (int or
  float, not bool), ``FINITE`` (a number that is not NaN or infinite);
- ``ListOf(shape)``, ``MapOf(shape)`` (string keys), ``Maybe(shape)`` (or null);
- ``Obj(required={key: shape}, optional={key: shape})`` (other keys allowed).

A document that does not fit raises :class:`~harness.errors.DocumentError`
naming the file and the key path (``scenarios.x.samples[3]``), so a reader
never meets a ``KeyError`` or ``TypeError`` half-way through its work.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.errors import DocumentError, errno_name

#: any JSON number (bool excluded: JSON's true is not 1 here)
NUMBER = "number"
#: a number that is neither NaN nor infinite (Python's json reads both)
FINITE = "finite number"


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class MapOf:
    value: Any


@dataclass(frozen=True)
class Maybe:
    shape: Any


@dataclass(frozen=True)
class Obj:
    required: dict = field(default_factory=dict)
    optional: dict = field(default_factory=dict)


def _describe(shape) -> str:
    if isinstance(shape, str):
        return f"a {shape}"
    if isinstance(shape, type):
        return {str: "a string", bool: "true or false", dict: "an object", list: "a list"}.get(shape, shape.__name__)
    if isinstance(shape, ListOf):
        return f"a list of {_describe(shape.item).removeprefix('a ').removeprefix('an ')}s"
    if isinstance(shape, MapOf):
        return "an object"
    if isinstance(shape, Maybe):
        return f"{_describe(shape.shape)} or null"
    return "an object"


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def problem(value, shape, where: str = "") -> Optional[str]:
    """What is wrong with ``value`` as ``shape`` (with the key path), or None."""
    here = where or "the document"
    if isinstance(shape, Maybe):
        return None if value is None else problem(value, shape.shape, where)
    if shape in (NUMBER, FINITE):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and shape == FINITE and not math.isfinite(value):
            ok = False
    elif isinstance(shape, type):
        ok = isinstance(value, shape) and not (shape is not bool and isinstance(value, bool))
    elif isinstance(shape, ListOf):
        if not isinstance(value, list):
            return f"{here}: expected {_describe(shape)}, got {_kind(value)}"
        for i, item in enumerate(value):
            found = problem(item, shape.item, f"{where}[{i}]")
            if found:
                return found
        return None
    elif isinstance(shape, (MapOf, Obj)):
        if not isinstance(value, dict):
            return f"{here}: expected {_describe(shape)}, got {_kind(value)}"
        if isinstance(shape, MapOf):
            items = [(k, v, shape.value) for k, v in value.items()]
        else:
            missing = [k for k in shape.required if k not in value]
            if missing:
                return f"{here}: no {', '.join(map(repr, missing))}"
            items = [(k, value[k], s) for k, s in {**shape.optional, **shape.required}.items() if k in value]
        for key, item, item_shape in items:
            found = problem(item, item_shape, f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    else:
        raise TypeError(f"not a shape: {shape!r}")
    return None if ok else f"{here}: expected {_describe(shape)}, got {_kind(value)}"


def check(doc, shape, path: os.PathLike | str) -> None:
    """Raise :class:`DocumentError` naming ``path`` unless ``doc`` fits ``shape``."""
    found = problem(doc, shape)
    if found:
        raise DocumentError(path, found)


def read_json(path: os.PathLike | str, what: str, writer: str = "") -> Any:
    """The parsed JSON of ``path``; a DocumentError that names it and says why when it cannot be had.

    ``what`` names the document ("a bench JSON"), ``writer`` the command that
    writes a good one; both go into the message.
    """
    path = Path(path)
    hint = f" ({writer} writes one)" if writer else ""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DocumentError(path, f"is a directory, not {what}{hint}") from None
    except OSError as exc:
        raise DocumentError(path, f"cannot read {what}: {errno_name(exc.errno or 0)} ({exc.strerror}){hint}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DocumentError(path, f"not {what}: binary data, not UTF-8 text{hint}") from None
    except json.JSONDecodeError as exc:
        raise DocumentError(
            path, f"not {what}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}){hint}"
        ) from None
    except RecursionError:
        raise DocumentError(path, f"not {what}: nested too deeply{hint}") from None


def load(path: os.PathLike | str, shape, what: str, writer: str = "", schema: Optional[str] = None) -> Any:
    """:func:`read_json` then, with ``schema``, the ``"schema"`` field checked, then :func:`check`."""
    doc = read_json(path, what, writer)
    if schema is not None:
        found = doc.get("schema") if isinstance(doc, dict) else None
        if found != schema:
            got = (
                f"schema {found!r}"
                if found is not None
                else ("no 'schema' field" if isinstance(doc, dict) else f"{_kind(doc)}, not an object")
            )
            raise DocumentError(
                path, f"not {what}: {got}, expected schema {schema!r}" + (f" ({writer} writes one)" if writer else "")
            )
    check(doc, shape, path)
    return doc
