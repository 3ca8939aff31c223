"""The judge: reference-guided single-answer grading (E2, E3), resumable and cached.

For each (model, question) the judge receives two messages, the system line and the filled
grading template (E2), at temperature 0 with ``max_tokens=2048``. The rating is parsed from
``[[x]]`` with a ``[x]`` fallback (E3). A reply without a usable rating is re-queried up to
``parse_attempts`` times (3 x 3 with ``official_retry_nesting``); an item that never yields one
is a *failed judgment*: recorded with score -1 in the run's manifest, excluded from the
FastChat judgment file as the official code does, and visible as coverage < 1 in every score.

Rows are appended to ``<judge>_single.jsonl.part`` as they arrive (append-only, one flushed
line each), so a killed run loses at most the requests in flight; a re-run skips what is
done under the same provenance (prompt name, prompt hash, rating rule: recorded in every
row) and judges again what was graded otherwise; the final ``<judge>_single.jsonl`` is
written atomically, sorted by
(model, question_id), as FastChat does. A content-hash cache (``.judge_cache.jsonl``) makes a
re-run of the same (judge, prompt, question, reference, answer) free.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cvpr24.common import atomic_write
from cvpr24.common.progress import progress
from cvpr24.egothink.client import APIError, AuthenticationError, ChatClient
from cvpr24.egothink.config import EgoThinkConfig, check_dims
from cvpr24.egothink.data import (
    answer_dims,
    dim_folder,
    list_models,
    read_answers,
    read_jsonl,
    read_questions,
    write_jsonl,
)
from cvpr24.egothink.prompts import PromptSet, Provenance, render_judge_messages, sha256

# E3; ASCII digits only (the official ``\d`` also matches e.g. Arabic-Indic digits, which its
# ``ast.literal_eval`` then rejects with an exception)
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]", re.ASCII)
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]", re.ASCII)
VALID_RATINGS = (0.0, 0.5, 1.0)
ERROR_SENTINEL = "$ERROR$"  # what the official client returns when the API gives up


def parse_rating(judgment: str, strict: bool = True) -> float | None:
    """The rating in a judge reply (E3), or ``None`` when there is none.

    ``[[x]]`` is searched first, then ``[x]``; the first match wins. ``x`` is ASCII digits with
    at most one decimal point (``1``, ``0.5``, ``1.``, ``05``); negative numbers, exponents and
    other digit scripts never match. The numeral is read with ``float`` rather than the
    official ``ast.literal_eval``, which is not safe from worker threads and raised on leading
    zeros. In ``strict`` mode a value outside {0, 0.5, 1} counts as no rating (it is retried);
    with ``strict=False`` any number is accepted, as in the official code.

    Examples
    --------
    >>> parse_rating("The answer is right. Rating: [[1]]")
    1.0
    >>> parse_rating("[[5]]") is None, parse_rating("[[5]]", strict=False)
    (True, 5.0)
    """
    m = RATING.search(judgment) or RATING_FALLBACK.search(judgment)
    if m is None:
        return None
    value = float(m.group(1))  # a plain decimal reading: no ast/compiler, safe in any thread
    if strict and value not in VALID_RATINGS:
        return None
    return value


class OpenAIJudge:
    """A judge behind any OpenAI-compatible chat endpoint (GPT-4, vLLM, serve-local-judge).

    Parameters
    ----------
    model : str, optional
        Judge model name, sent in the request and written into every judgment row; default
        ``config.judge_model`` (``gpt-4``, the paper's judge).
    base_url : str
        Endpoint root, e.g. ``https://api.openai.com/v1``.
    api_key_env : str
        Environment variable with the key (not needed for loopback URLs).
    config : EgoThinkConfig, optional
        Decoding (``judge_temperature``, ``judge_max_tokens``) and retry settings.
    """

    def __init__(self, model: str | None = None, base_url: str = "https://api.openai.com/v1",
                 api_key_env: str = "OPENAI_API_KEY", config: EgoThinkConfig | None = None,
                 api_version: str | None = None, **client_kwargs):
        cfg = (config or EgoThinkConfig()).validate()
        self.model = model or cfg.judge_model
        self.config = cfg
        self.client = ChatClient(base_url, api_key_env, max_retry=cfg.api_max_retry,
                                 backoff=cfg.api_retry_backoff, timeout=cfg.request_timeout,
                                 sleep_after_success=cfg.sleep_after_success, api_version=api_version,
                                 max_connections=max(cfg.parallel, 4), **client_kwargs)

    @property
    def name(self) -> str:
        return self.model

    def request_body(self, messages: list[dict]) -> dict:
        return {"model": self.model, "messages": messages,
                "temperature": self.config.judge_temperature, "max_tokens": self.config.judge_max_tokens}

    def complete(self, messages: list[dict]) -> str:
        return self.client.chat(self.request_body(messages))

    @property
    def n_requests(self) -> int:
        """HTTP requests sent so far, network retries included."""
        return self.client.n_requests

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()


@dataclass
class JudgeOutcome:
    """One item's judgment: the kept reply, its score (-1 if it failed), and the cost."""

    score: float
    judgment: str
    user_prompt: str
    calls: int
    lenient_score: float | None = None  # what the official (non-strict) parser would have read
    error: str = ""


def judge_one(judge, question: str, reference: str, answer: str, config: EgoThinkConfig,
              prompts: PromptSet | None = None) -> JudgeOutcome:
    """Grade one answer: query until a rating parses (at most ``parse_attempts``, or 3 x that
    with ``official_retry_nesting``). Authentication errors propagate; exhausted network
    retries count as an unparsable reply (the official ``$ERROR$`` sentinel)."""
    messages = render_judge_messages(question, reference, answer, prompts)
    budget = config.parse_attempts * (3 if config.official_retry_nesting else 1)
    text, lenient, error = "", None, ""
    for call in range(1, budget + 1):
        try:
            text = judge.complete(messages)
        except AuthenticationError:
            raise
        except APIError as e:
            text, error = ERROR_SENTINEL, str(e)
        score = parse_rating(text, strict=config.strict_rating)
        if score is not None:
            return JudgeOutcome(score, text, messages[1]["content"], call)
        if lenient is None and text != ERROR_SENTINEL:
            lenient = parse_rating(text, strict=False)
    return JudgeOutcome(-1.0, text, messages[1]["content"], budget, lenient,
                        error or f"no rating in {budget} judge replies")


class JudgmentCache:
    """Append-only JSONL of successful judgments keyed by a content hash.

    The key is SHA-256 over (judge model, prompt name, prompt hash, strictness, question,
    reference, answer): anything that could change the rating changes the key.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if self.path.is_file():
            for row in read_jsonl(self.path, tolerate_truncated=True):
                self._data[row["key"]] = row

    @staticmethod
    def key(judge_model: str, prompts: PromptSet, strict: bool, question: str, reference: str,
            answer: str) -> str:
        blob = json.dumps([judge_model, prompts.judge_name, sha256(prompts.judge_template), strict,
                           question, reference, answer])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict | None:
        return self._data.get(key)

    def put(self, key: str, judgment: str, score: float) -> None:
        row = {"key": key, "judgment": judgment, "score": score}
        with self._lock:
            self._data[key] = row
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class JudgmentRun:
    """What :func:`run_judgment` did: counts, failures and the files it wrote."""

    judge: str
    provenance: str = ""
    judged: int = 0
    cached: int = 0
    skipped: int = 0
    rejudged: int = 0  # rows done under another prompt or rating rule, graded again
    calls: int = 0  # judge queries (parse retries included)
    requests: int | None = None  # HTTP requests (network retries included); None for an in-process judge
    failures: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def judgment_path(answers_root: str | os.PathLike, dim: str, judge_name: str) -> Path:
    if not judge_name or "/" in judge_name:
        raise ValueError(f"judge name must be file-name-safe, got {judge_name!r}")
    return dim_folder(answers_root, dim) / "model_judgment" / f"{judge_name}_single.jsonl"


def run_judgment(answers_root: str | os.PathLike, judge, config: EgoThinkConfig | None = None, *,
                 models: Sequence[str] | None = None, dims: Sequence[str] | None = None,
                 prompts: PromptSet | None = None, cache: JudgmentCache | str | os.PathLike | None = "auto",
                 overwrite: bool = False, refuse_stale: bool = False,
                 show_progress: bool | None = None) -> JudgmentRun:
    """Judge every model answer in an answers folder; resumable, cached and parallel.

    Parameters
    ----------
    answers_root : path
        A FastChat answers folder (written by :func:`~cvpr24.egothink.vlm.run_inference`).
    judge : object
        Has ``name`` and ``complete(messages) -> str``: :class:`OpenAIJudge` or ``LocalJudge``.
    config : EgoThinkConfig
        ``parallel``, ``parse_attempts``, ``strict_rating``, ``official_retry_nesting``.
    models, dims : optional
        Restrict to these model ids / dimensions (default: all found, within ``config.dims``).
    cache : JudgmentCache, path, "auto" or None
        ``"auto"`` is ``<answers_root>/.judge_cache.jsonl``; ``None`` disables caching.
    overwrite : bool
        Judge everything again (the cache still answers unchanged items).
    refuse_stale : bool
        Raise instead of re-judging rows that were graded under another prompt (name or hash)
        or rating rule than this run's. By default such rows are judged again, so that one
        judgment file never mixes provenances.

    Returns
    -------
    JudgmentRun
    """
    cfg = (config or EgoThinkConfig()).validate()
    prompts = prompts or PromptSet()
    root = Path(answers_root)
    dims = check_dims(dims) if dims is not None else tuple(d for d in answer_dims(root) if d in cfg.dims)
    if not dims:
        raise ValueError(f"answers_root: {root} has no <dimension>/question.jsonl; run 'infer' first")
    if cache == "auto":
        cache = JudgmentCache(root / ".judge_cache.jsonl")
    elif cache is not None and not isinstance(cache, JudgmentCache):
        cache = JudgmentCache(cache)
    prov = Provenance.of_run(prompts, cfg.strict_rating)
    run = JudgmentRun(judge.name, prov.describe())
    start = time.perf_counter()
    requests_before = getattr(judge, "n_requests", None)

    # 1. what is left to judge (resume: valid rows of this provenance in the final and the
    #    part file are done; rows graded under another prompt or rule are judged again)
    state = {d: _rows_by_key(judgment_path(root, d, judge.name)) for d in dims}
    tasks, stale = [], {}
    for d in dims:
        qs = read_questions(root, d)
        for m in (models or list_models(root, [d])):
            answers = read_answers(root, d, m)
            for q in qs:
                if q.question_id not in answers:
                    continue
                done = state[d].get((m, q.question_id))
                graded_by = None if done is None else Provenance.of_row(done)
                if graded_by is not None and graded_by != prov:
                    stale[graded_by] = stale.get(graded_by, 0) + 1
                    run.rejudged += 1
                elif not overwrite and done is not None and done["score"] != -1:
                    run.skipped += 1
                    continue
                tasks.append((d, m, q, answers[q.question_id]))
    if stale and refuse_stale:
        found = "; ".join(f"{n} under {p.describe()}" for p, n in stale.items())
        raise ValueError(f"refuse_stale: {sum(stale.values())} judged row(s) were graded otherwise ({found}); "
                         f"this run uses {prov.describe()}. Judge again without refusing, or use the "
                         "prompts and rating rule that graded them")
    np.random.default_rng(0).shuffle(tasks)  # as the official --parallel path (seeded shuffle)

    locks = {d: threading.Lock() for d in dims}

    # 2. judge (cache first), appending each row to the part file as it arrives
    def work(task):
        d, m, q, a = task
        key = None
        if cache is not None:
            key = JudgmentCache.key(judge.name, prompts, cfg.strict_rating, q.question, q.reference, a)
            hit = cache.get(key)
            if hit is not None:
                user = render_judge_messages(q.question, q.reference, a, prompts)[1]["content"]
                return task, JudgeOutcome(hit["score"], hit["judgment"], user, 0), True
        out = judge_one(judge, q.question, q.reference, a, cfg, prompts)
        if cache is not None and out.score != -1:
            cache.put(key, out.judgment, out.score)
        return task, out, False

    def record(task, out, hit):
        d, m, q, _ = task
        row = {"question_id": q.question_id, "model": m, "judge": [judge.name, prompts.judge_name],
               "user_prompt": out.user_prompt, "judgment": out.judgment, "score": out.score,
               "turn": 1, "tstamp": time.time(), **prov.row_fields()}
        with locks[d]:
            state[d][(m, q.question_id)] = row
            path = _part(judgment_path(root, d, judge.name))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        run.calls += out.calls
        if hit:
            run.cached += 1
        else:
            run.judged += 1

    bar = progress(total=len(tasks), desc=f"judge ({judge.name})",
                   disable=None if show_progress is None else not show_progress)
    try:
        if cfg.parallel == 1:
            for t in tasks:
                record(*work(t))
                bar.update()
        else:
            with ThreadPoolExecutor(cfg.parallel) as pool:
                futures = [pool.submit(work, t) for t in tasks]
                try:
                    for fut in as_completed(futures):
                        record(*fut.result())
                        bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()

    # 3. atomic finalisation: sorted by (model, question_id), failures out, part file removed
    for d in dims:
        rows = list(state[d].values())
        good = sorted((r for r in rows if r["score"] != -1), key=lambda r: (r["model"], r["question_id"]))
        run.failures += [{"dim": d, "model": r["model"], "question_id": r["question_id"],
                          "judgment": r["judgment"]} for r in rows if r["score"] == -1]
        final = judgment_path(root, d, judge.name)
        if good or final.exists():
            write_jsonl(final, good)
            run.files.append(str(final))
        _part(final).unlink(missing_ok=True)
    run.wall_time_s = time.perf_counter() - start
    if requests_before is not None:
        run.requests = judge.n_requests - requests_before
    manifest = {**run.to_dict(), "config": asdict(cfg),
                "prompts": prompts.manifest(), "dims": list(dims)}
    with atomic_write(root / f"judge_manifest_{judge.name}.json") as f:
        json.dump(manifest, f, indent=2, default=list)
    return run


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _rows_by_key(final: Path) -> dict:
    """Rows of a judgment file and its part file by (model, question_id); part rows win."""
    rows: dict = {}
    part = _part(final)
    for p in (final, part):
        if p.is_file():
            for r in read_jsonl(p, tolerate_truncated=(p == part)):
                rows[(r["model"], r["question_id"])] = r
    return rows


def make_judge(spec: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
               config: EgoThinkConfig | None = None, api_version: str | None = None):
    """``"local"`` gives a :class:`~cvpr24.egothink.local_judge.LocalJudge`; any other name an
    :class:`OpenAIJudge` for that model at ``base_url`` (default OpenAI)."""
    if spec == "local":
        from cvpr24.egothink.local_judge import LocalJudge
        return LocalJudge()
    return OpenAIJudge(spec, base_url or "https://api.openai.com/v1", api_key_env, config, api_version)


__all__ = ["ChatClient", "JudgeOutcome", "JudgmentCache", "JudgmentRun", "OpenAIJudge", "judge_one",
           "judgment_path", "make_judge", "parse_rating", "run_judgment"]
