"""EgoThink: an evaluation harness for the first-person VQA benchmark (CVPR 2024).

Loaders for the official layouts, answering-VLM adapters, the reference-guided GPT-4 judge
protocol (resumable, cached, parallel), leaderboard aggregation with uncertainty, an offline
LocalJudge, and EgoSynth-12 for the CPU reproduction. See ``docs/egothink.md``.
"""

from cvpr24.egothink.client import APIError, AuthenticationError, ChatClient
from cvpr24.egothink.config import DIM_KEYS, DIMENSIONS, EgoThinkConfig
from cvpr24.egothink.data import (
    EgoThinkDataset,
    EgoThinkItem,
    export_fastchat,
    export_lmms_eval_logs,
    import_fastchat,
    load_egothink,
    write_github,
    write_parquet,
)
from cvpr24.egothink.judge import JudgmentCache, OpenAIJudge, parse_rating, run_judgment
from cvpr24.egothink.local_judge import LocalJudge
from cvpr24.egothink.metrics import (
    Leaderboard,
    agreement,
    bootstrap_ci,
    dimension_score,
    leaderboard,
    macro_average,
    paired_test,
)
from cvpr24.egothink.prompts import PromptSet, render_judge_messages
from cvpr24.egothink.synth import generate_synthetic
from cvpr24.egothink.vlm import HFVLM, CallableVLM, OpenAIChatVLM, VLMRequest, run_inference

__all__ = [
    "APIError", "AuthenticationError", "CallableVLM", "ChatClient", "DIMENSIONS", "DIM_KEYS",
    "EgoThinkConfig", "EgoThinkDataset", "EgoThinkItem", "HFVLM", "JudgmentCache", "Leaderboard",
    "LocalJudge", "OpenAIChatVLM", "OpenAIJudge", "PromptSet", "VLMRequest", "agreement",
    "bootstrap_ci", "dimension_score", "export_fastchat", "export_lmms_eval_logs", "generate_synthetic", "import_fastchat",
    "leaderboard", "load_egothink", "macro_average", "paired_test", "parse_rating", "render_judge_messages",
    "run_inference", "run_judgment", "write_github", "write_parquet",
]
