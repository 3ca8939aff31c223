import pytest

from cvpr24.egothink.client import APIError, AuthenticationError, ChatClient, backoff_delay
from cvpr24.egothink.config import EgoThinkConfig
from cvpr24.egothink.judge import OpenAIJudge, judge_one, parse_rating
from cvpr24.egothink.metrics import dimension_score
from cvpr24.egothink.server import ChatServer

FAST = EgoThinkConfig(api_max_retry=4, api_retry_backoff=(0.01, 2.0, 0.05))


@pytest.mark.parametrize("text, strict, expected", [
    ("The answer matches. Rating: [[0.5]]", True, 0.5),
    ("[[1]]", True, 1.0),
    ("[[0.50]]", True, 0.5),
    ("no double brackets, rating [1]", True, 1.0),  # fallback
    ("[[0]] but later [[1]]", True, 0.0),  # first match wins
    ("[[-1]]", True, None),  # negatives never match
    ("Rating: [[5]]", False, 5.0),  # official: any number
    ("Rating: [[5]]", True, None),  # strict: outside {0, 0.5, 1}
    ("I cannot rate this.", True, None),
    # accepted numerals: digits with at most one point
    ("Rating: [[1.]]", True, 1.0),
    ("Rating: [[00.5]]", True, 0.5),
    ("Rating: [[05]]", False, 5.0),  # leading zero: the official ast.literal_eval raised here
    ("Rating: [[" + "9" * 400 + "]]", False, float("9" * 400)),  # no int-string length limit
    # rejected forms: no match at all, so the reply is re-queried
    ("Rating: [[.5]]", True, None),
    ("Rating: [[1e0]]", True, None),
    ("Rating: [[+1]]", True, None),
    ("Rating: [[1_0]]", False, None),
    ("Rating: [[0.5.1]]", True, None),
    ("Rating: [[ 1 ]]", True, None),
    ("Rating: [[\u0661]]", False, None),  # Arabic-Indic one: ASCII digits only
    ("Rating: [[1/2]]", True, None),
    ("Rating: [[one]]", True, None),
    ("", True, None),
])
def test_parse_rating(text, strict, expected):
    assert parse_rating(text, strict=strict) == expected


def test_parse_rating_from_16_threads_at_once():
    """The parser is called from --parallel worker threads; it must give the serial answers
    with 16 threads released together (the official ast.literal_eval could crash here)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cases = [(f"reason {k}. Rating: [[{v}]]", s) for k, v in enumerate(["0", "0.5", "1", "1.", "7", "x"] * 50)
             for s in (True, False)]
    expected = [parse_rating(t, strict=s) for t, s in cases]
    start = threading.Barrier(16)

    def worker(offset):
        start.wait()
        return [parse_rating(t, strict=s) for t, s in cases[offset:] + cases[:offset]]

    offsets = range(0, 16 * 17, 17)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(worker, offsets))
    for offset, got in zip(offsets, results, strict=True):
        assert got == expected[offset:] + expected[:offset]
    assert {None, 0.0, 0.5, 1.0, 7.0} == set(expected)


class CountingJudge:
    name = "counting"

    def __init__(self, replies):
        self.replies, self.calls = list(replies), 0

    def complete(self, messages):
        self.calls += 1
        return self.replies.pop(0) if self.replies else "still nothing"


def test_parse_retries_then_success():
    j = CountingJudge(["garbage", "more garbage", "ok [[0.5]]"])
    out = judge_one(j, "Q", "R", "A", EgoThinkConfig())
    assert (out.score, out.calls, j.calls) == (0.5, 3, 3)


def test_parse_failure_is_minus_one_and_coverage_drops():
    j = CountingJudge([])
    out = judge_one(j, "Q", "R", "A", EgoThinkConfig(strict_rating=True))
    assert out.score == -1 and j.calls == 3 and out.error
    scores = [1.0] * 49 + [out.score]
    s, cov = dimension_score(scores, 50)
    assert cov == pytest.approx(49 / 50) and s == 100.0  # excluded, not averaged as -1
    assert dimension_score(scores, 50, failed="zero")[0] == pytest.approx(98.0)
    assert dimension_score(scores, 50, failed="minus_one")[0] == pytest.approx(96.0)


def test_lenient_value_is_logged_in_strict_mode():
    out = judge_one(CountingJudge(["[[7]]"] * 3), "Q", "R", "A", EgoThinkConfig())
    assert out.score == -1 and out.lenient_score == 7.0


def test_official_retry_nesting_bounds_calls():
    j = CountingJudge([])
    out = judge_one(j, "Q", "R", "A", EgoThinkConfig(official_retry_nesting=True))
    assert out.score == -1 and j.calls == 9


def test_http_round_trip_bodies_checked(script):
    with ChatServer(script([(200, "bad reply"), (200, "also bad"), (200, "Right. Rating: [[1]]")])) as srv:
        judge = OpenAIJudge("gpt-4", srv.url, config=FAST)
        out = judge_one(judge, "Where am I?", "In the kitchen.", "Kitchen.", FAST)
        assert out.score == 1.0 and out.calls == 3 and len(srv.requests) == 3
        body = srv.requests[0]
        assert set(body) == {"model", "messages", "temperature", "max_tokens"}
        assert body["model"] == "gpt-4" and body["temperature"] == 0 and body["max_tokens"] == 2048
        assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
        assert body["messages"][1]["role"] == "user"
        assert "[Question]\nWhere am I?\n\n" in body["messages"][1]["content"]
        assert "[The Start of Assistant's Answer]\nKitchen.\n" in body["messages"][1]["content"]
        assert srv.requests[0] == srv.requests[2]  # a re-query is the identical request


def test_5xx_and_429_are_retried_with_backoff(script):
    sleeps = []
    with ChatServer(script([(500, "boom"), (429, "slow down"), (503, "later")])) as srv:
        client = ChatClient(srv.url, max_retry=4, backoff=(0.5, 2.0, 3.0), sleep=sleeps.append)
        assert client.chat({"model": "m", "messages": []}).endswith("[[1]]")
        assert len(srv.requests) == 4 and client.n_requests == 4
    assert sleeps == [0.5, 1.0, 2.0]  # exponential, capped at 3.0
    assert backoff_delay(10, (1.0, 2.0, 60.0)) == 60.0


def test_retries_are_bounded(script):
    with ChatServer(script(default=(500, "down"))) as srv:
        client = ChatClient(srv.url, max_retry=3, backoff=(0.0, 1.0, 0.0))
        with pytest.raises(APIError, match="gave up after 3 attempts"):
            client.chat({"model": "m", "messages": []})
        assert len(srv.requests) == 3
        # through the judge: exhausted retries become the $ERROR$ sentinel, then re-queried
        out = judge_one(OpenAIJudge("gpt-4", srv.url, config=FAST), "Q", "R", "A", FAST)
        assert out.score == -1 and out.judgment == "$ERROR$"


def test_401_is_not_retried_and_names_the_key_env(script, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    with ChatServer(script(default=(401, "bad key"))) as srv:
        judge = OpenAIJudge("gpt-4", srv.url, api_key_env="MY_JUDGE_KEY", config=FAST)
        with pytest.raises(AuthenticationError, match="MY_JUDGE_KEY"):
            judge_one(judge, "Q", "R", "A", FAST)
        assert len(srv.requests) == 1


def test_timeout_is_retried(script):
    import time

    calls = []

    def slow_then_fast(body):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(3.0)
        return "ok [[0]]"

    with ChatServer(slow_then_fast) as srv:
        client = ChatClient(srv.url, max_retry=3, backoff=(0.0, 1.0, 0.0), timeout=1.0)
        assert client.chat({"messages": []}) == "ok [[0]]"
        assert len(calls) == 2


def test_missing_key_for_remote_url(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_ENV", raising=False)
    with pytest.raises(AuthenticationError, match="NO_SUCH_KEY_ENV"):
        OpenAIJudge("gpt-4", "https://api.example.com/v1", api_key_env="NO_SUCH_KEY_ENV")
    OpenAIJudge("gpt-4", "http://127.0.0.1:1/v1", api_key_env="NO_SUCH_KEY_ENV")  # loopback: fine


def test_key_sent_as_bearer_and_azure_header(monkeypatch, script):
    import httpx

    seen = []

    def capture(request):
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "[[1]]"}}]})

    monkeypatch.setenv("K", "sk-abc")
    for version, header, value in ((None, "authorization", "Bearer sk-abc"), ("2024-02-01", "api-key", "sk-abc")):
        client = ChatClient("https://example.invalid/v1", "K", api_version=version)
        client._http = httpx.Client(transport=httpx.MockTransport(capture), headers=client._http.headers)
        client.chat({"messages": []})
        assert seen[-1].headers[header] == value
        if version:
            assert seen[-1].url.params["api-version"] == version


def test_run_counts_http_requests_with_retries(synth_ds, tmp_path, script):
    """The summary's request count includes network retries, not only judge queries."""
    from cvpr24.egothink.data import EgoThinkDataset
    from cvpr24.egothink.judge import run_judgment
    from cvpr24.egothink.vlm import CallableVLM, run_inference

    ds = EgoThinkDataset([it for it in synth_ds if it.dim == "existence"])
    run_inference(CallableVLM(lambda req: "A cup.", style="raw"), ds, tmp_path, "m", show_progress=False)
    cfg = FAST.replace(parallel=1)
    with ChatServer(script([(500, "boom"), (503, "later")])) as srv:
        judge = OpenAIJudge("stub", srv.url, config=cfg)
        run = run_judgment(tmp_path, judge, cfg, cache=None, show_progress=False)
        assert run.calls == len(ds) and run.requests == len(ds) + 2 == len(srv.requests)
