"""The router's stream resume, piece by piece: what it reads of the events it relays,
the request that goes on from there, and the replacement's events made the first
stream's. The whole path (a replica killed under streams) is in test_services.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from suanli.api.app import create_app
from suanli.api.resume import (
    MAX_PENDING_BYTES,
    MAX_TEXT_CHARS,
    StreamLog,
    continuation,
    rewrite,
)
from suanli.autoscale.service_spec import ServiceSpec
from suanli.run.local import free_port
from suanli.service.replicas import ReplicaBook
from suanli.store.db import Store
from suanli.store.models import ServiceRow
from tests.helpers import until


def _event(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def test_the_log_reads_events_split_anywhere() -> None:
    raw = b"".join(
        _event({"id": "cmpl-1", "choices": [{"index": 0, "text": t, "finish_reason": None}]})
        for t in ("Hel", "lo, ", "wor")
    )
    log = StreamLog(chat=False)
    for i in range(0, len(raw), 7):  # pieces that cut events and lines anywhere
        log.take(raw[i : i + 7])
    assert (log.text, log.events, log.id, log.ended) == ("Hello, wor", 3, "cmpl-1", False)
    assert log.tokens(byte_tokens=True) == 10 and log.tokens(byte_tokens=False) == 3
    log.take(b"data: [DONE]\n\n")
    assert log.ended and continuation({"prompt": "x"}, log, True) is None


def test_only_whole_events_go_out_and_a_flood_ends_the_parsing() -> None:
    log = StreamLog(chat=False)
    event = _event({"id": "c", "choices": [{"index": 0, "text": "ab", "finish_reason": None}]})
    assert log.take(event[:10]) == [] and log.take(event[10:]) == [event]
    assert log.text == "ab"
    flood = log.take(b"data: " + b"x" * (MAX_PENDING_BYTES + 1))  # no end of event, ever
    assert flood and log.raw and log.take(b"more") == [b"more"]
    assert continuation({"prompt": "p"}, log, True) is None  # not resumable any more
    long = StreamLog(chat=False)
    many = _event({"choices": [{"index": 0, "text": "y" * 4096}]}) * (MAX_TEXT_CHARS // 4096 + 1)
    long.take(many)
    assert long.raw and long.text == ""  # what it kept is let go


def test_a_completion_goes_on_with_what_was_sent_and_what_is_owed() -> None:
    log = StreamLog(chat=False, text="Hello", events=5)
    cont = continuation({"prompt": ["Say: "], "max_tokens": 8, "stream": True}, log, True)
    assert cont == {"prompt": "Say: Hello", "max_tokens": 3, "stream": True}
    assert continuation({"prompt": "x"}, log, True) is not None  # default 16 owed
    for payload in (
        {"prompt": "x", "n": 2},
        {"prompt": "x", "logprobs": 1},
        {"prompt": "x", "echo": True},
        {"prompt": [[1, 2, 3]]},
        {"prompt": "x", "max_tokens": 5},  # all five were sent; only the end was missing
    ):
        assert continuation(payload, log, True) is None, payload


def test_a_chat_goes_on_as_the_assistants_open_message() -> None:
    log = StreamLog(chat=True, text="Hi th", events=2)
    msgs = [{"role": "user", "content": "hi"}]
    cont = continuation({"messages": msgs, "max_completion_tokens": 10}, log, False)
    assert cont is not None
    assert cont["messages"] == [*msgs, {"role": "assistant", "content": "Hi th"}]
    assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
    assert cont["max_completion_tokens"] == 8  # one token an event on vLLM
    assert "max_tokens" not in cont  # nothing asked, nothing bounded


def test_a_replacements_events_read_as_the_first_streams() -> None:
    log = StreamLog(chat=True, id="chatcmpl-first")
    role_only = _event(
        {
            "id": "x",
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
        }
    )
    assert rewrite(role_only.rstrip(b"\n"), log) is None  # no second role header
    both = {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "e"}}]}
    out = rewrite(_event(both).rstrip(b"\n"), log)
    assert out is not None
    got = json.loads(out[6:])
    assert got["id"] == "chatcmpl-first" and got["choices"][0]["delta"] == {"content": "e"}
    assert rewrite(b"data: [DONE]", log) == b"data: [DONE]\n\n"


# --- the router, for real, with two stand-in replicas -----------------------------------
#: A stand-in replica, NOT serve_lm: an HTTP server that streams OpenAI completion events
#: in chunked encoding. ``die`` sends three events and breaks the connection mid-body (a
#: replica killed mid-stream, deterministically); otherwise it writes the request it got
#: to ``log`` and streams its prompt's last word back, then [DONE].
STAND_IN = r"""
import json, socket, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

port, mode, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        def event(text, finish=None):
            e = {"id": f"cmpl-{mode}", "object": "text_completion", "choices": [
                {"index": 0, "text": text, "finish_reason": finish}]}
            data = f"data: {json.dumps(e)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data)); self.wfile.flush()
        if mode == "slow":  # one event, then a long think: the client leaves meanwhile
            event("one ")
            time.sleep(60)
            return
        if mode == "die":
            for t in ("one ", "two ", "three "):
                event(t)
            half = b'data: {"id": "cmpl-die", "choices": [{"index": 0, "te'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half)); self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # mid-event, no last chunk
            return
        with open(log, "a") as f:
            f.write(json.dumps(body) + "\n")
        event("four", "length")
        data = b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)); self.wfile.flush()

    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _service(tmp_path: Path) -> tuple[Store, str]:
    """A store with ann's service ``chat`` (no controller: the test books its replicas)."""
    store = Store.sqlite(tmp_path)
    store.migrate()
    token = store.create_token("user", "ann")
    spec = ServiceSpec.model_validate(
        {"name": "chat", "model": "tiny-llama-40m", "replicas": {"min": 0, "max": 2}}
    )
    with store.tx() as s:
        s.add(
            ServiceRow(name="chat", owner="ann", spec=spec.model_dump(), created_at=0, updated_at=0)
        )
    return store, token


def test_the_router_resumes_a_cut_stream_on_another_replica(tmp_path: Path) -> None:
    store, token = _service(tmp_path)
    log = tmp_path / "got.jsonl"
    ports = {"die": free_port(), "live": free_port()}
    procs = [
        subprocess.Popen([sys.executable, "-c", STAND_IN, str(p), mode, str(log)])
        for mode, p in ports.items()
    ]
    book = ReplicaBook()
    try:
        for p in ports.values():
            until(f"the stand-in on {p}", lambda p=p: _answers(p))
        # the dying one first: equal load, the lower job id is picked
        book.sync("chat", {1: f"127.0.0.1:{ports['die']}", 2: f"127.0.0.1:{ports['live']}"})
        for r in book.of("chat"):
            r.ready = True
        with TestClient(create_app(store, book=book)) as api:
            got = api.post(
                "/s/chat/v1/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": "chat", "prompt": "Count: ", "max_tokens": 20, "stream": True},
            )
            metrics = api.get(
                "/v1/services/chat/metrics", headers={"Authorization": f"Bearer {token}"}
            ).text
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    # whole events only: the half event the dying replica sent never reached the client
    events = [json.loads(x[6:]) for x in got.text.split("\n\n") if x.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == "one two three four"
    assert {e["id"] for e in events} == {"cmpl-die"}  # one stream, under its first id
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert got.text.endswith("data: [DONE]\n\n") and "replica_failed" not in got.text
    sent = json.loads(log.read_text())
    assert sent["prompt"] == "Count: one two three "  # what the client had, appended
    assert sent["max_tokens"] == 20 - len("one two three ")  # bytes are tokens in serve_lm
    assert "suanli_service_resumed_streams_total 1.0" in metrics


@contextlib.contextmanager
def _live_stand_in(log: Path, mode: str = "live") -> Iterator[int]:
    """One stand-in replica (``live`` or ``slow``), answering on the port it yields."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(port), mode, str(log)])
    try:
        until(f"the stand-in on {port} answers", lambda: _answers(port))
        yield port
    finally:
        proc.kill()
        proc.wait()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_process_on_a_replicas_port_is_not_taken_for_the_replica(tmp_path: Path) -> None:
    """Another tenant's process that took a serve_lm replica's port first answers /stats
    but cannot prove the replica's token: the prober never marks it ready, so the router
    sends it no request and no token. Engines that cannot prove (vLLM) are taken as
    they answer."""
    book = ReplicaBook()
    with _live_stand_in(tmp_path / "x") as port:
        book.sync("chat", {1: f"127.0.0.1:{port}"}, tokens={1: "t0k"}, proves=True)
        book.sync("vllm", {2: f"127.0.0.1:{port}"}, tokens={2: "t0k"}, proves=False)
        with httpx.Client() as client:
            book.probe_once(client)
        assert [r.ready for r in book.of("chat")] == [False]
        assert [r.ready for r in book.of("vllm")] == [True]


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class AfterStream:
    """What the book held the moment the app returned, before ``asyncio.run`` closes
    whatever async generators were left open (which would hide a slot held too long)."""

    inflight: int
    fill: float
    ready: bool
    judged: int
    met: int
    raised: BaseException | None


def _stream_as_a_server_would(
    store: Store, token: str, book: ReplicaBook, spec: str, receive: Receive, send: Send
) -> AfterStream:
    """One streamed completion through the app, driven as an ASGI server drives it:
    ``spec`` 2.4 (a failed send is an OSError) or 2.3 (uvicorn: a disconnect message
    from ``receive`` cancels the stream)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/s/chat/v1/completions",
        "raw_path": b"/s/chat/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    async def drive() -> AfterStream:
        raised: BaseException | None = None
        try:
            await create_app(store, book=book)(scope, receive, send)
        except Exception as exc:  # the test says which it expects
            raised = exc
        (r,) = book.of("chat")
        t = book.traffic_of("chat")
        return AfterStream(r.inflight, r.fill, r.ready, t.judged, t.met, raised)

    return asyncio.run(drive())


REQUEST = json.dumps({"model": "chat", "prompt": "Count: ", "max_tokens": 5, "stream": True})
SIZE = (7, 5)  # what another request holds: exactly one slot must come back, not two


@contextlib.contextmanager
def _one_replica(tmp_path: Path, mode: str) -> Iterator[tuple[ReplicaBook, float]]:
    """A ready stand-in replica in the book, already holding another request's slot;
    yields the book and that slot's fill."""
    book = ReplicaBook()
    with _live_stand_in(tmp_path / "got.jsonl", mode=mode) as port:
        book.sync("chat", {1: f"127.0.0.1:{port}"})
        (rep,) = book.of("chat")
        rep.ready = True
        assert book.pick("chat", set(), SIZE) is rep
        yield book, rep.fill


def _first_request() -> tuple[Receive, asyncio.Event]:
    """``receive`` giving the request, then a disconnect once ``gone`` is set."""
    asked = 0
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked == 1:
            return {"type": "http.request", "body": REQUEST.encode(), "more_body": False}
        await gone.wait()  # the server's disconnect listener
        return {"type": "http.disconnect"}

    return receive, gone


def test_a_client_gone_before_the_first_byte_gives_the_slot_back(tmp_path: Path) -> None:
    """The response head of a stream cannot be sent (the client left): the relay never
    starts, yet the replica's slot comes back and the request counts as missed."""
    store, token = _service(tmp_path)
    heads: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            heads.append(message["status"])
            raise OSError("the client is gone")

    with _one_replica(tmp_path, "live") as (book, fill):
        after = _stream_as_a_server_would(store, token, book, "2.4", _first_request()[0], send)
    assert heads == [200]  # the stream was opened, then its head failed
    assert isinstance(after.raised, ClientDisconnect)  # how Starlette reports it
    assert (after.inflight, after.fill, after.ready) == (1, fill, True)  # back, not blamed
    assert (after.judged, after.met) == (1, 0)  # a request, and not within its SLO


@pytest.mark.parametrize(
    ("mode", "reads", "then_blocks"),
    [("slow", 1, False), ("live", 2, True)],
    ids=["while-the-replica-thinks", "a-slow-reader"],
)
def test_a_client_gone_mid_stream_gives_the_slot_back_at_once(
    tmp_path: Path, mode: str, reads: int, then_blocks: bool
) -> None:
    """The client leaves after ``reads`` events. Either the replica is still generating
    (a ``slow`` stand-in: the server cancels the stream inside its wait for the replica's
    next bytes) or the client stopped reading (the server's send of the next event
    blocks, and is cancelled with the relay paused at its ``yield``). Either way the slot
    comes back when the response ends, not whenever the relay is garbage-collected."""
    store, token = _service(tmp_path)
    receive, gone = _first_request()
    bodies: list[bytes] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            bodies.append(message["body"])
            if len(bodies) == reads:
                gone.set()
                if then_blocks:  # its buffer full: the send waits until it is cancelled
                    await asyncio.Event().wait()

    with _one_replica(tmp_path, mode) as (book, fill):
        after = _stream_as_a_server_would(store, token, book, "2.3", receive, send)
    assert len(bodies) == reads and bodies[0].startswith(b"data: {")
    assert after.raised is None
    assert (after.inflight, after.fill, after.ready) == (1, fill, True)
    assert after.judged == 1
