"""Command-line flags generated from config dataclasses, so the CLI cannot drift from the configs.

Each dataclass field becomes ``--field-name``; its help is the field's docstring (the string literal
written under it) and argparse shows its default. ``--set KEY=VALUE`` values are converted to the
field's declared type, with an error that names the key when the value does not fit.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """field name -> the docstring written under it in the class body (first line, or '')."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _kind(annotation: object) -> tuple[str, bool]:
    """(base type name, optional) of a field annotation written as a string (PEP 563)."""
    text = str(annotation).replace("typing.", "")
    optional = "None" in text
    for name in ("bool", "int", "float", "str", "tuple"):
        if text.startswith(name) or f"| {name}" in text or f"{name} |" in text:
            return name, optional
    return "str", optional


def convert(cls: type, key: str, raw: str):
    """The text ``raw`` as a value of field ``key`` of dataclass ``cls``; ValueError naming the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ValueError(f"--set {key}={raw}: {cls.__name__} has no field {key!r}; fields: "
                         f"{', '.join(sorted(fields))}")
    kind, optional = _kind(fields[key].type)
    if optional and raw.strip().lower() in ("none", "null"):
        return None
    try:
        if kind == "bool":
            if raw.strip().lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.strip().lower() in ("true", "1")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "tuple":
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError
            return tuple(value)
    except (ValueError, json.JSONDecodeError):
        expected = {"int": "an integer", "float": "a number", "bool": "true or false",
                    "tuple": "a JSON list, e.g. [0.9, 0.999]"}[kind]
        raise ValueError(f"--set {key}={raw}: expected {expected}"
                         f"{' or none' if optional else ''}") from None
    return raw


def add_dataclass_arguments(ap: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                            skip: tuple[str, ...] = (), defaults: dict | None = None,
                            aliases: dict[str, tuple[str, ...]] | None = None,
                            notes: dict[str, str] | None = None) -> None:
    """One ``--field-name`` flag per field of ``cls`` (except ``skip``), help from the field docs.

    ``defaults`` overrides a field's default on the command line (e.g. a value derived later);
    ``aliases`` adds extra option strings (kept for flags that existed before generation);
    ``notes`` adds a sentence to a field's help.
    """
    docs, defaults, aliases, notes = field_docs(cls), defaults or {}, aliases or {}, notes or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        kind, optional = _kind(f.type)
        opts = (flag, *aliases.get(f.name, ()))
        help_ = " ".join(x for x in (docs.get(f.name, ""), notes.get(f.name, "")) if x) or " "
        if kind == "bool" and not optional:
            ap.add_argument(*opts, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                            help=help_)
        elif kind == "tuple":
            ap.add_argument(*opts, dest=f.name, type=float, nargs=len(default), metavar="FLOAT",
                            default=default, help=help_)
        else:
            typ = {"int": int, "float": float, "bool": _bool}.get(kind, str)
            ap.add_argument(*opts, dest=f.name, type=_optional(typ) if optional else typ, default=default,
                            metavar=kind.upper() + ("|none" if optional else ""), help=help_)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows a flag's default when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        default = action.default
        hidden = default is None or default is False or default in (argparse.SUPPRESS, [])
        if (not hidden and not action.required
                and "default" not in help_.lower() and action.option_strings):
            help_ += " (default: %(default)s)"
        return help_


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def _optional(typ):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else typ(text)
    parse.__name__ = getattr(typ, "__name__", "value")
    return parse


def dataclass_values(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict:
    """The parsed values of ``cls``'s generated flags, by field name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and hasattr(args, f.name)}
