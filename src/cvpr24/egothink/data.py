"""EgoThink data: the two official layouts and the FastChat answer-folder layout.

- GitHub layout: ``<root>/<Capability>/<dim>/annotations.json`` (a JSON list of
  ``{source_dataset, image_path: [name], question, answer}``) and ``images/<k>.jpg``.
- Hugging Face parquet layout: ``<root>/<Config>/test-*.parquet`` with columns
  ``image`` (struct ``{bytes, path}``), ``question``, ``answer`` and optionally ``id``;
  read with ``pyarrow`` (``datasets`` is not needed).
- FastChat answer folders, one per dimension under its GitHub directory name:
  ``question.jsonl``, ``reference_answer/ground_truth.jsonl``, ``model_answer/<model>.jsonl``,
  ``model_judgment/<judge>_single.jsonl``. Import and export are lossless (line order, key
  order and unknown fields are kept), so official answers and judgments re-aggregate exactly.

Images stay lazy: an item holds a path (or the parquet bytes) and the original file bytes
are what API adapters send, never a decoded copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cvpr24.common import atomic_path, atomic_write, optional_import
from cvpr24.egothink.config import BY_GITHUB_DIR, BY_HF_CONFIG, BY_KEY, DIM_KEYS, check_dims

ANNOTATION_KEYS = ("image_path", "question", "answer")


@dataclass
class EgoThinkItem:
    """One question: ``uid = "<dim>/<index>"`` with a 0-based ``index`` in file order.

    ``question_id`` (1-based, ``index + 1``) is the id used in FastChat folders; it equals the
    ``k`` of ``images/<k>.jpg`` in the official tree.
    """

    dim: str
    index: int
    question: str
    answer: str
    image_path: Path | None = None
    image_data: bytes | None = field(default=None, repr=False)
    source: str = "ego4d"
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def uid(self) -> str:
        return f"{self.dim}/{self.index}"

    @property
    def question_id(self) -> int:
        return self.index + 1

    def image_bytes(self) -> bytes:
        """The original encoded image file bytes (read lazily)."""
        if self.image_data is not None:
            return self.image_data
        if self.image_path is None:
            raise ValueError(f"item {self.uid} has no image")
        return self.image_path.read_bytes()

    def image(self):
        """The image decoded as an RGB ``PIL.Image`` (on demand only)."""
        pil = optional_import("PIL.Image", "egothink")
        return pil.open(io.BytesIO(self.image_bytes())).convert("RGB")


@dataclass
class EgoThinkDataset:
    """Items of one or more dimensions, in leaderboard then file order."""

    items: list[EgoThinkItem]
    root: Path | None = None
    layout: str = "memory"

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[EgoThinkItem]:
        return iter(self.items)

    def __getitem__(self, i: int) -> EgoThinkItem:
        return self.items[i]

    @property
    def dims(self) -> tuple[str, ...]:
        present = {it.dim for it in self.items}
        return tuple(d for d in DIM_KEYS if d in present)

    def by_dim(self, dim: str) -> list[EgoThinkItem]:
        return [it for it in self.items if it.dim == dim]

    def counts(self) -> dict[str, int]:
        return {d: len(self.by_dim(d)) for d in self.dims}

    def fingerprint(self) -> str:
        """SHA-256 over dims, questions, answers and image bytes: equal for equal content."""
        h = hashlib.sha256()
        for it in self.items:
            for part in (it.dim, it.question, it.answer):
                h.update(part.encode() + b"\0")
            h.update(hashlib.sha256(it.image_bytes()).digest())
        return h.hexdigest()


# ----------------------------------------------------------------------------- loading

def load_egothink(root: str | os.PathLike, layout: str = "auto",
                  dims: Sequence[str] | None = None) -> EgoThinkDataset:
    """Load EgoThink (or EgoSynth-12) from the GitHub or the parquet layout.

    Parameters
    ----------
    root : path
        The ``data/`` folder of the GitHub repository (or the repository root), or the root
        of the parquet tree (one folder per config).
    layout : {"auto", "github", "parquet"}
        Which layout to read; ``auto`` detects it.
    dims : sequence of str, optional
        Dimension keys to load; default every dimension present.

    Returns
    -------
    EgoThinkDataset

    Examples
    --------
    >>> ds = load_egothink("EgoThink/data")        # doctest: +SKIP
    >>> ds.counts()["activity"]                     # doctest: +SKIP
    100
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: no such directory {root}")
    if layout not in ("auto", "github", "parquet"):
        raise ValueError(f"layout must be 'auto', 'github' or 'parquet', got {layout!r}")
    if dims is not None:
        dims = check_dims(dims)
    if layout == "auto":
        if (root / "data").is_dir() and _github_dims(root / "data"):
            root = root / "data"
        if _github_dims(root):
            layout = "github"
        elif _parquet_dims(root):
            layout = "parquet"
        else:
            raise ValueError(
                f"root: {root} holds neither layout. Expected the GitHub layout "
                "(<root>/Object/existence/annotations.json + images/, ..., <root>/Forecast/...) "
                "or the parquet layout (<root>/Object_existence/test-00000-of-00001.parquet, ...)")
    found = _github_dims(root) if layout == "github" else _parquet_dims(root)
    want = dims if dims is not None else tuple(d for d in DIM_KEYS if d in found)
    missing = [d for d in want if d not in found]
    if missing or not want:
        kind = "annotations.json" if layout == "github" else "test-*.parquet"
        raise FileNotFoundError(f"root: {root} has no {kind} for dimension(s) {missing or list(DIM_KEYS)} "
                                f"({layout} layout)")
    items: list[EgoThinkItem] = []
    for d in want:
        items += _load_github_dim(found[d], d) if layout == "github" else _load_parquet_dim(found[d], d)
    return EgoThinkDataset(items, root, layout)


def _github_dims(root: Path) -> dict[str, Path]:
    return {dim.key: root / d for d, dim in BY_GITHUB_DIR.items() if (root / d / "annotations.json").is_file()}


def _parquet_dims(root: Path) -> dict[str, Path]:
    return {dim.key: root / c for c, dim in BY_HF_CONFIG.items() if sorted((root / c).glob("test-*.parquet"))}


def _text(value, where: str) -> str:
    """A question or reference answer as text: a non-empty string (or a plain number, as
    "3"); ``null`` and other types are errors instead of becoming the string "None"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string, got {value!r:.80}")
    return value


def _load_github_dim(folder: Path, dim: str) -> list[EgoThinkItem]:
    path = folder / "annotations.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"annotations: {path} is not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise ValueError(f"annotations: {path} must hold a JSON list, got {type(rows).__name__}")
    items = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(k not in row for k in ANNOTATION_KEYS):
            raise ValueError(f"annotations: {path} entry {i} must be an object with keys "
                             f"{list(ANNOTATION_KEYS)}, got {row!r:.200}")
        paths = row["image_path"]
        if not isinstance(paths, list) or len(paths) != 1:
            raise ValueError(f"annotations: {path} entry {i}: image_path must be a list of exactly "
                             f"one file name, got {paths!r}")
        image = folder / "images" / Path(str(paths[0])).name  # resolved by basename, as eval.py
        if not image.is_file():
            raise FileNotFoundError(f"image of {dim}/{i} not found: {image.resolve()}")
        meta = {k: v for k, v in row.items() if k not in (*ANNOTATION_KEYS, "source_dataset")}
        items.append(EgoThinkItem(dim, i, _text(row["question"], f"annotations: {path} entry {i}: question"),
                                  _text(row["answer"], f"annotations: {path} entry {i}: answer"),
                                  image_path=image, source=str(row.get("source_dataset", "")), meta=meta))
    return items


def _load_parquet_dim(folder: Path, dim: str) -> list[EgoThinkItem]:
    pq = optional_import("pyarrow.parquet", "egothink")
    items: list[EgoThinkItem] = []
    for path in sorted(folder.glob("test-*.parquet")):
        table = pq.read_table(path)
        for col in ("image", "question", "answer"):
            if col not in table.column_names:
                raise ValueError(f"parquet: {path} has no column {col!r} (columns: {table.column_names})")
        for row in table.to_pylist():
            img = row["image"]
            if not isinstance(img, dict) or not img.get("bytes"):
                raise ValueError(f"parquet: {path} row {len(items)}: image must be a struct with bytes")
            meta = {"id": row["id"]} if row.get("id") is not None else {}
            where = f"parquet: {path} row {len(items)}"
            items.append(EgoThinkItem(dim, len(items), _text(row["question"], f"{where}: question"),
                                      _text(row["answer"], f"{where}: answer"),
                                      image_data=bytes(img["bytes"]), meta=meta))
    return items


# ----------------------------------------------------------------------------- writing

def write_github(ds: EgoThinkDataset, root: str | os.PathLike) -> Path:
    """Write ``ds`` in the official GitHub layout (images keep their original bytes)."""
    root = Path(root)
    for d in ds.dims:
        folder = root / BY_KEY[d].github_dir
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for it in ds.by_dim(d):
            name = f"{it.question_id}.jpg"
            with atomic_write(folder / "images" / name, "wb") as f:
                f.write(it.image_bytes())
            rows.append({"source_dataset": it.source, "image_path": [name], "question": it.question,
                         "answer": it.answer, **it.meta})
        with atomic_write(folder / "annotations.json") as f:
            json.dump(rows, f, indent=2, ensure_ascii=False)
    return root


def write_parquet(ds: EgoThinkDataset, root: str | os.PathLike) -> Path:
    """Write ``ds`` in the Hugging Face parquet layout (HF ``Image`` struct column)."""
    pa = optional_import("pyarrow", "egothink")
    pq = optional_import("pyarrow.parquet", "egothink")
    root = Path(root)
    for d in ds.dims:
        its = ds.by_dim(d)
        table = pa.table({
            "id": [str(it.index) for it in its],
            "image": [{"bytes": it.image_bytes(), "path": f"{it.question_id}.jpg"} for it in its],
            "question": [it.question for it in its],
            "answer": [it.answer for it in its],
        })
        path = root / BY_KEY[d].hf_config / "test-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    return root


# ----------------------------------------------------------------------------- FastChat folders

def read_jsonl(path: str | os.PathLike, *, tolerate_truncated: bool = False) -> list[dict]:
    """Rows of a JSONL file in file order. ``tolerate_truncated`` skips a cut-off last line
    (what a killed writer leaves behind)."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if tolerate_truncated and n >= len(lines) - 2:
                break
            raise ValueError(f"{path}: line {n + 1} is not valid JSON") from None
    return rows


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Write rows atomically, one ``json.dumps`` per line (FastChat's own format)."""
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def dim_folder(answers_root: str | os.PathLike, dim: str) -> Path:
    return Path(answers_root) / BY_KEY[dim].github_dir


def write_questions(ds: EgoThinkDataset, answers_root: str | os.PathLike) -> None:
    """``question.jsonl`` and ``reference_answer/ground_truth.jsonl`` for each dimension."""
    for d in ds.dims:
        folder = dim_folder(answers_root, d)
        its = ds.by_dim(d)
        write_jsonl(folder / "question.jsonl",
                    [{"question_id": it.question_id, "turns": [it.question]} for it in its])
        write_jsonl(folder / "reference_answer" / "ground_truth.jsonl",
                    [{"question_id": it.question_id, "model_id": "ground_truth",
                      "choices": [{"index": 0, "turns": [it.answer]}]} for it in its])


def answer_dims(answers_root: str | os.PathLike) -> tuple[str, ...]:
    """Dimensions with a ``question.jsonl`` under ``answers_root``."""
    root = Path(answers_root)
    return tuple(d for d in DIM_KEYS if (dim_folder(root, d) / "question.jsonl").is_file())


@dataclass
class QAEntry:
    """A (question, reference) pair as stored in an answers folder."""

    dim: str
    question_id: int
    question: str
    reference: str


def read_questions(answers_root: str | os.PathLike, dim: str) -> list[QAEntry]:
    """Questions with their references for one dimension of an answers folder."""
    folder = dim_folder(answers_root, dim)
    qpath, rpath = folder / "question.jsonl", folder / "reference_answer" / "ground_truth.jsonl"
    for p in (qpath, rpath):
        if not p.is_file():
            raise FileNotFoundError(f"answers folder: missing {p}")
    refs = {r["question_id"]: r["choices"][0]["turns"][0] for r in read_jsonl(rpath)}
    out = []
    for q in read_jsonl(qpath):
        if q["question_id"] not in refs:
            raise ValueError(f"answers folder: {rpath} has no reference for question_id {q['question_id']}")
        out.append(QAEntry(dim, q["question_id"], q["turns"][0], refs[q["question_id"]]))
    return out


def model_answer_path(answers_root: str | os.PathLike, dim: str, model: str) -> Path:
    if not model or "/" in model or model.startswith("."):
        raise ValueError(f"model id must be a plain file-name-safe string, got {model!r}")
    return dim_folder(answers_root, dim) / "model_answer" / f"{model}.jsonl"


def list_models(answers_root: str | os.PathLike, dims: Sequence[str] | None = None) -> list[str]:
    """Model ids with a finished answer file in any of ``dims``."""
    names: set[str] = set()
    for d in dims or answer_dims(answers_root):
        folder = dim_folder(answers_root, d) / "model_answer"
        if folder.is_dir():
            names |= {p.stem for p in folder.glob("*.jsonl")}
    return sorted(names)


def read_answers(answers_root: str | os.PathLike, dim: str, model: str) -> dict[int, str]:
    """``{question_id: answer}`` of one model, checked against the dimension's question ids.

    Raises ``ValueError`` with a diff summary when answer ids are not question ids (the
    official ``eval.py`` counts from 0 and ``gpt_eval.py`` from 1).
    """
    path = model_answer_path(answers_root, dim, model)
    if not path.is_file():
        raise FileNotFoundError(f"answers: no answer file {path}")
    answers = {r["question_id"]: r["choices"][0]["turns"][0] for r in read_jsonl(path)}
    qids = {q.question_id for q in read_questions(answers_root, dim)}
    extra, missing = sorted(set(answers) - qids), sorted(qids - set(answers))
    if extra:
        raise ValueError(
            f"answers: {path}: {len(extra)} answer id(s) are not question ids (first {extra[:5]}); "
            f"{len(missing)} question id(s) have no answer (first {missing[:5]}). Question ids run "
            f"{min(qids)}..{max(qids)}, answer ids {min(answers)}..{max(answers)}: a 0- vs 1-based "
            "id clash between eval.py and gpt_eval.py looks like this.")
    return answers


@dataclass
class FastChatBundle:
    """Every JSONL file of an answers folder, as rows, keyed by path relative to the root."""

    files: dict[str, list[dict]]

    def dims(self) -> tuple[str, ...]:
        return tuple(d for d in DIM_KEYS if f"{BY_KEY[d].github_dir}/question.jsonl" in self.files)


def import_fastchat(answers_root: str | os.PathLike) -> FastChatBundle:
    """Read every FastChat JSONL file of an answers folder (questions, references, answers,
    judgments), keeping line order, key order and unknown fields."""
    root = Path(answers_root)
    if not root.is_dir():
        raise FileNotFoundError(f"answers_root: no such directory {root}")
    files: dict[str, list[dict]] = {}
    for d in DIM_KEYS:
        folder = dim_folder(root, d)
        if not (folder / "question.jsonl").is_file():
            continue
        for p in sorted(folder.rglob("*.jsonl")):
            rel = p.relative_to(folder).as_posix()
            if rel == "question.jsonl" or rel.split("/")[0] in (
                    "reference_answer", "model_answer", "model_judgment"):
                files[p.relative_to(root).as_posix()] = read_jsonl(p)
    if not files:
        raise ValueError(f"answers_root: {root} has no <dimension>/question.jsonl "
                         "(FastChat layout, one folder per dimension as in the GitHub tree)")
    return FastChatBundle(files)


def export_fastchat(bundle: FastChatBundle, out_root: str | os.PathLike) -> Path:
    """Write a bundle back as an answers folder; byte-identical to files written by FastChat."""
    out = Path(out_root)
    for rel, rows in bundle.files.items():
        write_jsonl(out / rel, rows)
    return out


def export_lmms_eval_logs(answers_root: str | os.PathLike, judge_name: str, model: str,
                          out: str | os.PathLike) -> Path:
    """Per-sample logs in the lmms-eval style (``doc_id``, ``target``, ``resps``,
    ``gpt_eval_score``), one JSONL row per judged item, so runs can be compared with lmms-eval.

    ``doc_id`` is the 0-based index within the dimension; failed or missing judgments are
    written with ``gpt_eval_score = None`` (lmms-eval itself would average them as -1).
    """
    root = Path(answers_root)
    rows = []
    for d in answer_dims(root):
        folder = dim_folder(root, d)
        jpath = folder / "model_judgment" / f"{judge_name}_single.jsonl"
        scores = {}
        if jpath.is_file():
            scores = {r["question_id"]: r["score"] for r in read_jsonl(jpath) if r["model"] == model}
        answers = read_answers(root, d, model)
        for q in read_questions(root, d):
            if q.question_id in answers:
                rows.append({"doc_id": q.question_id - 1, "dimension": d, "question": q.question,
                             "target": q.reference, "resps": [[answers[q.question_id]]],
                             "gpt_eval_score": scores.get(q.question_id)})
    write_jsonl(out, rows)
    return Path(out)
