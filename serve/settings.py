"""Server settings: SIDA_* environment variables, a TOML/YAML/JSON file (SIDA_CONFIG), or CLI flags."""

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serve.runtimes import BACKEND_HELP
from sida.cli_options import COMPILE_MODES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix='SIDA_', extra='forbid')

    bundles: list[str] = Field(default_factory=list, description='Bundle directories to serve (the first is the default model).')
    backend: str = Field('auto', description=BACKEND_HELP)
    triton_url: str | None = Field(None, description='Triton server for the triton backend, e.g. http://127.0.0.1:8000')
    compile_mode: Literal[COMPILE_MODES] | None = Field(
        None, description='torch.compile mode of the compile backend; none: the options of the bundle\'s `sida export '
        'compile` (its compiled code is loaded), else reduce-overhead with channels-last on CUDA (CUDA graphs, no kernel tuning), '
        'default on CPU. max-autotune also tunes kernels: minutes at every cold start unless exported ahead.')
    host: str = '127.0.0.1'
    port: int = 8000
    max_batch: int = Field(32, ge=1, description='Images per backend call.')
    max_delay_ms: float = Field(0.0, ge=0, description='How long the first request waits for company; 0: no waiting, '
                                'a busy server batches what queued while the previous batch ran.')
    pipeline_depth: int = Field(2, ge=1, le=4, description='Batches queued on a GPU at once (torch and compile '
                                'backends): the host prepares the next batch while one runs. 1: one at a time.')
    max_queue_images: int = Field(256, ge=1, description='Images waiting before new requests get 429.')
    request_timeout_s: float = Field(60.0, gt=0, description='Backstop for a batch that never comes back (a hung '
                                     'backend): 504 after this long. Deadlines decide everything else, so it may not be '
                                     'shorter than max_deadline_ms.')
    # Deadlines and the HTTP server's limits on slow or many clients (docs/serving.md, "Overload and slow clients").
    max_loop_lag_ms: float = Field(40, ge=0, description='Generation requests get 429 before their body is read while the '
                                   'event loop runs this many milliseconds late (an overloaded process: serve/load_shedding.py); '
                                   '0: never.')
    deadline_ms: float = Field(10_000, gt=0, description='Default request deadline; a request may set its own with the '
                               'X-Request-Deadline-Ms header. Work that cannot finish in time gets 429 at once.')
    max_deadline_ms: float = Field(60_000, gt=0, description='Cap on a request\'s X-Request-Deadline-Ms.')
    timeout_keep_alive_s: float = Field(5, gt=0, description='Close an idle keep-alive connection after this long.')
    limit_concurrency: int = Field(2048, ge=1, description='Open connections plus running requests before new '
                                   'requests get 503 (uvicorn); keep it under the file-descriptor limit.')
    backlog: int = Field(2048, ge=1, description='Connections waiting to be accepted by the kernel.')
    h11_max_incomplete_event_size: int = Field(16 * 1024, ge=1024, description='Bytes of request line plus headers '
                                               'before 400 (h11).')
    http_parser: Literal['h11', 'httptools'] = Field('h11', description='uvicorn\'s HTTP parser. h11 bounds unfinished '
                                                     'headers itself; httptools (C) parses faster, for a server behind a '
                                                     'proxy that bounds them (deploy/nginx.conf).')
    workers: int = Field(1, ge=1, description='Server processes on the port, each with its own models and batcher.')
    devices: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description='Devices every model is served on, one replica (backend and batcher) each: '
        'cuda:0,cuda:1,... or all (every GPU here); a request goes to the replica that would finish it first. Under '
        'workers > 1 the devices are dealt out to the processes (each pinned to its own). Empty: one replica where the '
        'backend chooses.')
    max_n: int = Field(16, ge=1, description='Images per request.')
    max_prompt_chars: int = Field(500, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    api_keys: list[str] = Field(default_factory=list, description='Bearer keys; empty = no authentication.')
    api_keys_file: str | None = Field(None, description='File with one API key per line.')
    allow_unauthenticated: bool = Field(False, description='Serve without API keys on a non-loopback host (an explicit choice).')
    rate_limit_per_minute: int = Field(0, ge=0, description='Requests per minute per key (0 = unlimited).')
    warmup: bool = True
    ui: bool = Field(True, description='Serve the Gradio demo at /ui (needs the [ui] extra: gradio).')

    @field_validator('devices', mode='before')
    @classmethod
    def _device_list(cls, value):
        """SIDA_DEVICES as the CLI takes it (cuda:0,cuda:1 or all) or as a JSON list."""
        if isinstance(value, str):
            return json.loads(value) if value.strip().startswith('[') else [v for v in value.split(',') if v.strip()]
        return value

    @model_validator(mode='after')
    def _backstop_after_deadlines(self):
        if self.request_timeout_s * 1000 < self.max_deadline_ms:
            raise ValueError(f'request_timeout_s ({self.request_timeout_s:g} s) is shorter than max_deadline_ms '
                             f'({self.max_deadline_ms:g} ms): requests would time out before their deadline; raise it or '
                             'lower max_deadline_ms')
        return self

    def keys(self):
        keys = set(self.api_keys)
        if self.api_keys_file:
            keys |= {line.strip() for line in Path(self.api_keys_file).read_text().splitlines() if line.strip()}
        return keys


def load_settings(path=None, **overrides):
    """Settings from env, then a config file (TOML, YAML or JSON), then explicit overrides (CLI flags)."""
    data = {}
    if path:
        path = Path(path)
        text = path.read_text()
        if path.suffix == '.toml':
            import tomllib
            data = tomllib.loads(text)
        elif path.suffix in ('.yaml', '.yml'):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            import json
            data = json.loads(text)
    return Settings(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
