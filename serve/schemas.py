"""The HTTP API's contract (the OpenAPI page at /docs is generated from these)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

SEED_MAX = 2 ** 63 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra='forbid')


class GenerateRequest(Strict):
    model: str | None = Field(None, description='Model id from /v1/models (default: the first).')
    class_label: int | None = Field(None, ge=0, description='Class index (class models).')
    class_name: str | None = Field(None, max_length=200, description='Class name (class models); random if no class is given.')
    prompt: str | None = Field(None, description='Text prompt (text models).')
    n: int = Field(1, ge=1, description='Number of images.')
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description='Seed of the first image; image i uses seed + i. Random if absent.')
    seed_b: int | None = Field(None, ge=0, le=SEED_MAX, description='Seed walk: the seed to walk towards. Image i\'s noise is '
                               'the spherical interpolation (slerp) of the noise of seed + i and seed_b + i at `mix`. Needs seed and mix.')
    mix: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                              description='Seed walk: 0 is the noise of seed, 1 that of seed_b, in between a slerp. Needs seed_b.')
    format: Literal['png', 'jpeg', 'webp'] = 'png'
    response: Literal['b64', 'binary'] = Field('b64', description='b64: JSON; binary: the image bytes (one) or a zip (several).')

    @model_validator(mode='after')
    def _seed_walk_is_complete(self):
        # A custom error type keeps pydantic's "Value error, " prefix out of the 422 message.
        if (self.seed_b is None) != (self.mix is None):
            raise PydanticCustomError('seed_walk', 'seed_b and mix go together: a seed walk needs both')
        if self.seed_b is not None and self.seed is None:
            raise PydanticCustomError('seed_walk', 'a seed walk (seed_b, mix) needs seed, the seed it starts from')
        return self


class GeneratedImage(BaseModel):
    seed: int
    b64: str
    format: str
    class_name: str | None = None
    prompt: str | None = None
    seed_b: int | None = None
    mix: float | None = None


class Timings(BaseModel):
    queue_ms: float
    generate_ms: float
    total_ms: float


class GenerateResponse(BaseModel):
    model: str
    backend: str
    request_id: str
    images: list[GeneratedImage]
    timings: Timings


class OpenAIImageRequest(Strict):
    prompt: str = Field(..., description='Text models: the prompt. Class models: a class name.')
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = Field(None, description='Must equal the model size, e.g. "32x32".')
    response_format: Literal['b64_json', 'url'] = 'b64_json'
    quality: str | None = None
    style: str | None = None
    user: str | None = None


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImageResponse(BaseModel):
    created: int
    data: list[OpenAIImage]


class Condition(BaseModel):
    kind: Literal['class', 'text', 'none']
    labels: list[str] = []


class ModelInfo(BaseModel):
    id: str
    resolution: int
    condition: Condition
    backend: str
    device: str
    precision: str
    warm: bool


class ModelList(BaseModel):
    object: str = 'list'
    data: list[ModelInfo]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
