"""Failures a user can act on, as one-line errors that name the fix: the one table of known third-party failures.

The loader asks with its plan (the message then names the GPU, its budget and the model); the CLI's last line of
defence asks without one, for a failure anywhere else (generation, compare), and gets the same fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from routerllm_cli.errors import ConfigError, RouterLLMError, RunFailed
from routerllm_cli.units import format_bytes
from routerllm_cli import hub
from routerllm_cli.loading.placement import gpu_indices

if TYPE_CHECKING:
    from routerllm_cli.plan import DevicePlan


# ------------------------------------------------------------------------------------------- failures
def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError):
        return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def translate_load_error(exc: BaseException, plan: "DevicePlan | None" = None,
                         offload_folder: Path | None = None) -> RouterLLMError | None:
    """Map a known failure to a one-line error with the fix, or None when it is not a known one. With the plan of
    the load that failed, the message names the device, its budget and the model."""
    model_id = plan.model.source if plan is not None else None
    for e in _chain(exc):
        name = type(e).__name__
        text = str(e)
        first = (text.splitlines() or [name])[0][:200]
        if (name == "OutOfMemoryError" or "CUDA out of memory" in text) and plan is None:
            return RunFailed(f"CUDA out of memory: {first}",
                             fix="lower that GPU's max_memory, enable 4-bit (--4bit), or run `routerllm preflight` "
                             "to see the plan")
        if name == "OutOfMemoryError" or "CUDA out of memory" in text:
            m = re.search(r"GPU (\d+) has a total capacity", text) or re.search(r"cuda:(\d+)", text)
            gpus = gpu_indices(plan.device_map)
            dev = int(m.group(1)) if m else (gpus[0] if len(gpus) == 1 else None)
            if dev is not None:
                alloc = plan.devices.get(str(dev))
                # the user's budget for that GPU (what --max-memory sets), else what accelerate was left with
                budget = (alloc.budget_bytes if alloc is not None and alloc.budget_bytes else None) or plan.max_memory.get(dev)
                planned = f"; the plan put {format_bytes(alloc.weight_bytes)} of weights there" if alloc else ""
                lower = f"{max(int((budget or 0) * 0.85) // 10**9, 1)}GB"
                return RunFailed(
                    f"CUDA out of memory while loading onto GPU {dev} (its max_memory budget is "
                    f"{format_bytes(budget) if budget else 'unset'}{planned})",
                    fix=f"lower that GPU's budget (e.g. --max-memory {dev}={lower}), enable 4-bit (--4bit), "
                    "or free the GPU (see `routerllm preflight`)",
                )
            return RunFailed("CUDA out of memory while loading",
                             fix="lower the GPUs' max_memory, enable 4-bit (--4bit), or free the GPUs (see `routerllm preflight`)")
        if name == "GatedRepoError" or "gated repo" in text.lower() or "is a gated repository" in text:
            return ConfigError(
                f"{model_id} is a gated repository and this machine has no access token for it" if model_id
                else first,
                fix=f"accept the license at https://huggingface.co/{model_id or '<model id>'}, then run "
                "`hf auth login` (or set HF_TOKEN)",
            )
        if name == "RepositoryNotFoundError" or "is not a valid model identifier" in text:
            return ConfigError(
                f"{model_id} was not found on the Hugging Face hub (or it is private)" if model_id else first,
                fix="check the id, or log in with `hf auth login` / set HF_TOKEN if it is private",
            )
        if name == "LocalEntryNotFoundError" or "couldn't connect" in text.lower() or "offline mode" in text.lower() \
                or (hub.offline() and "offline" in text.lower()):
            return ConfigError(
                f"{model_id or 'the model'} is not complete in the Hugging Face cache ({hub.cache_dir()}) and the "
                "hub cannot be reached",
                fix=f"download it with network access (`hf download {model_id or '<model id>'}`), point HF_HOME at "
                "the cache that holds it, or unset HF_HUB_OFFLINE",
            )
        if isinstance(e, OSError) and e.errno == 28:
            filename = getattr(e, "filename", None)
            if offload_folder and (not filename or _inside(Path(filename), offload_folder)):
                return RunFailed(
                    f"disk full while writing under the offload folder {offload_folder} ({filename or 'offloaded weights'})",
                    fix="free space there, or point offload_folder at a larger disk (`routerllm preflight` shows the bytes needed)",
                )
            return RunFailed(f"disk full {'while loading ' if plan is not None else ''}(writing {filename or 'a file'})",
                             fix="free space on that disk, or point the setting that names that folder at a larger "
                             "disk (bench.results_dir for runs, HF_HOME for downloads)")
        if "bitsandbytes" in text.lower() and ("cuda" in text.lower() or "gpu" in text.lower()):
            return RunFailed(f"bitsandbytes failed: {first}",
                             fix="install a bitsandbytes build matching your CUDA, or drop --4bit/--8bit")
    return None
