"""OpenAI's request shapes as serve_lm accepts them, and its error shape.

Every field is either honoured (`suanli.workloads.openai_api`) or refused here with a
400 that names it; unknown fields are refused (``extra="forbid"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: OpenAI's default ``max_tokens`` for completions (chat has none: the context bounds it)
COMPLETION_MAX_TOKENS = 16
#: ChatML, the template of Qwen and many others: plain text, so byte tokens carry it
CHAT_END = "<|im_end|>"


def chat_prompt(messages: list[Message], continue_final: bool = False) -> str:
    """The messages in ChatML, ending with the assistant's open turn; with
    ``continue_final`` (vLLM's ``continue_final_message``), the last message is that
    turn, left open so the answer goes on from its text (how a stream cut by a dying
    replica is resumed on another)."""
    if continue_final:
        *before, last = messages
        turns = [f"<|im_start|>{m.role}\n{m.text()}{CHAT_END}\n" for m in before]
        return "".join(turns) + f"<|im_start|>assistant\n{last.text()}"
    turns = [f"<|im_start|>{m.role}\n{m.text()}{CHAT_END}\n" for m in messages]
    return "".join(turns) + "<|im_start|>assistant\n"


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Sampling(BaseModel):
    """The fields completions and chat share. ``extra="forbid"``: nothing is ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's default
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted: an end-user id for abuse tracking; not used here

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 stop strings, none empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        if v and any(not -100 <= b <= 100 for b in v.values()):
            raise ValueError("logit_bias values lie in [-100, 100]")
        return v


class CompletionBody(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(default=COMPLETION_MAX_TOKENS, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text":
                raise OpenAIError(
                    400,
                    f"content part of type {part.type!r}: serve_lm reads text only",
                    param="messages",
                )
        return "".join(p.text or "" for p in self.content)


class ChatBody(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=5)
    # vLLM's extensions: go on from a last assistant message instead of opening a turn
    continue_final_message: bool = False
    add_generation_prompt: bool = True
    # refused below when used: a byte-level GPT has no tools or JSON mode
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


def refuse_unsupported(body: CompletionBody | ChatBody) -> None:
    if isinstance(body, CompletionBody):
        if body.suffix:
            raise OpenAIError(400, "suffix (insertion) is not supported here", param="suffix")
        if body.best_of not in (None, body.n):
            raise OpenAIError(
                400,
                "best_of other than n is not supported: ask for n choices and pick yourself",
                param="best_of",
            )
    else:
        if body.tools or body.tool_choice not in (None, "none"):
            raise OpenAIError(400, "tool calling is not supported by serve_lm", param="tools")
        if body.response_format and body.response_format.get("type") != "text":
            raise OpenAIError(
                400, "only response_format {type: text} is supported", param="response_format"
            )
        if body.continue_final_message and body.add_generation_prompt:
            raise OpenAIError(
                400,
                "continue_final_message needs add_generation_prompt: false (vLLM's rule)",
                param="continue_final_message",
            )
        if body.continue_final_message and body.messages[-1].role != "assistant":
            raise OpenAIError(
                400,
                "continue_final_message: the last message must be the assistant's",
                param="messages",
            )
        if not body.continue_final_message and not body.add_generation_prompt:
            raise OpenAIError(
                400,
                "add_generation_prompt: false is only for continue_final_message: true",
                param="add_generation_prompt",
            )
        if body.top_logprobs is not None and not body.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
