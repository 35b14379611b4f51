"""Sweeps: expand ``sweep(add)`` into variants, group them, run, resume, report.

A config file defines ``get_config(arg=None)`` (a locked ConfigDict with
``content``, ``styles``, ``settings`` — the fields of :class:`nstjax.Settings` —
``batch_size``, ``grid``, ``tensorboard``) and ``sweep(add)``, which calls
``add(**overrides)`` once per variant; overrides name Settings fields or
``content``/``styles``. Variants that share the compiled program (the same static
objective, optimizer and step plan, and inputs of the same shapes) form a group and
run batched.

Workdir layout::

    sweep.json                 the resolved config and variant list (resume check)
    variants/<name>/image.png  config.json  metrics.json (written last: "done")
    summary.csv  summary.json  contact_sheet.png  loss_curves.png
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from nstjax import atomic, build
from nstjax.errors import UsageError
from nstjax.settings import Settings
from nstjax.weights.preprocessing import CAFFE

IMAGE_KEYS = ("content", "styles")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One run of a sweep."""

    index: int
    name: str
    overrides: dict
    settings: Settings
    content: str
    styles: tuple[str, ...]

    def static_key(self) -> tuple:
        """A conservative group key, without loading images or weights: the static
        program derived from the settings, plus the images and sizes. The runner groups
        by the exact :meth:`nstjax.build.Job.group_key` instead (which also merges
        variants whose different style images give targets of equal shapes)."""
        s = self.settings
        if s.method == "arbitrary":
            return ("arbitrary", self.content, s.size)
        obj, _ = build.objective_for(s, CAFFE)
        program = build.program_for(s, obj)

        return (program, s.weights, s.weights_format, self.content, s.size, s.style_scale,
                len(self.styles), self.styles)  # fmt: skip

    def record(self) -> dict:
        return {
            "name": self.name,
            "overrides": _jsonable(self.overrides),
            "content": self.content,
            "styles": list(self.styles),
            "settings": self.settings.as_dict(),
        }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def load_sweep_fn(config_path: str | Path) -> Callable | None:
    """The ``sweep`` function beside ``get_config`` in a config file (or None)."""
    path = Path(str(config_path).split(":", 1)[0])
    spec = importlib.util.spec_from_file_location(f"nstjax_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import config file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "sweep", None) if hasattr(module, "sweep") else None


def expand(config, sweep_fn: Callable | None, arg: str | None = None) -> list[Variant]:
    """Variants of a config: one per ``add(...)`` call, or the config alone."""
    calls: list[dict] = []
    if sweep_fn is not None:
        params = inspect.signature(sweep_fn).parameters
        if "arg" in params:
            sweep_fn(lambda **kw: calls.append(kw), arg=arg)
        else:
            sweep_fn(lambda **kw: calls.append(kw))
    if sweep_fn is not None and not calls:
        raise UsageError("the config's sweep(add) added no variant (delete sweep() to run the "
                         "config alone)")  # fmt: skip
    if not calls:
        calls = [{}]
    base = config.settings.to_dict()
    variants = []
    width = max(3, len(str(len(calls) - 1)))
    for i, overrides in enumerate(calls):
        fields = {k: v for k, v in overrides.items() if k not in IMAGE_KEYS}
        unknown = sorted(set(fields) - set(base))
        if unknown:
            raise UsageError(f"sweep variant {i} sets unknown fields {unknown}")
        try:
            settings = Settings.from_mapping({**base, **fields})
        except UsageError as e:
            raise UsageError(f"sweep variant {i}: {e}") from None
        content = str(overrides.get("content", config.content))
        styles = overrides.get("styles", config.styles)
        styles = (styles,) if isinstance(styles, str) else tuple(str(s) for s in styles)
        for path in (content, *styles):
            if not Path(path).is_file():
                raise UsageError(f"sweep variant {i}: image not found: {path!r}")
        variants.append(Variant(i, f"{i:0{width}d}", dict(overrides), settings, content, styles))
    return variants


def groups(variants: list[Variant], key: Callable | None = None) -> list[list[Variant]]:
    """Variants sharing one compiled program (by ``key``, default
    :meth:`Variant.static_key`), in order of first appearance."""
    key = key or Variant.static_key
    by_key: dict = {}
    for v in variants:
        by_key.setdefault(key(v), []).append(v)
    return list(by_key.values())


# Config fields that do not change any result: a resumed sweep may change them.
NOT_FINGERPRINTED = ("batch_size", "grid", "tensorboard", "distributed")


def fingerprint(config, variants: list[Variant], pins: dict | None = None) -> dict:
    """What decides the results, with its SHA-256: the config, the variants and the
    ``pins`` (the resolved weights and their SHA-256, each image's SHA-256)."""
    cfg = {k: v for k, v in config.to_dict().items() if k not in NOT_FINGERPRINTED}
    record = {"config": _jsonable(cfg), "variants": [v.record() for v in variants]}
    if pins is not None:
        record["pins"] = pins
    text = json.dumps(record, sort_keys=True, default=str)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), **record}


def prepare_workdir(
    workdir: Path, fp: dict, overwrite: bool, writer: bool = True, others: list | None = None
) -> None:
    """Creates the workdir, or checks that it holds this same sweep (resume).

    Only the ``writer`` (process 0 of a multi-host run) cleans up and writes; the others
    only check, so that no process removes a file another is writing. ``others`` are the
    live claims of other runners (:mod:`nstjax.claims`): an ``--overwrite`` under them is
    refused, and the workdir's own temporary files are then theirs, not stale.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    others = others or []
    existing = workdir / "sweep.json"
    if existing.exists() or existing.is_symlink():
        try:
            old = atomic.read_json_object(existing)
        except (OSError, ValueError) as e:
            if not overwrite:  # not "a different sweep": --overwrite deletes the results
                raise UsageError(
                    f"{str(existing)!r} cannot be read ({getattr(e, 'strerror', None) or e}): "
                    "restore it, or pass --overwrite to run the sweep again from nothing"
                ) from None
            old = {}
        if old.get("sha256") != fp["sha256"]:
            if not overwrite:
                changed = _first_difference(old, fp)
                raise UsageError(
                    f"workdir {str(workdir)!r} holds a different sweep "
                    f"({changed}); pass --overwrite to replace it or use a new "
                    "--workdir"
                )
            if others:
                o = others[0]
                raise UsageError(
                    f"workdir {str(workdir)!r} is being run by another runner (pid "
                    f"{o.get('pid')} on {o.get('host')}, variant {o['variant']}): "
                    "--overwrite refused; stop it first or use a new --workdir"
                )
            if writer:
                shutil.rmtree(workdir / "variants", ignore_errors=True)
    if writer and not others:
        for stale in workdir.glob(".*.tmp"):  # reports' temporaries left by a killed run
            stale.unlink(missing_ok=True)
    if writer and _read_sha(existing) != fp["sha256"]:
        atomic.write_json(existing, fp)


def _read_sha(path: Path) -> str | None:
    try:
        return atomic.read_json_object(path).get("sha256")
    except (OSError, ValueError):
        return None


def _first_difference(old: dict, new: dict, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if key == "sha256":
                continue
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}".strip("."))
        return "no difference found"
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path or 'config'} changed from {old!r} to {new!r}"[:200]


def variant_dir(workdir: Path, v: Variant) -> Path:
    return workdir / "variants" / v.name


def is_done(workdir: Path, v: Variant) -> bool:
    """Finished: its metrics.json parses and belongs to this variant (same settings and
    images as its config.json and as the sweep's), not merely exists."""
    d = variant_dir(workdir, v)
    try:
        m = atomic.read_json(d / "metrics.json")
        c = atomic.read_json(d / "config.json")
    except (OSError, ValueError):
        return False
    record = _jsonable(v.record())
    return (
        isinstance(m, dict)
        and m.get("status") in ("done", "failed")
        and c == record
        and m.get("settings") == record["settings"]
        and m.get("content") == v.content
        and m.get("styles") == list(v.styles)
    )


def remove_temporaries(workdir: Path, v: Variant) -> None:
    """A claimed variant's temporary files: left by the previous (dead) holder."""
    for stale in variant_dir(workdir, v).glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def mine(variants: list[Variant], process_index: int, process_count: int) -> list[Variant]:
    """This process's share of the sweep (round robin), for multi-host runs."""
    return [v for v in variants if v.index % process_count == process_index]
