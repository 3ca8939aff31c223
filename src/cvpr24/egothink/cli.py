"""``cvpr24 egothink synth | infer | judge | show | agreement | serve-local-judge``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cvpr24.common.argtypes import number_in, positive_int
from cvpr24.egothink.config import DIM_KEYS, FAILED_MODES, PROMPT_STYLES


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate EgoSynth-12 in the official GitHub (or parquet) layout")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-per-dim", type=positive_int, default=25, help="items per dimension (x2 for Activity, Forecasting)")
    p.add_argument("--seed", type=int, default=0, help="test seed in [0, 10000)")
    p.add_argument("--layout", choices=("github", "parquet"), default="github")
    p.add_argument("--image-size", type=number_in(int, 16), default=64, help="image side in pixels")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("infer", help="answer every question with a VLM into a FastChat answers folder")
    p.add_argument("--data", required=True, help="EgoThink root (GitHub data/ folder or parquet tree)")
    p.add_argument("--model", required=True, help="openai:<model name> or hf:<local model folder>")
    p.add_argument("--model-id", default=None, help="id in the answer files (default: the model name)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--api-version", default=None, help="Azure OpenAI api-version")
    p.add_argument("--out", required=True, help="answers folder")
    p.add_argument("--dims", nargs="+", choices=DIM_KEYS, default=None, help="dimensions (default: all found)")
    p.add_argument("--style", choices=PROMPT_STYLES, default=None,
                   help="prompt style (default: short for openai:, persona for hf:)")
    p.add_argument("--temperature", type=number_in(float, 0, 2), default=0.0, help="answer decoding temperature (0 = greedy)")
    p.add_argument("--no-resume", action="store_true", help="answer everything again")
    p.add_argument("--no-last-line-rule", action="store_true", help="keep multi-line persona answers whole")
    p.add_argument("--max-side", type=number_in(int, 16), default=None, help="downscale images to this longer side (off)")
    p.add_argument("--device", default="cpu", help="device for hf: models")
    p.add_argument("--dtype", default="float32", help="weights dtype for hf: models")
    _prompt_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("judge", help="grade the answers with a judge (GPT-4, any OpenAI-compatible model, local)")
    p.add_argument("--answers", required=True, help="answers folder written by 'infer'")
    p.add_argument("--judge", default="gpt-4", help="judge model name, or 'local' for the offline LocalJudge")
    p.add_argument("--base-url", default=None, help="judge endpoint (default OpenAI)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--api-version", default=None, help="Azure OpenAI api-version")
    p.add_argument("--parallel", type=positive_int, default=4, help="concurrent judge requests")
    p.add_argument("--models", nargs="+", default=None, help="model ids to judge (default: all)")
    p.add_argument("--dims", nargs="+", choices=DIM_KEYS, default=None)
    p.add_argument("--overwrite", action="store_true", help="judge again what is already judged")
    p.add_argument("--no-cache", action="store_true", help="do not use the content-hash cache")
    p.add_argument("--refuse-stale", action="store_true",
                   help="fail instead of re-judging rows graded under another prompt or rating rule")
    p.add_argument("--lenient", action="store_true", help="accept any number as a rating (official parser)")
    p.add_argument("--official-retry-nesting", action="store_true", help="the official 3 x 3 query loop")
    p.add_argument("--max-retry", type=positive_int, default=16, help="HTTP attempts per request")
    _prompt_args(p)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("show", help="print the leaderboard of judged models")
    p.add_argument("--answers", required=True)
    p.add_argument("--judge", default="gpt-4", help="judge name used in 'judge' ('local' or 'local-judge' for LocalJudge)")
    p.add_argument("--format", choices=("md", "csv", "json", "html"), default="md")
    p.add_argument("--order", nargs="+", default=None, help="model row order")
    p.add_argument("--failed", choices=FAILED_MODES, default="drop", help="how failed judgments count")
    p.add_argument("--ci", action="store_true", help="add bootstrap 95%% intervals of the Average")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="paired permutation test between two models")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the permutation test")
    p.add_argument("--out", default=None, help="write the table to this file (atomically)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("agreement", help="judge-vs-human agreement (accuracy, Cohen's kappa, correlations)")
    p.add_argument("--judgments", required=True, nargs="+", help="judgment JSONL file(s) (FastChat format)")
    p.add_argument("--human", required=True, help="JSONL rows {question_id, model, score[, dim]}")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser("serve-local-judge", help="serve LocalJudge as an OpenAI-compatible endpoint on 127.0.0.1")
    p.add_argument("--port", type=number_in(int, 0, 65535, hint="0 picks a free port"), default=8765)
    p.set_defaults(func=cmd_serve)


def _prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--official-prompts", default=None,
                   help="judge_prompts.jsonl at the root of your copy of the official EgoThink repository "
                        "(its single-math-v2 line, hash-checked; FastChat's own file has no such line)")
    p.add_argument("--official-vlm-prompts", default=None,
                   help="JSON {persona, persona_planning, short} with the official VLM prompts (hash-checked)")
    p.add_argument("--allow-prompt-mismatch", action="store_true", help="warn instead of failing on a hash mismatch")


def _prompts(args):
    from cvpr24.egothink.prompts import PromptSet

    if args.official_prompts is None and args.official_vlm_prompts is None:
        return PromptSet()
    return PromptSet.from_official(args.official_prompts, args.official_vlm_prompts,
                                   allow_mismatch=args.allow_prompt_mismatch)


def _errors(fn):
    def wrapped(args: argparse.Namespace) -> int:
        from cvpr24.egothink.client import APIError

        try:
            return fn(args)
        except (ValueError, FileNotFoundError) as e:
            print(f"cvpr24 egothink {args.cmd}: error: {e}", file=sys.stderr)
            return 2
        except APIError as e:
            print(f"cvpr24 egothink {args.cmd}: API error: {e}", file=sys.stderr)
            return 1
    return wrapped


@_errors
def cmd_synth(args) -> int:
    from cvpr24.egothink.synth import generate_synthetic

    root = generate_synthetic(args.out, args.n_per_dim, args.seed, args.layout, args.image_size)
    print(f"wrote EgoSynth-12 ({args.layout} layout) to {root}")
    return 0


@_errors
def cmd_infer(args) -> int:
    from cvpr24.egothink.config import EgoThinkConfig
    from cvpr24.egothink.data import load_egothink
    from cvpr24.egothink.vlm import make_vlm, run_inference

    cfg = EgoThinkConfig(vlm_temperature=args.temperature, last_line_rule=not args.no_last_line_rule,
                         max_side=args.max_side).validate()
    ds = load_egothink(args.data, dims=args.dims)
    kind, _, name = args.model.partition(":")
    extra = ({"device": args.device, "dtype": args.dtype} if kind == "hf"
             else {"api_version": args.api_version} if args.api_version else {})
    vlm = make_vlm(args.model, args.base_url, args.api_key_env, cfg, **extra)
    style = args.style or ("short" if kind == "openai" else "persona")
    model_id = args.model_id or Path(name).name
    try:
        done = run_inference(vlm, ds, args.out, model_id, cfg, style=style, prompts=_prompts(args),
                             resume=not args.no_resume)
    finally:
        getattr(vlm, "close", lambda: None)()
    print(f"{model_id}: {done['answered']} answered, {done['skipped']} already there -> {args.out}")
    return 0


@_errors
def cmd_judge(args) -> int:
    from cvpr24.egothink.config import EgoThinkConfig
    from cvpr24.egothink.judge import make_judge, run_judgment

    cfg = EgoThinkConfig(parallel=args.parallel, strict_rating=not args.lenient, api_max_retry=args.max_retry,
                         official_retry_nesting=args.official_retry_nesting,
                         judge_model=args.judge).validate()
    judge = make_judge(args.judge, args.base_url, args.api_key_env, cfg, args.api_version)
    try:
        run = run_judgment(args.answers, judge, cfg, models=args.models, dims=args.dims,
                           prompts=_prompts(args), cache=None if args.no_cache else "auto",
                           overwrite=args.overwrite, refuse_stale=args.refuse_stale)
    except ValueError as e:
        raise ValueError(str(e).replace("refuse_stale: ", "--refuse-stale: ", 1)) from None
    finally:
        getattr(judge, "close", lambda: None)()
    requests = "" if run.requests is None else f", {run.requests} HTTP requests with retries"
    print(f"judge {run.judge}: {run.judged} judged ({run.calls} judge queries{requests}), {run.cached} from cache, "
          f"{run.skipped} already done, {run.rejudged} re-judged (graded otherwise before), "
          f"{len(run.failures)} failed, {run.wall_time_s:.1f} s")
    print(f"graded with {run.provenance}")
    for f in run.failures[:10]:
        print(f"  failed: {f['dim']} {f['model']} q{f['question_id']}: {f['judgment'][:80]!r}")
    return 0


@_errors
def cmd_show(args) -> int:
    from cvpr24.common import atomic_write
    from cvpr24.egothink.metrics import Leaderboard, bootstrap_ci, load_item_scores, paired_test

    judge = "local-judge" if args.judge == "local" else args.judge  # the name 'judge --judge local' writes
    board = Leaderboard.from_answers(args.answers, judge, order=args.order, failed=args.failed)
    text = board.render(args.format)
    if args.format in ("csv", "html"):  # md and json carry it in the table
        print(f"judge {judge}: graded with {board.provenance}", file=sys.stderr)
    if args.ci or args.compare:
        scores, _ = load_item_scores(args.answers, judge)
        extra = []
        if args.ci:
            for r in board.rows:
                lo, hi = bootstrap_ci(scores[r.model], seed=args.seed)["average"]
                extra.append(f"{r.model}: Average {r.average:.2f}, 95% CI [{lo:.2f}, {hi:.2f}] "
                             f"(coverage {r.overall_coverage:.3f})")
        if args.compare:
            a, b = args.compare
            for m in (a, b):
                if m not in scores:
                    raise ValueError(f"--compare: no judgments for model {m!r} (have {sorted(scores)})")
            t = paired_test(scores[a], scores[b], seed=args.seed)
            extra.append(f"{a} - {b}: {t['diff']:+.2f} points, p = {t['p_value']:.4f} "
                         f"(paired sign-flip test, {t['n_items']} items)")
        if args.format == "md":
            text += "\n" + "\n".join(extra) + "\n"
        else:
            print("\n".join(extra), file=sys.stderr)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


@_errors
def cmd_agreement(args) -> int:
    import json

    from cvpr24.egothink.data import read_jsonl
    from cvpr24.egothink.metrics import agreement

    def key(r):
        return (r["model"], r.get("dim", ""), r["question_id"])

    judge = {}
    for path in args.judgments:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--judgments: no such file {path}")
        dim = _dim_of(Path(path))
        for r in read_jsonl(path):
            judge[(r["model"], r.get("dim", dim), r["question_id"])] = float(r["score"])
    if not Path(args.human).is_file():
        raise FileNotFoundError(f"--human: no such file {args.human}")
    human = {}
    for r in read_jsonl(args.human):
        if any(k not in r for k in ("model", "question_id", "score")):
            raise ValueError(f"--human: rows need model, question_id and score, got {r}")
        k = key(r)
        if not k[1] and len({d for _, d, _ in judge}) == 1:
            k = (k[0], next(iter(judge))[1], k[2])
        human[k] = float(r["score"])
    print(json.dumps(agreement(judge, human, seed=args.seed), indent=2))
    return 0


def _dim_of(path: Path) -> str:
    from cvpr24.egothink.config import DIMENSIONS

    text = path.resolve().as_posix()
    for d in DIMENSIONS:
        if f"/{d.github_dir}/" in text:
            return d.key
    return ""


@_errors
def cmd_serve(args) -> int:
    from cvpr24.egothink.server import serve_local_judge

    try:
        server = serve_local_judge(args.port)
    except OSError as e:  # taken, or not allowed (ports < 1024 need privileges)
        raise ValueError(f"--port {args.port}: cannot listen on 127.0.0.1:{args.port} ({e.strerror or e}); "
                         "pick another port, or 0 for a free one") from None
    print(f"LocalJudge at {server.url}/chat/completions (127.0.0.1 only; streaming supported); Ctrl-C to stop",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
