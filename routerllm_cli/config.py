"""The one configuration model shared by every command, its sources and its validation rules.

Precedence, highest first: command-line flags > `ROUTERLLM_*` environment variables (nested with `__`, e.g.
`ROUTERLLM_BENCH__NUM_EXAMPLES=20`) > the YAML file (`--config` or `ROUTERLLM_CONFIG`) > defaults.
Only flags the user actually set are passed in, so an unset flag never hides the YAML. Unknown keys are errors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict,
                               YamlConfigSettingsSource)

from routerllm_cli.energy import DEFAULT_CPU_WATTS, DEFAULT_USD_PER_GPU_HOUR, WORLD_CO2_G_PER_KWH
from routerllm_cli.errors import ConfigError
from routerllm_cli.units import parse_size

Dtype = Literal["bfloat16", "float16", "float32", "auto"]
BYTES_PER_PARAM = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "auto": 2.0, "int8": 1.0, "nf4": 0.5}
MAX_SAMPLES = 1000  # samples per problem: pass@100 needs a few hundred; a billion would never finish
MAX_TIMEOUT_S = 3600.0
# NF4 stores 4 bits a weight plus one absmax per 64-weight block (fp32, or 8-bit with double quantization).
NF4_BYTES_PER_PARAM = 0.5 + 4 / 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EndpointSpec(_Strict):
    """A model served behind an OpenAI-compatible API (vLLM, SGLang, `transformers serve`): `bench` and `compare`
    send it the prompts instead of loading weights. `--model openai:URL#MODEL` fills `url` and `served_model`."""

    url: str  # the API base, e.g. http://10.0.0.1:8000/v1 (a bare host gets /v1)
    served_model: str  # the id the server lists in /v1/models
    api_key_env: str | None = None  # the NAME of the environment variable holding the key; the key is never stored
    concurrency: int = Field(8, ge=1, le=1024)  # requests in flight
    timeout_s: float = Field(600.0, gt=0)  # per request
    max_retries: int = Field(4, ge=0, le=20)  # on connection errors, timeouts, 429 and 5xx; backoff 1, 2, 4 ... s
    gpus: int | None = Field(None, ge=1)  # GPUs serving it: price_per_gpu_hour x gpus x wall time is its cost

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from routerllm_cli.endpoints import normalize_url

        return normalize_url(value)

    @field_validator("served_model")
    @classmethod
    def _served(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("endpoint.served_model is empty: give the name the server lists in /v1/models")
        return value.strip()

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, value: str | None) -> str | None:
        from routerllm_cli.endpoints import check_env_name

        return None if value is None else check_env_name(value)


# What an endpoint's server decides for itself: set on an endpoint, they would silently mean nothing.
_LOCAL_ONLY = ("model_id", "gguf_file", "max_memory", "use_4bit", "use_8bit", "offload_folder")


class ModelSpec(_Strict):
    """One model and how to place it (the setup guide's `models.large_llm` block), or an `endpoint` that
    serves it."""

    name: str = "smollm2_135m"
    model_id: str | None = None  # hub id or local path; defaults to the catalog's id for `name`
    gguf_file: str | None = None
    max_memory: dict[int | Literal["cpu", "disk"], int] = Field(default_factory=dict)
    use_4bit: bool = False
    use_8bit: bool = False
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    use_flash_attention: bool = False
    # PyTorch tries cuDNN first for masked SDPA on Hopper and newer; cuDNN builds a plan for every new
    # (batch, length) shape, which in decoding is every step. Off unless asked for.
    cudnn_attention: bool = False
    # auto: the catalog entry's dtype if it names one (float32 for the embedded GGUF models), else bfloat16
    # with GPUs and float32 without
    torch_dtype: Dtype = "auto"
    device_map: Literal["auto", "balanced", "sequential"] | dict[str, int | str] = "auto"
    offload_folder: Path | None = None
    # Accepted so the setup guide's configs keep loading; transformers 5 reads checkpoints shard by shard and
    # streams disk-placed weights in place, so there is nothing for it to switch (see offload_notes).
    offload_state_dict: bool | None = None
    offload_engine: Literal["routerllm", "accelerate"] = "routerllm"
    # host links that carry offloaded weights: 1 (the executing GPU's own), or "auto" (every GPU of the plan,
    # relaying over NVLink/P2P). 1 until a multi-GPU machine has measured the relayed path
    offload_links: Literal["auto"] | Annotated[int, Field(ge=1)] = 1
    pin_memory_budget: int | None = None  # bytes of pinned host memory the offload engine may use
    trust_remote_code: bool = False
    # Prices used by `compare`: per GPU-hour, or per million tokens for API-priced models.
    price_per_gpu_hour: float | None = None
    usd_per_mtok_in: float | None = None
    usd_per_mtok_out: float | None = None
    endpoint: EndpointSpec | None = None  # served elsewhere: nothing is planned or loaded here

    @model_validator(mode="before")
    @classmethod
    def _endpoint_name(cls, data: Any) -> Any:
        """`name: openai:URL#MODEL` (what `--model` passes) becomes an endpoint entry named after the model; an
        `endpoint` block already there keeps its other settings (key variable, concurrency, prices)."""
        from routerllm_cli.endpoints import display_name, is_endpoint_model, parse_model_url

        if not isinstance(data, dict) or not is_endpoint_model(data.get("name")):
            return data
        url, served = parse_model_url(data["name"])
        block = data.get("endpoint")
        block = block.model_dump() if isinstance(block, BaseModel) else dict(block or {})
        return {**data, "name": display_name(served), "endpoint": {**block, "url": url, "served_model": served}}

    @field_validator("max_memory", mode="before")
    @classmethod
    def _parse_max_memory(cls, value: Any) -> dict[int | str, int]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError('max_memory must be a mapping like {0: "70GB", 1: "70GB", cpu: "200GB"}')
        out: dict[int | str, int] = {}
        for key, size in value.items():
            k = str(key).strip().lower()
            if k.isdigit():
                dev: int | str = int(k)
            elif k in ("cpu", "disk"):
                dev = k
            else:
                raise ValueError(f"max_memory key {key!r} is not a GPU ordinal (0, 1, ...), 'cpu' or 'disk'")
            try:
                out[dev] = parse_size(size, what=f"max_memory[{key}]")
            except ConfigError as exc:
                raise ValueError(exc.one_line()) from None
        return out

    @field_validator("offload_links", mode="before")
    @classmethod
    def _links(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        if isinstance(value, str) and value.strip().isdigit() and int(value) >= 1:
            return int(value)
        raise ValueError(f"offload_links is {value!r}: use auto (every GPU's host link) or a number of links >= 1")

    @field_validator("pin_memory_budget", mode="before")
    @classmethod
    def _parse_pin(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value, what="pin_memory_budget")

    @model_validator(mode="after")
    def _rules(self) -> "ModelSpec":
        if self.use_4bit and self.use_8bit:
            raise ValueError("use_4bit and use_8bit are exclusive: set only one of them to true")
        if self.use_flash_attention and self.torch_dtype == "float32":
            raise ValueError("use_flash_attention needs fp16/bf16: set torch_dtype: bfloat16 (or use_flash_attention: false)")
        uses_disk = "disk" in self.max_memory or (
            isinstance(self.device_map, dict) and "disk" in {str(v) for v in self.device_map.values()}
        )
        if uses_disk and self.offload_folder is None:
            raise ValueError("disk offload needs a folder: set offload_folder: ./offload")
        if self.endpoint is not None:
            local = [k for k in _LOCAL_ONLY if getattr(self, k) not in (None, False, {})]
            if local:
                raise ValueError(f"{', '.join(local)} cannot apply to an endpoint (its server loads and places "
                                 "the model): remove it, or drop the endpoint to load the model here")
        return self

    @property
    def quantization(self) -> Literal["none", "4bit", "8bit"]:
        return "4bit" if self.use_4bit else "8bit" if self.use_8bit else "none"

    def resolved_dtype(self, *, gpus: bool, catalog_dtype: str | None = None) -> str:
        """The compute dtype, decided here only: `torch_dtype` as set; for `auto`, the catalog entry's dtype if it
        names one (float32 for the embedded GGUF models), else bfloat16 with GPUs and float32 without."""
        if self.torch_dtype != "auto":
            return self.torch_dtype
        return catalog_dtype or ("bfloat16" if gpus else "float32")

    def weight_format(self, *, gpus: bool, catalog_dtype: str | None = None) -> str:
        """The storage format of most weights: 'nf4', 'int8' or the compute dtype."""
        return "nf4" if self.use_4bit else "int8" if self.use_8bit else self.resolved_dtype(
            gpus=gpus, catalog_dtype=catalog_dtype)

    def offload_notes(self) -> list[str]:
        """What the chosen placement means for the operator (shown, never an error)."""
        notes = []
        if self.offload_state_dict is not None:
            notes.append("offload_state_dict is ignored: transformers 5 already loads shard by shard and streams "
                         "disk-offloaded weights in place; remove it from the config")
        if (self.use_4bit or self.use_8bit) and ({"cpu", "disk"} & set(self.max_memory)):
            notes.append(
                "with quantization and CPU/disk entries, stock transformers keeps offloaded layers in 16-bit "
                "(about 4x their NF4 size in RAM and on the bus); routerllm quantizes 4-bit ones while loading and "
                "its offload engine keeps them packed"
                if self.offload_engine == "routerllm"
                else "with quantization and CPU/disk entries, offloaded layers stay unquantized in 16-bit: "
                "about 4x (4-bit) or 2x (8-bit) more host memory and bus traffic than the GPU layers"
            )
        return notes


class RouterSpec(_Strict):
    """The router's pool of smaller models, cheapest first, and its policy."""

    policy: Literal["heuristic", "cascade", "random", "oracle"] = "cascade"
    # HumanEval's prompt difficulty has median ~0.24 (router.difficulty): one cut there splits two models evenly.
    thresholds: list[float] = Field(default_factory=lambda: [0.24])
    seed: int = 0
    pool: list[ModelSpec] = Field(default_factory=lambda: [ModelSpec(name="smollm2_135m"), ModelSpec(name="gemma3_270m")])

    @model_validator(mode="after")
    def _thresholds(self) -> "RouterSpec":
        if self.policy == "heuristic" and len(self.thresholds) != max(len(self.pool) - 1, 0):
            raise ValueError(
                f"router.thresholds needs {len(self.pool) - 1} values for a pool of {len(self.pool)} models"
            )
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds) or self.thresholds != sorted(self.thresholds):
            raise ValueError("router.thresholds must be increasing numbers between 0 and 1")
        return self


class ModelsSection(_Strict):
    large_llm: ModelSpec = Field(default_factory=ModelSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)


class BenchSpec(_Strict):
    num_examples: int = Field(164, ge=1, le=164)
    task_ids: list[str] | None = None
    batch_size: int | Literal["auto"] = "auto"
    # continuous: finished rows are refilled with new problems (auto: on a GPU); static: fixed batches
    batching: Literal["auto", "static", "continuous"] = "auto"
    # compiled: a static KV cache and the decode step captured as CUDA graphs (auto: when every layer sits on one
    # GPU); eager: generate with a dynamic cache. Offloaded models always decode through the offload engine.
    decode: Literal["auto", "eager", "compiled"] = "auto"
    # on: compile that static step with each decoder layer fused by inductor (auto: captured models of >= 4 GB)
    decode_fuse: Literal["auto", "on", "off"] = "auto"
    max_new_tokens: int = Field(384, ge=1)
    max_prompt_tokens: int = Field(1024, ge=16)
    prompt_style: Literal["auto", "base", "instruct"] = "auto"
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    samples: int = 1
    seed: int = 0
    skip_execution: bool = False
    timeout_s: float = 3.0
    workers: int | None = Field(None, ge=1)
    # bwrap: bubblewrap; builtin: routerllm's own namespaces + seccomp; auto: bubblewrap where it can run
    sandbox: Literal["auto", "bwrap", "builtin"] = "auto"
    results_dir: Path = Path("results")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"batch_size must be a positive number of prompts or auto, not {value} - "
                             "fix: set batch_size: auto (or e.g. 8)")
        return value

    @field_validator("samples")
    @classmethod
    def _samples(cls, value: int) -> int:
        if not 1 <= value <= MAX_SAMPLES:
            raise ValueError(f"samples must be between 1 and {MAX_SAMPLES} per problem, not {value} - "
                             "fix: use samples: 1 for pass@1, or up to 200 for pass@100")
        return value

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout_s must be a finite number of seconds above 0 and at most {MAX_TIMEOUT_S:.0f}, "
                             f"not {value} - fix: set timeout_s: 3.0 (what HumanEval uses)")
        return value

    @model_validator(mode="after")
    def _sampling(self) -> "BenchSpec":
        if self.samples > 1 and self.temperature == 0.0:
            raise ValueError("samples > 1 needs sampling: set temperature (e.g. 0.8) for pass@k")
        return self


class EnergySpec(_Strict):
    # Defaults and their sources live in energy.py (world-average intensity; p4d.24xlarge price per GPU-hour).
    carbon_intensity_g_per_kwh: float = Field(WORLD_CO2_G_PER_KWH, ge=0)
    price_per_gpu_hour: float = Field(DEFAULT_USD_PER_GPU_HOUR, ge=0)
    cpu_watts: float = Field(DEFAULT_CPU_WATTS, ge=0)  # used only when RAPL is unreadable, and labelled an estimate
    gpu_count: int | None = Field(None, ge=0)


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_settings`."""

    model_config = SettingsConfigDict(env_prefix="ROUTERLLM_", env_nested_delimiter="__", extra="forbid",
                                      validate_assignment=True)

    models: ModelsSection = Field(default_factory=ModelsSection)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    energy: EnergySpec = Field(default_factory=EnergySpec)
    offload_folder: Path = Path("offload")  # the folder `offload clean` manages when no model names one
    logs_dir: Path = Path("logs")  # where `load` and `preflight` write their log files (a bench run logs in its folder)
    hf_token: str | None = Field(default=None, repr=False, exclude=True)
    # Values below the YAML (a resumed run's recorded settings); set on a subclass by load_settings(base=...).
    _base_values: ClassVar[dict[str, Any] | None] = None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = settings_cls.model_config.get("yaml_file")
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        base = getattr(settings_cls, "_base_values", None)
        if base:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=base))
        return tuple(sources)

    @property
    def large(self) -> ModelSpec:
        return self.models.large_llm

    def managed_offload_folder(self) -> Path:
        return Path(self.large.offload_folder or self.offload_folder)


def _close_key(loc: tuple) -> str | None:
    """The known key nearest to the unknown last part of `loc` (a typo's likely meaning), walking the models."""
    import difflib
    import typing

    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        model = None
        if field is not None:  # the BaseModel inside e.g. ModelSpec, list[ModelSpec] or ModelSpec | None
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    model = t
                    break
                stack.extend(typing.get_args(t))
    if model is None:
        return None
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return ".".join([*(str(p) for p in loc[:-1]), close[0]]) if close else None


def _friendly(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("int", "literal['cpu','disk']"))
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        close = _close_key(tuple(err.get("loc", ())))
        if close:
            return ConfigError(f"{source}: unknown key {where!r} (did you mean {close!r}?)",
                               fix=f"rename it to {close.rsplit('.', 1)[-1]}")
        return ConfigError(f"{source}: unknown key {where!r}", fix="remove it or fix its spelling (see configs/production_config.yaml)")
    if " - fix: " in msg:
        return ConfigError(f"{source}: {where}: {msg}")
    return ConfigError(f"{source}: {where}: {msg}" if where else f"{source}: {msg}",
                       fix=None if ":" in msg else "see configs/production_config.yaml for the expected shape")


def load_settings(config: Path | str | None = None, overrides: dict[str, Any] | None = None, *,
                  base: dict[str, Any] | None = None) -> Settings:
    """Build the settings from defaults, YAML, env and the flags in `overrides` (nested dicts of set flags only).
    `base` (nested dicts, e.g. a run's recorded settings) sits between the defaults and the YAML."""
    path = config or os.environ.get("ROUTERLLM_CONFIG")
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} not found", fix="pass an existing YAML file to --config, e.g. configs/laptop_cpu.yaml")
        _check_yaml(path)
    cls = (type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path},
                                          "_base_values": base}) if path or base else Settings)
    source = str(path) if path else "configuration"
    env = {k: os.environ.pop(k) for k in ("ROUTERLLM_CONFIG", "ROUTERLLM_DEBUG") if k in os.environ}
    try:
        settings = cls(**(overrides or {}))
    except ValidationError as exc:
        raise _friendly(exc, source) from None
    finally:
        os.environ.update(env)
    if settings.hf_token is None:
        settings.hf_token = os.environ.get("HF_TOKEN") or None
    from routerllm_cli.fits import validate_budgets

    validate_budgets(settings)
    return settings


def _check_yaml(path: Path) -> None:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (it is not UTF-8)",
                          fix="pass a YAML config to --config, e.g. configs/laptop_cpu.yaml") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})", fix="pass a readable YAML file to --config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}", fix="fix the indentation or quoting there") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping", fix="start the file with keys like models:, bench:")
