"""serve-local-judge against the official ``openai`` client, on 127.0.0.1."""

import json
import socket
import threading

import httpx
import pytest

from cvpr24.cli import main
from cvpr24.egothink.prompts import render_judge_messages
from cvpr24.egothink.server import ChatServer, serve_local_judge

openai = pytest.importorskip("openai")

MESSAGES = render_judge_messages("Where am I?", "In the kitchen.", "I am in the kitchen.")


@pytest.fixture
def server():
    with serve_local_judge(0) as srv:
        yield srv


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url, api_key="unused-locally", max_retries=0, timeout=10) as c:
        yield c


def test_plain_string_messages(client):
    r = client.chat.completions.create(model="local-judge", messages=MESSAGES, temperature=0, max_tokens=2048)
    assert r.choices[0].message.content.endswith("Rating: [[1]]")
    assert r.choices[0].finish_reason == "stop" and r.model == "local-judge"


def test_content_as_list_of_text_parts(client):
    user = MESSAGES[1]["content"]
    cut = user.index("[The Start of Reference Answer]")
    parts = [{"role": "system", "content": [{"type": "text", "text": MESSAGES[0]["content"]}]},
             {"role": "user", "content": [{"type": "text", "text": user[:cut]}, {"type": "text", "text": user[cut:]}]}]
    r = client.chat.completions.create(model="local-judge", messages=parts)
    assert r.choices[0].message.content.endswith("Rating: [[1]]")


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user"}], "messages[0].content"),  # content missing
    ([{"role": "user", "content": None}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
     "messages[0].content[0]"),
    ([], "messages"),
])
def test_bad_messages_get_an_openai_style_400(client, server, messages, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="local-judge", messages=messages)
    assert e.value.status_code == 400
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == param
    assert param in e.value.body["message"]
    ok = client.chat.completions.create(model="local-judge", messages=MESSAGES)  # still up after it
    assert ok.choices[0].message.content.endswith("[[1]]")


def test_not_a_grading_prompt_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="grading prompt"):
        client.chat.completions.create(model="local-judge", messages=[{"role": "user", "content": "hello"}])


def test_stream_true_is_served_as_server_sent_events(client):
    stream = client.chat.completions.create(model="local-judge", messages=MESSAGES, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.endswith("Rating: [[1]]") and chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    plain = client.chat.completions.create(model="local-judge", messages=MESSAGES)
    assert plain.choices[0].message.content == text


def test_malformed_bodies_and_paths(server):
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for content in (b"{not json", b"[1, 2]"):
            r = http.post("/chat/completions", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = http.post("/embeddings", json={})
        assert r.status_code == 404 and "error" in r.json()
        assert http.get("/models").json()["data"][0]["id"] == "local-judge"


def test_a_crashing_responder_answers_500_not_a_dropped_connection():
    def broken(body):
        raise KeyError("oops")

    with ChatServer(broken) as srv, openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0) as c:
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="m", messages=MESSAGES)
        assert e.value.body["type"] == "server_error"


def test_concurrent_clients(client):
    out, errors = [], []

    def ask():
        try:
            out.append(client.chat.completions.create(model="local-judge", messages=MESSAGES)
                       .choices[0].message.content)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(out) == 8 and len(set(out)) == 1


def test_cli_bad_and_busy_ports(capsys):
    with pytest.raises(SystemExit) as e:
        main(["egothink", "serve-local-judge", "--port", "70000"])
    assert e.value.code == 2 and "--port" in capsys.readouterr().err
    with pytest.raises(ValueError, match="port must be an integer"):
        serve_local_judge(70000)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["egothink", "serve-local-judge", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_judge_pipeline_through_the_openai_client_view(server):
    """The bodies our own client sends are the ones the openai client accepts too."""
    body = {"model": "local-judge", "messages": MESSAGES, "temperature": 0, "max_tokens": 2048}
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{server.url}/chat/completions", json=body)
    assert r.status_code == 200 and json.loads(r.text)["choices"][0]["message"]["content"].endswith("[[1]]")
