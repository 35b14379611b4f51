"""Command-line flags generated from the settings schema (:mod:`nstjax.settings`).

Every :class:`~nstjax.settings.Settings` field becomes ``--field-name`` with the
field's help and value type; nothing is re-typed here. Flags default to "not given",
so :func:`settings_from_args` knows which flags the user set and refuses those the
chosen method does not use.
"""

from __future__ import annotations

import argparse
import dataclasses

from nstjax import settings as schema
from nstjax.errors import UsageError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


_PARSERS = {
    "int": int,
    "float": float,
    "str": str,
    "opt_float": float,
    "opt_str": str,
    "names": _names,
    "floats": _floats,
    "ints": lambda text: tuple(int(v) for v in _floats(text)),
}


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per settings field (defaults shown from the schema)."""
    group = parser.add_argument_group("settings (defaults in brackets)")
    for f in schema.fields():
        meta = f.metadata
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        methods = "" if meta["methods"] == schema.BOTH else f" ({'/'.join(meta['methods'])})"
        kwargs = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{meta['help']}{methods} [{shown}]",
        }
        if meta["type"] in ("terms", "paths"):
            kwargs["action"] = "append"
            kwargs["metavar"] = "TERM" if meta["type"] == "terms" else "PATH"
        else:
            kwargs["type"] = _PARSERS[meta["type"]]
        if meta["choices"]:  # validated by Settings, with its own message
            kwargs["help"] += f" {{{','.join(meta['choices'])}}}"
        group.add_argument(flag_name(f), **kwargs)


def given(args: argparse.Namespace) -> dict:
    """The settings fields the user set on the command line."""
    names = {f.name for f in schema.fields()}
    return {k: v for k, v in vars(args).items() if k in names}


def settings_from_args(args: argparse.Namespace) -> schema.Settings:
    """Settings from the flags the user gave; a flag the method ignores is an error."""
    values = given(args)
    method = values.get("method", schema.Settings.method)
    by_name = {f.name: f for f in schema.fields()}
    for name in values:
        if method not in by_name[name].metadata["methods"]:
            raise UsageError(
                f"{flag_name(by_name[name])} is not used by --method {method}; remove it"
            )
    return schema.Settings(**values)
