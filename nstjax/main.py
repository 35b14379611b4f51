"""absl entry point for config files: ``python -m nstjax.main --config FILE[:ARG] --workdir DIR``.

``--config.settings.steps=50``-style overrides work as usual with ml_collections'
``config_flags``; ``nstjax run`` wraps the same function.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from nstjax import process
from nstjax.errors import UsageError, guarded

_FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file(
    "config", None, "Config file (with optional :ARG).", flag_values=_FLAGS, lock_config=True
)
flags.DEFINE_string("workdir", None, "Where outputs go.", flag_values=_FLAGS)
flags.DEFINE_bool(
    "overwrite", False, "Replace a different sweep already in --workdir.", flag_values=_FLAGS
)
flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=_FLAGS)


def config_path_and_arg(fl) -> tuple[str, str | None]:
    """``experiments/x.py:cpu`` -> (``experiments/x.py``, ``cpu``)."""
    raw = config_flags.get_config_filename(fl["config"])
    path, _, arg = str(raw).partition(":")
    return path, arg or None


def _parse(argv: Sequence[str]):
    """The flags of ``argv``. ml_collections finds ``--config.x=y`` overrides in
    ``sys.argv``, so it is ``argv`` while parsing: ``cli.main([...])`` from Python (a
    notebook, a test) takes its overrides as the command line does."""
    saved = sys.argv
    sys.argv = list(argv)
    try:
        return _parse_argv(argv)
    finally:
        sys.argv = saved


def _parse_argv(argv: Sequence[str]):
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(__doc__.strip() + "\n\nFlags:\n" + _FLAGS.main_module_help())
        raise SystemExit(0)
    for name in [n for n in _FLAGS if n.startswith("config.")]:  # a call before's overrides
        delattr(_FLAGS, name)
    try:
        _FLAGS.unparse_flags()
        _FLAGS(list(argv))
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        if any("Traceback" in line for line in lines):  # a config file's own error
            lines = [f"cannot load config: {lines[-1].strip()}"]
        raise UsageError(" ".join(" ".join(lines).split())) from None
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"cannot read config: {e}") from None
    except Exception as e:  # the config file's own error, or an override of no field
        raise UsageError(_config_error(argv, e)) from None
    if _FLAGS["config"].value is None:
        raise UsageError("--config is required (e.g. --config experiments/default.py)")
    if not _FLAGS.workdir:
        raise UsageError("--workdir is required")
    path, _ = config_path_and_arg(_FLAGS)
    if not Path(path).is_file():
        raise UsageError(f"config file not found: {path!r}")
    try:
        _FLAGS.config  # noqa: B018  (config_flags loads the file lazily)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path!r}") from None
    except Exception as e:  # a config file's own error, reported in one line
        raise UsageError(_config_error(argv, e)) from None
    return _FLAGS


def _config_error(argv: Sequence[str], e: Exception) -> str:
    """One line for an error raised while loading or overriding a config."""
    unknown = _unknown_field(argv, e) if isinstance(e, (AttributeError, KeyError)) else None
    if unknown:  # --config.x.y=... names no field
        return unknown
    where = ""
    tb = e.__traceback__
    while tb is not None:  # the innermost frame in the config file itself
        if not tb.tb_frame.f_code.co_filename.startswith(str(Path(__file__).parent)):
            where = f" ({Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})"
        tb = tb.tb_next
    if isinstance(e, SyntaxError):
        where = f" ({Path(e.filename or '?').name}:{e.lineno})"
        return f"cannot load config: SyntaxError: {e.msg}{where}"
    return f"cannot load config: {type(e).__name__}: {e}{where}"


def _unknown_field(argv: Sequence[str], e: Exception) -> str | None:
    """``--config.steps=3``: which override names no field, and, for a run setting given
    at the top, where it is (``--config.settings.steps``); None when no override names
    the missing key (the config file's own error)."""
    from nstjax import settings  # noqa: PLC0415

    while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError("'x'"))
        e = e.args[0]
    key = str(e.args[0]).strip("'\"") if e.args else ""
    given = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    bad = [g for g in given if g.rsplit(".", 1)[-1] == key]
    if not bad:
        return None
    message = f"unknown config field: {', '.join(bad)}"
    names = {f.name for f in settings.fields()}
    moved = [f"--config.settings.{b.rsplit('.', 1)[-1]}" for b in bad
             if b.count(".") == 1 and b.rsplit(".", 1)[-1] in names]  # fmt: skip
    if moved:
        message += f" (a run's settings are under config.settings: {', '.join(moved)})"
    return message


def run_from_flags(argv: Sequence[str]) -> int:
    """Parses ``argv`` (argv[0] is the program name) and runs the sweep."""
    from nstjax import runner, sweep  # noqa: PLC0415

    fl = _parse(argv)
    path, arg = config_path_and_arg(fl)
    summary = runner.run(
        fl.config,
        fl.workdir,
        sweep.load_sweep_fn(path),
        arg=arg,
        overwrite=fl.overwrite,
        progress=fl.progress,
    )
    others = summary["by_others"]
    print(
        f"{fl.workdir}: {summary['ran']} variants run, {summary['skipped']} already done, "
        f"{summary['failed']} failed"
        + (f", {others} run by other live runners" if others else "")
        + f"; {summary['groups']} groups, {summary['compiles']} compiles; "
        f"{summary['seconds']:.1f} s",
        file=sys.stderr,
    )
    return 0


def run_argv(argv: Sequence[str]) -> int:
    """For ``nstjax run``: the process defaults (once), then the run; errors as one line
    and an exit code (see ``nstjax.cli``), a bad ``XLA_FLAGS`` included."""
    logging.set_verbosity(logging.WARNING)

    def go() -> int:
        process.setup()
        return run_from_flags(argv)

    return guarded(go, "nstjax")


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_argv(list(sys.argv if argv is None else argv)))


if __name__ == "__main__":
    main()
