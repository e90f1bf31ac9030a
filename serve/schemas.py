"""The HTTP API's contract (the OpenAPI page at /docs is generated from these)."""

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

SEED_MAX = 2 ** 63 - 1
CLASS_NAME_MAX = 200        # characters of a class name (on /v1/generate and as the OpenAI prompt of a class model)


def _unicode(text):
    """JSON can carry lone surrogates ("\\ud800"); no tokenizer or image metadata can: refuse them here (400)."""
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        raise PydanticCustomError('string_unicode', 'not valid Unicode text') from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class Strict(BaseModel):
    model_config = ConfigDict(extra='forbid')


class GenerateRequest(Strict):
    model: Text | None = Field(None, description='Model id from /v1/models (default: the first).')
    class_label: int | None = Field(None, ge=0, description='Class index (class models).')
    class_name: Text | None = Field(None, max_length=CLASS_NAME_MAX, description='Class name (class models); random if no class is given.')
    prompt: Text | None = Field(None, description='Text prompt (text models).')
    n: int = Field(1, ge=1, description='Number of images.')
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description='Seed of the first image; image i uses seed + i. Random if absent.')
    seed_b: int | None = Field(None, ge=0, le=SEED_MAX, description='Seed walk: the seed to walk towards. Image i\'s noise is '
                               'the spherical interpolation (slerp) of the noise of seed + i and seed_b + i at `mix`. Needs seed and mix.')
    mix: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                              description='Seed walk: 0 is the noise of seed, 1 that of seed_b, in between a slerp. Needs seed_b.')
    format: Literal['png', 'jpeg', 'webp', 'npy'] = Field('png', description='npy: the uint8 pixels (height, width, 3) in '
                                                           'NumPy\'s .npy format, bit-exact and with no encoding cost.')
    response: Literal['b64', 'binary'] = Field('b64', description='b64: JSON; binary: the image bytes (one) or a zip (several); '
                                               'with format npy, one uint8 array (n, height, width, 3), in the order of X-Seeds.')

    @model_validator(mode='after')
    def _seed_walk_is_complete(self):
        # A custom error type keeps pydantic's "Value error, " prefix out of the 422 message.
        if (self.seed_b is None) != (self.mix is None):
            raise PydanticCustomError('seed_walk', 'seed_b and mix go together: a seed walk needs both')
        if self.seed_b is not None and self.seed is None:
            raise PydanticCustomError('seed_walk', 'a seed walk (seed_b, mix) needs seed, the seed it starts from')
        return self

    @model_validator(mode='after')
    def _one_class(self):
        if self.class_label is not None and self.class_name is not None:
            raise PydanticCustomError('one_class', 'give one of class_label and class_name, not both')
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
    prompt: Text = Field(..., description='Text models: the prompt. Class models: a class name.')
    model: Text | None = None
    n: int = Field(1, ge=1)
    size: Text | None = Field(None, description='Must equal the model size, e.g. "32x32".')
    response_format: Literal['b64_json', 'url'] = 'b64_json'
    output_format: Literal['png', 'jpeg', 'webp'] = 'png'
    output_compression: int | None = Field(None, ge=0, le=100, description='jpeg and webp: the encoder quality, 0-100 '
                                           '(100: the least loss). Default 95.')
    quality: str | None = None
    style: str | None = None
    user: str | None = None


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImageResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    output_format: str
    size: str


class Condition(BaseModel):
    kind: Literal['class', 'text', 'none']
    labels: list[str] = []


class ModelInfo(BaseModel):
    id: str
    object: Literal['model'] = 'model'
    created: int = Field(description='When the bundle was written (Unix seconds).')
    owned_by: str = 'sida'
    resolution: int
    condition: Condition
    backend: str
    device: str = Field(description='The first replica\'s device.')
    precision: str
    warm: bool
    devices: list[str] = Field(description='Every replica\'s device (sida serve --devices); one unless asked for more.')
    serving_on: list[str] = Field(description='The replicas warm and taking requests now (the others are warming).')


class ModelList(BaseModel):
    object: str = 'list'
    data: list[ModelInfo]


class ErrorBody(BaseModel):
    code: str = Field(description="sida's machine name for the error, e.g. model_not_found.")
    message: str
    type: str = Field(description='OpenAI\'s error type: invalid_request_error, authentication_error, not_found_error, '
                      'rate_limit_error or server_error.')
    param: str | None = Field(None, description='The request field at fault, when there is one.')


class ErrorResponse(BaseModel):
    error: ErrorBody
