"""The EgoThink taxonomy (12 dimensions) and the run configuration.

The table below lists the canonical dimension keys in the official
leaderboard column order, with the name each one has in the GitHub tree, the Hugging Face
parquet tree and the leaderboard header. Keys are canonical inside the library and mapped
only at the I/O boundaries (``Forecast`` on GitHub vs ``Forecasting`` on the Hub).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Dimension:
    """One of the 12 fine-grained EgoThink dimensions."""

    key: str  # canonical key, e.g. "existence"
    capability: str  # one of the 6 capabilities
    n_items: int  # size in the official benchmark
    github_dir: str  # leaf directory under data/ in the GitHub layout
    hf_config: str  # Hugging Face parquet config name
    column: str  # leaderboard column header

    @property
    def planning(self) -> bool:
        """Planning dimensions get the 300-token budget and the planning prompt variants."""
        return self.capability == "Planning"


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("existence", "Object", 50, "Object/existence", "Object_existence", "Exist"),
    Dimension("attribute", "Object", 50, "Object/attribute", "Object_attribute", "Attr"),
    Dimension("affordance", "Object", 50, "Object/affordance", "Object_affordance", "Afford"),
    Dimension("activity", "Activity", 100, "Activity", "Activity", "Activity"),
    Dimension("location", "Localization", 50, "Localization/location", "Localization_location", "Loc"),
    Dimension("spatial", "Localization", 50, "Localization/spatial", "Localization_spatial", "Spatial"),
    Dimension("counting", "Reasoning", 50, "Reasoning/counting", "Reasoning_counting", "Count"),
    Dimension("comparing", "Reasoning", 50, "Reasoning/comparing", "Reasoning_comparing", "Compar"),
    Dimension("situated", "Reasoning", 50, "Reasoning/situated", "Reasoning_situated", "Situated"),
    Dimension("forecasting", "Forecasting", 100, "Forecast", "Forecasting", "Forecasting"),
    Dimension("navigation", "Planning", 50, "Planning/navigation", "Planning_navigation", "Nav"),
    Dimension("assistance", "Planning", 50, "Planning/assistance", "Planning_assistance", "Assist"),
)
DIM_KEYS: tuple[str, ...] = tuple(d.key for d in DIMENSIONS)
BY_KEY: dict[str, Dimension] = {d.key: d for d in DIMENSIONS}
BY_GITHUB_DIR: dict[str, Dimension] = {d.github_dir: d for d in DIMENSIONS}
BY_HF_CONFIG: dict[str, Dimension] = {d.hf_config: d for d in DIMENSIONS}
PLANNING_DIMS: tuple[str, ...] = tuple(d.key for d in DIMENSIONS if d.planning)


def check_dims(dims: object, *, arg: str = "dims") -> tuple[str, ...]:
    """Validate a collection of dimension keys (``None`` means all 12, in leaderboard order)."""
    if dims is None:
        return DIM_KEYS
    if isinstance(dims, str):
        dims = [dims]
    dims = tuple(dims)  # type: ignore[arg-type]
    unknown = [d for d in dims if d not in BY_KEY]
    if unknown:
        raise ValueError(f"{arg}: unknown dimension(s) {unknown}; expected keys from {list(DIM_KEYS)}")
    if not dims:
        raise ValueError(f"{arg} must name at least one dimension")
    return tuple(d for d in DIM_KEYS if d in dims)


PROMPT_STYLES = ("persona", "short", "blip", "raw")
FAILED_MODES = ("drop", "zero", "minus_one")


@dataclass
class EgoThinkConfig:
    """Everything that changes an EgoThink score, with the paper's full-scale defaults.

    Parameters
    ----------
    dims : tuple of str
        Dimension keys to evaluate, in leaderboard order (default: all 12).
    prompt_style : {"persona", "short", "blip", "raw"}
        How the answering VLM is prompted (E1). ``persona`` is the paper-era LLaVA style.
    vlm_temperature : float
        Decoding temperature of the answering VLM; 0 means greedy.
    max_new_tokens, max_new_tokens_planning : int
        Answer budgets: 30 tokens, 300 for the two Planning dimensions.
    last_line_rule : bool
        Keep only the last line of non-planning answers (paper-era LLaVA post-processing).
    max_side : int, optional
        Downscale images whose longer side exceeds this before sending them (re-encoded as
        JPEG). Off by default: the official path sends the original file bytes.
    judge_model : str
        The judge's model name. ``gpt-4`` was the paper's judge; it is part of the score.
    judge_temperature, judge_max_tokens : float, int
        Judge decoding, as FastChat's ``run_judge_single`` (0 and 2048).
    parse_attempts : int
        Judge queries per item until a rating parses.
    official_retry_nesting : bool
        Reproduce the official 3 x 3 query loop (at most 9 judge calls per item).
    api_max_retry : int
        Attempts per HTTP request on 429, 5xx, timeouts and connection errors.
    api_retry_backoff : tuple of float
        ``(initial, factor, cap)`` seconds of the exponential backoff between attempts.
    sleep_after_success : float
        Seconds to sleep after each successful request (the official code sleeps 10).
    request_timeout : float
        Seconds before an HTTP request is abandoned (and retried).
    parallel : int
        Concurrent judge requests.
    strict_rating : bool
        Treat a rating outside {0, 0.5, 1} as a parse failure (``False`` is the official rule).
    failed : {"drop", "zero", "minus_one"}
        How failed judgments enter a score: dropped (official, coverage drops), counted as 0
        (FlagEvalMM) or averaged as -1 (lmms-eval).
    score_scale : float
        Multiplier of the per-dimension mean (100 on the leaderboard).
    """

    dims: tuple[str, ...] = DIM_KEYS
    prompt_style: str = "persona"
    vlm_temperature: float = 0.0
    max_new_tokens: int = 30
    max_new_tokens_planning: int = 300
    last_line_rule: bool = True
    max_side: int | None = None
    judge_model: str = "gpt-4"
    judge_temperature: float = 0.0
    judge_max_tokens: int = 2048
    parse_attempts: int = 3
    official_retry_nesting: bool = False
    api_max_retry: int = 16
    api_retry_backoff: tuple[float, float, float] = (1.0, 2.0, 60.0)
    sleep_after_success: float = 0.0
    request_timeout: float = 120.0
    parallel: int = 4
    strict_rating: bool = True
    failed: str = "drop"
    score_scale: float = 100.0

    def validate(self) -> EgoThinkConfig:
        """Check every field; return ``self`` so calls can chain."""
        self.dims = check_dims(self.dims)
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.failed not in FAILED_MODES:
            raise ValueError(f"failed must be one of {FAILED_MODES}, got {self.failed!r}")
        for name in ("max_new_tokens", "max_new_tokens_planning", "judge_max_tokens",
                     "parse_attempts", "api_max_retry", "parallel"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("vlm_temperature", "judge_temperature", "sleep_after_success"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.max_side is not None and (not isinstance(self.max_side, int) or self.max_side < 16):
            raise ValueError(f"max_side must be None or an integer >= 16, got {self.max_side!r}")
        if not self.request_timeout > 0:  # also rejects NaN
            raise ValueError(f"request_timeout must be > 0, got {self.request_timeout!r}")
        if len(self.api_retry_backoff) != 3 or min(self.api_retry_backoff) < 0:
            raise ValueError("api_retry_backoff must be (initial, factor, cap) with non-negative "
                             f"values, got {self.api_retry_backoff!r}")
        return self

    def budget(self, dim: str) -> int:
        """``max_new_tokens`` for the answering VLM on dimension ``dim`` (30, or 300 for Planning)."""
        return self.max_new_tokens_planning if BY_KEY[dim].planning else self.max_new_tokens

    @classmethod
    def cpu(cls) -> EgoThinkConfig:
        """The reproduction preset: synthetic data, the offline LocalJudge, one worker."""
        return cls(judge_model="local-judge", parallel=1, api_max_retry=3,
                   api_retry_backoff=(0.05, 2.0, 0.5))

    def replace(self, **changes) -> EgoThinkConfig:
        return replace(self, **changes).validate()
