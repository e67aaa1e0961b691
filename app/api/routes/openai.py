"""OpenAI-compatible routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

Errors on these routes have OpenAI's shape (app.api.errors.OPENAI_PATHS). With `stream: true` the
answer is server-sent events: `data: {chunk}` lines, then `data: [DONE]`. The route is decided
once, before the first token, and held for all of them, so the streamed pieces add up to the text
the same request gets without streaming.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.api.auth import requires
from app.api.deps import V1, EngineDep, RuntimeDep, SettingsDep, StackDep
from app.api.errors import openai_error_body
from app.api.routes.generate import retrieve, run_cancellable
from app.domain import Scope
from app.errors import ServiceError
from app.schemas.common import WWW_AUTHENTICATE
from app.schemas.generation import ExpertRef
from app.schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    LemoeRouting,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
    Usage,
)
from app.services import generation as generation_service
from app.services.generation import Generated, PreparedCompletion

DONE = "[DONE]"


def _error(description: str) -> dict[str, Any]:
    return {"model": OpenAIErrorResponse, "description": description}


OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("A value is not allowed (the message and `param` name it), or the body is not valid JSON"),
    401: {**_error("No API key, or an unknown or revoked one (code unauthenticated)"), "headers": WWW_AUTHENTICATE},
    403: _error("The API key lacks the generate scope (code forbidden)"),
    404: _error("Unknown path"),
    408: _error("The request body did not arrive in time"),
    413: _error("The request body is larger than this server accepts"),
    422: _error("Not sent by these routes (OpenAI's 400 instead); listed as every /v1 route lists it"),
    500: _error("Internal error (details only in the server log)"),
    503: {
        **_error("The model is still loading, or the generation ran past its time limit"),
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
    },
}
# Before OpenAPI 3.2, the `schema` of an event stream describes one event.
SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string", "description": "A JSON chunk, or [DONE] at the end"}},
    "required": ["data"],
}
STREAM_RESPONSE = {
    "content": {"text/event-stream": {"schema": SSE_EVENT}},
    "description": "JSON, or with `stream: true` server-sent events of chunks",
}

router = APIRouter(prefix=V1, tags=["openai"], responses=OPENAI_ERROR_RESPONSES)


@router.get("/models", dependencies=[requires(Scope.GENERATE)])
def list_models(engine: EngineDep) -> ModelList:
    """The one model this server serves (OpenAI's shape)."""
    return ModelList(data=[ModelCard(id=engine.model_name, created=_started(engine))])


@router.post("/completions", responses={200: STREAM_RESPONSE}, dependencies=[requires(Scope.GENERATE)])
async def completions(
    *,
    request: Request,
    engine: EngineDep,
    stack: StackDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    body: CompletionRequest,
) -> Completion:
    """Continue `prompt` through the routed expert stack (OpenAI's completions API)."""
    prepared = await _prepare(engine, settings, body)
    deps = {"engine": engine, "stack": stack, "settings": settings, "metrics": runtime.metrics}
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return _stream(prepared, deps, partial(_completion_chunk, ident, created, engine.model_name), include_usage)
    g = await run_cancellable(request, partial(generation_service.complete, prepared=prepared, **deps))
    choice = CompletionChoice(index=0, text=g.text, finish_reason=g.finish_reason)
    return Completion(id=ident, created=created, model=g.model, choices=[choice], usage=_usage(g), lemoe=_routing(g, prepared))


@router.post("/chat/completions", responses={200: STREAM_RESPONSE}, dependencies=[requires(Scope.GENERATE)])
async def chat_completions(
    *,
    request: Request,
    engine: EngineDep,
    stack: StackDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    body: ChatCompletionRequest,
) -> ChatCompletion:
    """Answer `messages` in the model's chat template, routed on the last user message's content
    (OpenAI's chat completions API)."""
    prepared = await _prepare(engine, settings, body)
    deps = {"engine": engine, "stack": stack, "settings": settings, "metrics": runtime.metrics}
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return _stream(prepared, deps, partial(_chat_chunk, ident, created, engine.model_name), include_usage)
    g = await run_cancellable(request, partial(generation_service.complete, prepared=prepared, **deps))
    choice = ChatChoice(index=0, message=AssistantMessage(content=g.text), finish_reason=g.finish_reason)
    return ChatCompletion(id=ident, created=created, model=g.model, choices=[choice], usage=_usage(g), lemoe=_routing(g, prepared))


async def _prepare(engine, settings, body: CompletionRequest | ChatCompletionRequest) -> PreparedCompletion:
    """Checked before anything is sent, so that a bad request is a 400 even when streaming."""
    call = partial(generation_service.prepare_completion, engine=engine, settings=settings, request=body)
    return await run_in_threadpool(call)


def _stream(prepared: PreparedCompletion, deps: dict[str, Any], chunk: Callable[..., dict], include_usage: bool) -> EventSourceResponse:
    return EventSourceResponse(_events(prepared, deps, chunk, include_usage), ping=15)


async def _events(
    prepared: PreparedCompletion, deps: dict[str, Any], chunk: Callable[..., dict], include_usage: bool
) -> AsyncIterator[dict[str, str]]:
    """The generation runs in a worker thread and hands its text over piece by piece; a client
    that hangs up cancels this generator, which stops the generation at its next token."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    cancel = threading.Event()

    def on_text(piece: str) -> None:
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    call = partial(generation_service.complete, prepared=prepared, cancel=cancel, on_text=on_text, **deps)
    task = asyncio.ensure_future(run_in_threadpool(call))
    task.add_done_callback(retrieve)
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        yield _data(chunk(first=True))
        while (piece := await pieces.get()) is not None:
            yield _data(chunk(text=piece))
        try:
            g: Generated = task.result()
        except ServiceError as exc:
            yield _data(openai_error_body(exc.status_code, exc.type, exc.message, exc.param))
        else:
            yield _data(chunk(finish_reason=g.finish_reason, lemoe=_routing(g, prepared)))
            if include_usage:
                yield _data(chunk(usage=_usage(g)))
        yield {"data": DONE}
    finally:
        cancel.set()  # a no-op once it finished; stops it when the client went away


def _data(payload: Any) -> dict[str, str]:
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump(mode="json")
    return {"data": json.dumps(payload, ensure_ascii=False, separators=(",", ":"))}


def _completion_chunk(
    ident: str,
    created: int,
    model: str,
    *,
    first: bool = False,
    text: str = "",
    finish_reason: str | None = None,
    lemoe: LemoeRouting | None = None,
    usage: Usage | None = None,
) -> dict:
    """One streamed `text_completion` object (`lemoe` only on the last one, with finish_reason)."""
    choices = [] if usage is not None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]
    out = {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": choices}
    return _extras(out, lemoe, usage)


def _chat_chunk(
    ident: str,
    created: int,
    model: str,
    *,
    first: bool = False,
    text: str = "",
    finish_reason: str | None = None,
    lemoe: LemoeRouting | None = None,
    usage: Usage | None = None,
) -> dict:
    """One `chat.completion.chunk` (the first names the role; `lemoe` only on the last one)."""
    delta = {"role": "assistant", "content": ""} if first else {} if finish_reason is not None else {"content": text}
    choices = [] if usage is not None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    out = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    return _extras(out, lemoe, usage)


def _extras(out: dict, lemoe: LemoeRouting | None, usage: Usage | None) -> dict:
    if lemoe is not None:
        out["lemoe"] = lemoe.model_dump(mode="json")
    if usage is not None:
        out["usage"] = usage.model_dump(mode="json")
    return out


def _usage(g: Generated) -> Usage:
    return Usage(prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens, total_tokens=g.prompt_tokens + g.completion_tokens)


def _routing(g: Generated, prepared: PreparedCompletion) -> LemoeRouting:
    expert = None if g.expert_name is None else ExpertRef(id=g.expert_id, name=g.expert_name)
    return LemoeRouting(
        expert=expert,
        route_score=g.route_score,
        nearest_edit_id=g.nearest_edit_id,
        subject_score=g.subject_score,
        relation_score=g.relation_score,
        span_score=g.span_score,
        edits=prepared.edits,
        route_text=prepared.route_kind,
    )


_PROCESS_STARTED = int(time.time())


def _started(engine) -> int:
    """When this process started (the model is loaded at start-up)."""
    return _PROCESS_STARTED
