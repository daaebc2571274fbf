"""The 4-bit rule, derived from the numbers: a model whose weights cannot fit the declared budgets at the chosen
precision, but would in 4-bit, is a configuration error that names `use_4bit: true` (the setup guide's "4-bit is
mandatory for 405B on 2-3 GPUs", without hard-coding it)."""

from __future__ import annotations

from routerllm_cli.config import BYTES_PER_PARAM, NF4_BYTES_PER_PARAM, ModelSpec, Settings
from routerllm_cli.errors import ConfigError
from routerllm_cli.units import format_bytes


def validate_budgets(settings: Settings) -> None:
    """Apply the 4-bit rule to every catalog model whose size is known offline."""
    from routerllm_cli.catalog import CATALOG

    for spec in [settings.large, *settings.models.router.pool]:
        if spec.endpoint is not None:
            continue
        entry = CATALOG.get(spec.name.lower().replace("-", "_"))
        if entry is not None:
            check_fits(spec, entry.params, catalog_dtype=entry.dtype)



def check_fits(spec: ModelSpec, params: float, catalog_dtype: str | None = None) -> list[str]:
    """The 4-bit rule, derived: if the weights cannot fit the declared budgets at the chosen precision but would
    in 4-bit, that is a config error naming `use_4bit: true`. Returns notes; raises ConfigError.
    Only a complete declaration counts: without a `cpu` (or `disk`) entry the planner fills host memory from the
    hardware, and the plan's verdict, not the config, says whether the model fits. 4-bit runs on bitsandbytes' CUDA
    kernels, so a declaration that names no GPU is never told to use it (the plan's fixes say what would fit)."""
    if not spec.max_memory or spec.use_4bit or not ({"cpu", "disk"} & set(spec.max_memory)):
        return spec.offload_notes()
    gpus = any(isinstance(k, int) for k in spec.max_memory)
    if not gpus:
        return spec.offload_notes()
    total = sum(spec.max_memory.values())
    fmt = spec.weight_format(gpus=True, catalog_dtype=catalog_dtype)
    need = params * BYTES_PER_PARAM[fmt]
    need_4bit = params * NF4_BYTES_PER_PARAM
    if need > total and need_4bit <= total:
        raise ConfigError(
            f"{spec.name}: {format_bytes(need)} of {fmt} weights cannot fit the declared max_memory "
            f"({format_bytes(total)} in all), but {format_bytes(need_4bit)} in 4-bit would",
            fix="set use_4bit: true",
        )
    return spec.offload_notes()
