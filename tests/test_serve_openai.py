"""serve_lm under the official ``openai`` client: every field honoured or refused in
OpenAI's error shape, chat through a template, Prometheus metrics.

One real server process (the tiny GPT, fp32, random weights) for the module; the
overload case runs in-process against an engine that is not decoding, so the queue
is full by construction rather than by timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import TINY

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from suanli.run.local import free_port

    cfg = tmp_path_factory.mktemp("serve") / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    port = free_port()
    args = ["--model", str(cfg), "--served-model-name", "tiny", "--port", str(port)]
    args += ["--dtype", "fp32", "--max-len", "128", "--slots", "4"]
    srv = subprocess.Popen(
        [sys.executable, "-m", "suanli.workloads.serve_lm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert srv.stdout is not None
    for line in srv.stdout:  # it prints its URL once the engine is built
        if "serve_lm tiny on http://" in line:
            break
    drain = threading.Thread(target=srv.stdout.read, daemon=True)  # never let the pipe fill
    drain.start()
    base = f"http://127.0.0.1:{port}"
    try:
        # uvicorn binds right after that line: wait for it to answer
        with httpx.Client(transport=httpx.HTTPTransport(retries=50)) as c:
            assert c.get(base + "/health", timeout=30).status_code == 200
        yield base, "tiny"
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        drain.join(timeout=10)
        srv.stdout.close()


@pytest.fixture
def client(server: tuple[str, str]) -> Iterator[Any]:
    with openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_models_and_completions_with_every_field(client: Any) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"] and client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")

    greedy = client.completions.create(model="tiny", prompt="hello", max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    assert greedy.usage.completion_tokens == 12 and greedy.choices[0].finish_reason == "length"
    # nucleus sampling with a tiny top_p keeps only the most likely token: greedy again
    nucleus = client.completions.create(model="tiny", prompt="hello", max_tokens=12, top_p=1e-6)
    assert nucleus.choices[0].text == text
    streamed = client.completions.create(
        model="tiny",
        prompt="hello",
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12

    # n choices, seeded: reproducible, and (default temperature 1) not all alike
    many = [
        client.completions.create(model="tiny", prompt="hi", max_tokens=16, n=3, seed=7)
        for _ in range(2)
    ]
    texts = [[c.text for c in m.choices] for m in many]
    assert texts[0] == texts[1] and len(set(texts[0])) > 1 and len(texts[0]) == 3
    assert [c.index for c in many[0].choices] == [0, 1, 2]
    assert many[0].usage.prompt_tokens == 2 and many[0].usage.completion_tokens == 48

    # a list of prompts, token ids, echo
    batch = client.completions.create(
        model="tiny", prompt=["ab", "cd"], max_tokens=3, temperature=0, echo=True
    )
    assert [c.text[:2] for c in batch.choices] == ["ab", "cd"]
    ids = client.completions.create(
        model="tiny", prompt=[104, 101, 108, 108, 111], max_tokens=12, temperature=0
    )
    assert ids.choices[0].text == text

    # logit_bias steers; a stop string ends the text before it, streamed or not
    forced = client.completions.create(
        model="tiny", prompt="hello", max_tokens=4, temperature=0, logit_bias={"120": 100}
    )
    assert forced.choices[0].text == "xxxx"
    stop = next(ch for ch in text[1:] if ord(ch) < 128)  # a whole byte, not a fragment
    cut = client.completions.create(
        model="tiny", prompt="hello", max_tokens=12, temperature=0, stop=[stop, "zzz"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    cut_stream = client.completions.create(
        model="tiny", prompt="hello", max_tokens=12, temperature=0, stop=stop, stream=True
    )
    parts = list(cut_stream)
    assert "".join(p.choices[0].text for p in parts) == cut.choices[0].text
    assert parts[-1].choices[0].finish_reason == "stop"

    # log-probabilities: the chosen token's and the top 2, most likely first
    lp = (
        client.completions.create(
            model="tiny", prompt="hello", max_tokens=5, temperature=0, logprobs=2
        )
        .choices[0]
        .logprobs
    )
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(
        max(top.values()) == pytest.approx(v)
        for top, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )  # greedy: the best one


def test_chat_completions_use_a_template_and_stream(client: Any) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say hi."}]},
    ]
    chat = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=1,
    )
    choice = chat.choices[0]
    assert chat.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop") and "<|im_end|>" not in choice.message.content
    assert len(choice.logprobs.content) == chat.usage.completion_tokens
    # the prompt is the ChatML rendering of the messages
    from suanli.workloads.openai_types import Message, chat_prompt

    rendered = chat_prompt([Message(**m) for m in messages])
    assert chat.usage.prompt_tokens == len(rendered.encode())
    assert rendered.endswith("<|im_start|>assistant\n")
    stream = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_completion_tokens=10, temperature=0, stream=True
        )
    )
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == choice.message.content
    assert stream[-1].choices[0].finish_reason == choice.finish_reason


def test_a_chat_goes_on_from_the_assistants_last_message(client: Any) -> None:
    """vLLM's continue_final_message, which the router uses to resume a cut stream."""
    from suanli.workloads.openai_types import Message, chat_prompt

    messages = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hel"}]
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    chat = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=5, temperature=0, extra_body=extra
    )
    rendered = chat_prompt([Message(**m) for m in messages], continue_final=True)
    assert rendered.endswith("<|im_start|>assistant\nHel")  # the turn left open
    assert chat.usage.prompt_tokens == len(rendered.encode())
    with pytest.raises(openai.BadRequestError, match="needs add_generation_prompt: false"):
        client.chat.completions.create(
            model="tiny", messages=messages, extra_body={"continue_final_message": True}
        )
    with pytest.raises(openai.BadRequestError, match="must be the assistant's"):
        client.chat.completions.create(model="tiny", messages=messages[:1], extra_body=extra)
    with pytest.raises(openai.BadRequestError, match="only for continue_final_message"):
        client.chat.completions.create(
            model="tiny", messages=messages, extra_body={"add_generation_prompt": False}
        )


@pytest.mark.parametrize(
    ("kwargs", "param", "says"),
    [
        ({"max_tokens": 500}, "max_tokens", "maximum context length is 127"),
        ({"extra_body": {"guided_json": {}}}, "guided_json", "does not support this field"),
        ({"suffix": "end"}, "suffix", "not supported"),
        ({"best_of": 3}, "best_of", "best_of other than n"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4 stop strings"),
        ({"logit_bias": {"999": 1}}, "logit_bias", "token ids lie in [0, 256)"),
        ({"prompt": [300]}, "prompt", "token ids lie in [0, 256)"),
    ],
)
def test_what_cannot_be_honoured_is_refused_in_openai_shape(
    client: Any, kwargs: dict[str, Any], param: str, says: str
) -> None:
    call = {"model": "tiny", "prompt": "x", "max_tokens": 4} | kwargs
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**call)
    assert err.value.status_code == 400
    body = err.value.body
    assert body["param"] == param and says in body["message"], body


def test_chat_refusals_and_http_errors(server: tuple[str, str], client: Any) -> None:
    msgs = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    with pytest.raises(openai.BadRequestError, match="tool calling"):
        client.chat.completions.create(model="tiny", messages=msgs, tools=[tool])
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(openai.BadRequestError, match="text only"):
        client.chat.completions.create(model="tiny", messages=image)
    with pytest.raises(openai.NotFoundError, match="serves 'tiny'"):
        client.chat.completions.create(model="llama-70b", messages=msgs)
    base = server[0]
    bad = httpx.post(
        base + "/v1/completions",
        content=b"{not json",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    nowhere = httpx.get(base + "/v1/embeddings", timeout=30)
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "unknown_url"


def test_metrics_are_prometheus(server: tuple[str, str], client: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client.completions.create(model="tiny", prompt="count me", max_tokens=6, temperature=0)
    text = httpx.get(server[0] + "/metrics", timeout=30).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    done = sum(
        s.value for s in fams["suanli_serve_request_success"].samples if s.name.endswith("_total")
    )
    assert done >= 1
    ttft = fams["suanli_serve_time_to_first_token_seconds"]
    count = [s.value for s in ttft.samples if s.name.endswith("_count")]
    assert count and count[0] == done
    for name in (
        "suanli_serve_num_requests_waiting",
        "suanli_serve_kv_cache_usage_ratio",
        "suanli_serve_generation_tokens",
        "suanli_serve_time_per_output_token_seconds",
    ):
        assert name in fams, name
    stats = httpx.get(server[0] + "/stats", timeout=30).json()
    assert stats["requests_total"] == done


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from suanli.workloads.serve_app import app_for
    from suanli.workloads.serve_lm import Request
    from tests.test_workloads import _engine

    eng = _engine(tmp_path)  # its loop is not running: what is queued stays queued
    eng.waiting.put(Request([1, 2], 4, 0.0))
    with TestClient(app_for(eng, "tiny", max_queue=1)) as http:
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
