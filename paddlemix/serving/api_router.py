"""Thin routes (as vLLM's ``api_router.py``): parse, hand the job to the scheduler taken from ``app.state``, return
JSON or a server-sent-event stream; every failure becomes an ``ErrorResponse`` with its status code."""

import asyncio
import base64
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .protocol import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    ImageGenerationRequest,
    ImageObject,
    ImagesResponse,
    ModelCard,
    ModelList,
    UsageInfo,
)
from .scheduler import QueueFull, RequestCancelled, RequestTimeout

router = APIRouter()

# exception -> (status, OpenAI error type, code)
_ERRORS = (
    (QueueFull, 429, "rate_limit_error", "rate_limit_exceeded"),
    (RequestTimeout, 504, "timeout_error", "timeout"),
    (RequestCancelled, 503, "server_error", "cancelled"),
    (LookupError, 404, "invalid_request_error", "model_not_found"),
    (ValueError, 400, "invalid_request_error", None),
)


def error_response(status, message, type_="invalid_request_error", param=None, code=None):
    body = ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def error_for(exc):
    """(status, ErrorResponse body) of an exception."""
    for cls, status, type_, code in _ERRORS:
        if isinstance(exc, cls):
            return status, ErrorResponse(error=ErrorInfo(message=str(exc), type=type_, code=code))
    return 500, ErrorResponse(error=ErrorInfo(message=f"internal error: {exc}", type="server_error"))


def _as_response(exc):
    status, body = error_for(exc)
    return JSONResponse(body.model_dump(), status_code=status)


def _sse(payload):
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _check_model(requested, served, what):
    if served is None:
        raise LookupError(f"this server has no {what} model")
    if requested is not None and requested != served:
        raise LookupError(f"model {requested!r} is not served here; {what} uses {served!r}")


async def _submit(request, prepare, body):
    """Prepare the job off the event loop and queue it: the request's ``RequestState``."""
    job = await asyncio.to_thread(prepare, body)
    return request.app.state.scheduler.submit(job)


async def _events(request, state):
    """The request's events until its result or error; cancels it when the caller goes away."""
    scheduler = request.app.state.scheduler
    try:
        while True:
            if state.done:  # its last events are queued
                kind, payload = await state.events.get()
            else:
                try:
                    remaining = max(state.deadline - time.monotonic(), 0.01)
                    kind, payload = await asyncio.wait_for(state.events.get(), remaining)
                except asyncio.TimeoutError:
                    scheduler.expire(state)
                    continue
            yield kind, payload
            if kind in ("result", "error"):
                return
    finally:
        if not state.done:
            scheduler.cancel(state)


async def _outcome(request, state):
    async for kind, payload in _events(request, state):
        if kind == "result":
            return payload
        if kind == "error":
            raise payload


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", **request.app.state.scheduler.snapshot()}


@router.get("/v1/models")
async def models(request: Request):
    engine = request.app.state.engine
    ids = [m for m in (engine.image_model, engine.chat_model) if m is not None]
    return ModelList(data=[ModelCard(id=m) for m in ids]).model_dump()


@router.post("/v1/images/generations")
async def create_images(body: ImageGenerationRequest, request: Request):
    engine = request.app.state.engine
    try:
        _check_model(body.model, engine.image_model, "image generation")
        state = await _submit(request, engine.prepare_images, body)
    except Exception as exc:
        return _as_response(exc)
    if body.stream:
        return StreamingResponse(_image_stream(request, state), media_type="text/event-stream")
    try:
        pngs = await _outcome(request, state)
    except Exception as exc:
        return _as_response(exc)
    return ImagesResponse(data=[ImageObject(b64_json=_b64(p)) for p in pngs]).model_dump(exclude_none=True)


def _b64(data):
    return base64.b64encode(data).decode("ascii")


async def _image_stream(request, state):
    async for kind, payload in _events(request, state):
        if kind == "progress":
            done, total = payload
            yield _sse({"type": "image_generation.progress", "completed": done, "total": total})
        elif kind == "result":
            for index, png in enumerate(payload):
                yield _sse({"type": "image_generation.completed", "index": index, "b64_json": _b64(png),
                            "created_at": int(time.time()), "output_format": "png"})
        elif kind == "error":
            yield _sse(error_for(payload)[1].model_dump())
    yield _sse("[DONE]")


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    engine = request.app.state.engine
    try:
        _check_model(body.model, engine.chat_model, "chat")
        state = await _submit(request, engine.prepare_chat, body)
    except Exception as exc:
        return _as_response(exc)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(_chat_stream(request, state, completion_id, engine.chat_model, include_usage),
                                 media_type="text/event-stream")
    try:
        result = await _outcome(request, state)
    except Exception as exc:
        return _as_response(exc)
    return ChatCompletionResponse(
        id=completion_id,
        model=engine.chat_model,
        choices=[ChatCompletionChoice(index=0, message=AssistantMessage(content=result.text),
                                      finish_reason=result.finish_reason)],
        usage=_usage(result),
    ).model_dump()


def _usage(result):
    return UsageInfo(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                     total_tokens=result.prompt_tokens + result.completion_tokens)


async def _chat_stream(request, state, completion_id, model, include_usage):
    def chunk(delta, finish_reason=None, usage=None):
        choices = [] if usage is not None else [
            ChatCompletionStreamChoice(index=0, delta=delta, finish_reason=finish_reason)
        ]
        return _sse(ChatCompletionChunk(id=completion_id, model=model, choices=choices, usage=usage)
                    .model_dump_json(exclude_none=True))

    yield chunk(DeltaMessage(role="assistant", content=""))
    async for kind, payload in _events(request, state):
        if kind == "delta":
            yield chunk(DeltaMessage(content=payload))
        elif kind == "result":
            yield chunk(DeltaMessage(), finish_reason=payload.finish_reason)
            if include_usage:
                yield chunk(None, usage=_usage(payload))
        elif kind == "error":
            yield _sse(error_for(payload)[1].model_dump())
    yield _sse("[DONE]")
