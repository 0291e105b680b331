"""Resuming a stream a dying replica cut: what the router has relayed of it, and the
request that goes on from there on another replica.

The router reads the events it relays (OpenAI's server-sent events) and keeps the text
the client has received. When the replica's connection breaks before the stream ends,
the same request is sent to another replica with that text appended to its prompt
(completions) or as an assistant message to continue (chat, vLLM's
``continue_final_message``, which serve_lm honours too), for the tokens still owed;
that replica's events are relayed under the first stream's id, without a second role
header. The client sees one stream.

What it is, and is not: with greedy decoding (``temperature: 0``) the continuation is
what the first replica would have produced, up to the numerics of another batch; with
sampling it is another sample conditioned on the text already sent, as valid as the
first but not the same. Not resumed (the client gets the ``replica_failed`` error
event, as before): several choices (``n`` > 1), ``logprobs``, ``echo``, a prompt that
is not one string, a stream that already ended, and a stream whose replacement also
fails ``MAX_RESUMES`` times. The usage a resumed stream reports (``include_usage``) is
the last replica's: its prompt holds the text already sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from suanli.workloads.openai_types import COMPLETION_MAX_TOKENS

MAX_RESUMES = 3
#: an event longer than this (a replica is a tenant's own code) ends the parsing: the
#: rest is relayed as it comes, and the stream is no longer resumable
MAX_PENDING_BYTES = 64 * 1024
MAX_TEXT_CHARS = 1 << 20  # text kept for a continuation; beyond, not resumable


@dataclass
class StreamLog:
    """What the client has been sent of one stream, parsed event by event."""

    chat: bool
    text: str = ""
    events: int = 0  # events that carried text: tokens, for engines that send one each
    id: str | None = None
    ended: bool = False  # a finish reason or [DONE] went out
    raw: bool = False  # parsing given up (an over-long event, or too much text)
    _buf: bytearray = field(default_factory=bytearray, repr=False)

    def take(self, piece: bytes) -> list[bytes]:
        """The complete events that ``piece`` finishes, each with its blank line (what
        is relayed, so a client never holds half an event when a replica dies)."""
        if self.raw:
            return [piece] if piece else []
        start = max(0, len(self._buf) - 1)  # only the new bytes are searched
        self._buf += piece
        out = []
        while (i := self._buf.find(b"\n\n", start)) >= 0:
            event = bytes(self._buf[: i + 2])
            del self._buf[: i + 2]
            start = 0
            self.note(event)
            out.append(event)
        if len(self._buf) > MAX_PENDING_BYTES:
            self.raw = True
            out.append(bytes(self._buf))
            self._buf.clear()
        return out

    def rest(self) -> bytes:
        """What is left unfinished when the stream ends."""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def note(self, raw: bytes) -> None:
        """One whole event, as sent to the client."""
        event = parse(raw)
        if event == "[DONE]":
            self.ended = True
        if not isinstance(event, dict):
            return
        self.id = self.id or event.get("id")
        for c in event.get("choices") or []:
            if not isinstance(c, dict):
                continue
            delta = c.get("delta")
            piece_text = (
                (delta.get("content") if isinstance(delta, dict) else None)
                if self.chat
                else c.get("text")
            )
            if isinstance(piece_text, str) and piece_text:
                self.text += piece_text
                self.events += 1
                if len(self.text) > MAX_TEXT_CHARS:
                    self.raw, self.text = True, ""
            if c.get("finish_reason"):
                self.ended = True

    def tokens(self, byte_tokens: bool) -> int:
        """Tokens already sent: exact for a byte-level model (serve_lm), else one per
        event carrying text (vLLM and SGLang stream a token per event)."""
        return len(self.text.encode()) if byte_tokens else self.events


def parse(raw: bytes) -> dict[str, Any] | str | None:
    """One server-sent event's data: its JSON object, ``"[DONE]"``, or None."""
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:].strip()
            if data == b"[DONE]":
                return "[DONE]"
            try:
                obj = json.loads(data)
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def continuation(
    payload: dict[str, Any], log: StreamLog, byte_tokens: bool
) -> dict[str, Any] | None:
    """The request that goes on from what ``log`` says was sent (None: not resumable)."""
    if log.raw or log.ended:
        return None
    if payload.get("n", 1) != 1 or payload.get("logprobs") or payload.get("echo"):
        return None
    if payload.get("top_logprobs"):
        return None
    sent = log.tokens(byte_tokens)
    out = dict(payload)
    first = None if log.chat else COMPLETION_MAX_TOKENS
    for key, default in (("max_tokens", first), ("max_completion_tokens", None)):
        asked = payload.get(key, default)
        if isinstance(asked, int):
            if asked - sent < 1:
                return None  # everything owed was sent; only the end is missing
            out[key] = asked - sent
    if log.chat:
        messages = payload.get("messages")
        if not isinstance(messages, list):
            return None
        out["messages"] = [*messages, {"role": "assistant", "content": log.text}]
        out["continue_final_message"], out["add_generation_prompt"] = True, False
    else:
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return None
        out["prompt"] = prompt + log.text
    return out


def rewrite(raw: bytes, log: StreamLog) -> bytes | None:
    """A replacement replica's event as the first stream's: its id, and no second role
    header (an event with nothing else is dropped)."""
    event = parse(raw)
    if not isinstance(event, dict):
        return raw + b"\n\n"
    if log.id is not None and "id" in event:
        event["id"] = log.id
    for c in event.get("choices") or []:
        delta = c.get("delta") if isinstance(c, dict) else None
        if not isinstance(delta, dict) or delta.pop("role", None) is None:
            continue
        if not delta and c.get("finish_reason") is None and not c.get("logprobs"):
            return None
    return f"data: {json.dumps(event)}\n\n".encode()
