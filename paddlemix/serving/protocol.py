"""Request and response models of the OpenAI-compatible API, in the shapes of OpenAI's reference (as vLLM's
``protocol.py``), with Emu3's options as documented extras.

Requests are strict (a string where a number belongs is an error, not a conversion) and reject unknown fields, so a
client's typo gets a 400 instead of being silently ignored. Each request has a method that yields its sampling
parameters for ``generate``.
"""

import time
from typing import List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

POSITIVE_PROMPT = " masterpiece, film grained, best quality."
NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst "
    "quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SamplingParams(BaseModel):
    """What ``generate`` needs to choose tokens: greedy when ``do_sample`` is False."""

    do_sample: bool
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    temperature: float = 1.0

    def key(self):
        return (self.do_sample, self.top_k, self.top_p, self.temperature)


# ---------------------------------------------------------------------------------------------------------------
# errors


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# ---------------------------------------------------------------------------------------------------------------
# models


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "paddlemix"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


# ---------------------------------------------------------------------------------------------------------------
# images


class ImageGenerationRequest(_Request):
    """``POST /v1/images/generations``.

    OpenAI fields: ``prompt``, ``model``, ``n``, ``size`` ("WxH" in pixels, or an Emu3 ratio "W:H" at the model's
    image area), ``response_format`` (only "b64_json"), ``stream`` (server-sent progress events), ``user``.
    Emu3 extras (defaults of ``run_generation_inference.py``): ``negative_prompt`` (the official one; "" guides
    against the prompt's last token), ``positive_prompt`` (the suffix appended to the prompt; "" for none),
    ``guidance_scale`` (3.0; 1 turns guidance off), ``seed``, ``top_k`` (2048; 1 is greedy decoding),
    ``top_p``, ``temperature``.
    """

    prompt: str = Field(min_length=1)
    model: Optional[str] = None
    n: int = Field(default=1, ge=1, le=16)
    size: Optional[str] = None
    response_format: Literal["b64_json"] = "b64_json"
    stream: bool = False
    user: Optional[str] = None
    negative_prompt: str = NEGATIVE_PROMPT
    positive_prompt: str = POSITIVE_PROMPT
    guidance_scale: float = Field(default=3.0, ge=1.0, le=100.0)
    seed: Optional[int] = Field(default=None, ge=0, lt=2**63)
    top_k: int = Field(default=2048, ge=0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)

    def sampling_params(self):
        if self.top_k == 1:
            return SamplingParams(do_sample=False)
        return SamplingParams(do_sample=True, top_k=self.top_k, top_p=self.top_p, temperature=self.temperature)


class ImageObject(BaseModel):
    b64_json: str
    revised_prompt: Optional[str] = None


class ImagesResponse(BaseModel):
    created: int = Field(default_factory=lambda: int(time.time()))
    data: List[ImageObject]


# ---------------------------------------------------------------------------------------------------------------
# chat


class ImageURL(_Request):
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class ImageContentPart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Union[TextContentPart, ImageContentPart]


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: Union[str, List[ContentPart]]
    name: Optional[str] = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``.

    OpenAI fields: ``messages`` (text, and images as ``image_url`` data URIs), ``model``, ``max_tokens`` (or
    ``max_completion_tokens``), ``temperature`` (0 is greedy decoding), ``top_p``, ``seed``, ``stream``,
    ``stream_options``, ``n`` (1 only), ``user``. Emu3 extra: ``top_k``.
    """

    messages: List[ChatMessage] = Field(min_length=1)
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0)
    seed: Optional[int] = Field(default=None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(default=1, ge=1, le=1)
    user: Optional[str] = None

    def token_budget(self):
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling_params(self):
        if self.temperature == 0.0 or self.top_k == 1:
            return SamplingParams(do_sample=False)
        return SamplingParams(
            do_sample=True,
            top_k=self.top_k,
            top_p=self.top_p if self.top_p < 1.0 else None,
            temperature=self.temperature,
        )


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: Optional[Literal["stop", "length"]] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatCompletionStreamChoice]
    usage: Optional[UsageInfo] = None
