"""Metric writers: one interface for single runs and sweeps (CLU's ``MetricWriter`` idea).

The engine calls :meth:`MetricWriter.write_steps` after every chunk with that chunk's
per-step records, so files are written live as the run goes, not replayed at the end;
:meth:`MetricWriter.write_summary` gets the final metrics dict. Files are rewritten
atomically (temporary file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nstjax import atomic
from nstjax.errors import UsageError


class MetricWriter:
    """Base class: every method is optional to override."""

    def write_steps(self, first_step: int, keys: Sequence[str], records_KxN: np.ndarray) -> None:
        """Records of steps ``first_step .. first_step + N - 1`` (rows follow ``keys``)."""

    def write_summary(self, metrics: dict) -> None:
        """The run's final metrics."""

    def close(self) -> None:
        pass


class MultiWriter(MetricWriter):
    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = [w for w in writers if w is not None]

    def write_steps(self, first_step, keys, records_KxN):
        for w in self.writers:
            w.write_steps(first_step, keys, records_KxN)

    def write_summary(self, metrics):
        for w in self.writers:
            w.write_summary(metrics)

    def close(self):
        for w in self.writers:
            w.close()


class _History(MetricWriter):
    def __init__(self):
        self.keys: tuple[str, ...] = ()
        self.rows: list[list[float]] = []

    def write_steps(self, first_step, keys, records_KxN):
        self.keys = tuple(keys)
        del self.rows[first_step:]
        self.rows.extend(np.asarray(records_KxN, np.float64).T.tolist())


class JsonWriter(_History):
    """The metrics JSON: ``{"status": "running", "steps": n, <key>: [...]}`` after every
    chunk, then the full metrics (``status`` ``done``) at the end."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def write_steps(self, first_step, keys, records_KxN):
        super().write_steps(first_step, keys, records_KxN)
        columns = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(self.keys)
        partial = {"status": "running", "steps": len(self.rows)}
        partial.update({k: list(c) for k, c in zip(self.keys, columns, strict=True)})
        atomic.write_json(self.path, partial)

    def write_summary(self, metrics):
        atomic.write_json(self.path, metrics)


class CsvWriter(_History):
    """Per-step records as CSV (``step`` then one column per record key)."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    def write_steps(self, first_step, keys, records_KxN):
        super().write_steps(first_step, keys, records_KxN)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", *self.keys])
        for i, row in enumerate(self.rows):
            w.writerow([i, *(f"{v:.9g}" for v in row)])
        atomic.write_bytes(self.path, buf.getvalue().encode())


def require_tensorboard():
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    except ImportError:
        raise UsageError(
            "TensorBoard output needs tensorboardX: pip install 'nstjax[tensorboard]'"
        ) from None
    return SummaryWriter


class TensorBoardWriter(MetricWriter):
    """TensorBoard scalars, one per record key, written as chunks finish."""

    def __init__(self, logdir: str | Path):
        self._w = require_tensorboard()(str(logdir))

    def write_steps(self, first_step, keys, records_KxN):
        for i, key in enumerate(keys):
            for j, value in enumerate(np.asarray(records_KxN)[i]):
                self._w.add_scalar(key, float(value), first_step + j)
        self._w.flush()

    def close(self):
        self._w.close()


class ProgressWriter(MetricWriter):
    """A tqdm progress bar with the latest losses; ``runs`` jobs advance it together."""

    def __init__(self, total: int, desc: str | None = None, runs: int = 1):
        from tqdm.auto import tqdm  # noqa: PLC0415

        self.runs = runs
        self._bar = tqdm(
            total=total, unit="step", desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr
        )

    def write_steps(self, first_step, keys, records_KxN):
        records_KxN = np.asarray(records_KxN)
        self._bar.update(records_KxN.shape[1] * self.runs)
        short = {"loss": "loss", "content_loss": "content", "style_loss": "style", "tv_loss": "tv"}
        self._bar.set_postfix(
            {short[k]: f"{records_KxN[i, -1]:.3g}" for i, k in enumerate(keys) if k in short}
        )

    def close(self):
        self._bar.close()
