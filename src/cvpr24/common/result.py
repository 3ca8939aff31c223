"""The records a reproduction returns: a ``Result`` holding ``Claim``s.

A claim carries the paper's statement, the paper's number where there is one, what we
measured (mean, std and per-seed values), the criterion as text with its reason, the
comparison actually applied with the numbers in it, and the verdict.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cvpr24.common.io import atomic_write

Status = Literal["passed", "failed", "error", "not tested"]
STATUSES: tuple[str, ...] = ("passed", "failed", "error", "not tested")

PARTIAL_NAME = "partial.json"  # Result.save_partial's file in a module's report folder

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_STATISTICS = ("mean", "all", "any", "median")


@dataclass
class Measurement:
    """A measured quantity over seeds: ``mean``, ``std`` (ddof=0) and the per-seed ``values``."""

    mean: float
    std: float
    values: list[float]
    unit: str = ""

    @classmethod
    def of(cls, values: float | Sequence[float] | np.ndarray, unit: str = "") -> Measurement:
        vals = np.atleast_1d(np.asarray(values, dtype=float)).ravel()
        if vals.size == 0:
            raise ValueError("values must hold at least one number")
        return cls(float(np.mean(vals)), float(np.std(vals)), [float(v) for v in vals], unit)

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if len(self.values) == 1:
            return f"{self.mean:.4g}{unit}"
        return f"{self.mean:.4g} ± {self.std:.2g}{unit} (n={len(self.values)})"


@dataclass
class Claim:
    """One claim of a paper, and what our reproduction found.

    Build it with :meth:`compare` (a threshold on a measured statistic), :meth:`verdict`
    (any other criterion, decided by the caller) or :meth:`not_tested`.
    """

    name: str
    statement: str
    criterion: str
    status: Status
    measured: Measurement | None = None
    paper_value: float | str | None = None
    comparison: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @classmethod
    def compare(
        cls,
        name: str,
        statement: str,
        values: float | Sequence[float] | np.ndarray,
        op: str,
        threshold: float,
        *,
        reason: str,
        statistic: str = "mean",
        paper_value: float | str | None = None,
        unit: str = "",
        notes: str = "",
    ) -> Claim:
        """Pass when ``statistic(values) op threshold``.

        ``statistic`` is ``"mean"`` or ``"median"`` (of the per-seed values), ``"all"``
        (every seed satisfies it) or ``"any"``. A NaN measurement fails. ``reason`` says
        why this threshold: it is printed in the report beside the criterion.
        """
        if op not in _OPS:
            raise ValueError(f"op must be one of {sorted(_OPS)}, got {op!r}")
        if statistic not in _STATISTICS:
            raise ValueError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
        m = Measurement.of(values, unit)
        cmp = _OPS[op]
        if statistic in ("all", "any"):
            oks = [not math.isnan(v) and cmp(v, threshold) for v in m.values]
            ok = all(oks) if statistic == "all" else any(oks)
            shown = ", ".join(f"{v:.4g}" for v in m.values)
            comparison = (
                f"{statistic} of [{shown}] {op} {threshold:.4g}: {sum(oks)}/{len(oks)} hold"
            )
        else:
            x = m.mean if statistic == "mean" else float(np.median(m.values))
            ok = not math.isnan(x) and cmp(x, threshold)
            comparison = f"{statistic} {x:.4g} {op} {threshold:.4g}"
        criterion = f"{statistic} {op} {threshold:.4g} ({reason})"
        return cls(
            name,
            statement,
            criterion,
            "passed" if ok else "failed",
            m,
            paper_value,
            comparison,
            notes,
        )

    @classmethod
    def verdict(
        cls,
        name: str,
        statement: str,
        passed: bool,
        *,
        criterion: str,
        comparison: str,
        measured: Measurement | None = None,
        paper_value: float | str | None = None,
        notes: str = "",
    ) -> Claim:
        """A claim whose criterion the caller evaluated (e.g. a conjunction of checks)."""
        return cls(
            name,
            statement,
            criterion,
            "passed" if passed else "failed",
            measured,
            paper_value,
            comparison,
            notes,
        )

    @classmethod
    def not_tested(
        cls, name: str, statement: str, *, reason: str, paper_value: float | str | None = None
    ) -> Claim:
        """A claim whose precondition failed: neither passed nor failed."""
        return cls(
            name, statement, "precondition not met", "not tested", None, paper_value, "", reason
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Claim:
        d = dict(d)
        if d.get("measured") is not None:
            d["measured"] = Measurement(**d["measured"])
        return cls(**d)


@dataclass
class Result:
    """Everything one module's reproduction produced.

    ``figures`` are file names relative to the module's report folder; ``error`` holds the
    traceback when the reproduction itself crashed or ran out of time. ``partial`` marks a
    result that holds only what was measured before the run stopped (see :meth:`save_partial`).
    """

    module: str
    claims: list[Claim] = field(default_factory=list)
    mode: str = "quick"
    seeds: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0
    figures: list[str] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)
    error: str | None = None
    partial: bool = False

    @property
    def status(self) -> Status:
        """``error`` if it crashed; else ``failed`` if any claim failed; ``passed`` if any
        passed and none failed; ``not tested`` if there is nothing to judge."""
        if self.error is not None or any(c.status == "error" for c in self.claims):
            return "error"
        if any(c.status == "failed" for c in self.claims):
            return "failed"
        if any(c.status == "passed" for c in self.claims):
            return "passed"
        return "not tested"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        d = {k: v for k, v in d.items() if k != "status"}
        d["claims"] = [Claim.from_dict(c) for c in d.get("claims", [])]
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``result.json`` atomically."""
        with atomic_write(path) as f:
            f.write(self.to_json())

    def save_partial(self, out_dir: str | os.PathLike) -> None:
        """Record what has been measured so far as ``<out_dir>/partial.json``.

        A reproduction calls this as results come in (after each seed, say). If it then runs
        out of budget or crashes, the runner reports this record, labelled partial, instead of
        an empty error; when it finishes, its returned ``Result`` replaces it.
        """
        with atomic_write(Path(out_dir) / PARTIAL_NAME) as f:
            f.write(replace(self, partial=True).to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())
