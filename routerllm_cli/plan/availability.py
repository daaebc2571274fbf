"""Can the weights be had (token, gated access, the cache), and how many bytes a load reads."""

from __future__ import annotations

import threading
from pathlib import Path

from routerllm_cli import hub
from routerllm_cli.catalog import ModelRef
from routerllm_cli.config import ModelSpec
from routerllm_cli.hardware import Check, HardwareReport
from routerllm_cli.units import format_bytes


# --- model availability ----------------------------------------------------------------------------------------


def token_source(settings_token: str | None) -> str | None:
    """Where a Hugging Face token comes from (never the token itself)."""
    if settings_token:
        return "HF_TOKEN / hf_token setting"
    try:
        from huggingface_hub import get_token

        if get_token():
            return "huggingface_hub login (token file)"
    except Exception:  # noqa: BLE001
        pass
    return None


def _access_check(repo_id: str, token: str | None, timeout: float = 5.0) -> tuple[str, str]:
    """('ok'|'fail'|'warn', detail) from huggingface_hub.auth_check, bounded by `timeout` seconds: 'fail' when the
    hub answered no (gated, missing), 'warn' when it could not be asked (network, proxy, timeout)."""
    result: list[tuple[str, str]] = []

    def run() -> None:
        try:
            from huggingface_hub import auth_check

            auth_check(repo_id, token=token or None)
            result.append(("ok", f"access to {repo_id} confirmed"))
        except Exception as exc:  # noqa: BLE001
            name = type(exc).__name__
            if name == "GatedRepoError":
                result.append(("fail", f"{repo_id} is gated and this token has no access"))
            elif name == "RepositoryNotFoundError":
                result.append(("fail", f"{repo_id} does not exist or is private"))
            else:
                result.append(("warn", f"access not checked: {name}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else ("warn", f"access check timed out after {timeout:.0f} s")


def model_checks(ref: ModelRef, spec: ModelSpec, hw: HardwareReport, *, token: str | None,
                 checkpoint: int) -> list[Check]:
    entry = ref.entry
    checks: list[Check] = []
    strict = "warn" if hw.assumed else "fail"  # a what-if plan needs no weights here
    missing = ref.extra.get("unavailable")
    if missing is not None:
        return [Check("model", "fail", f"{missing.message} (planned from the catalog's shipped config)",
                      fix=missing.fix)]
    if ref.gguf_file:
        path = Path(ref.model_id) / ref.gguf_file
        where = f"embedded in the {entry.pip_name} package" if entry and entry.package else "local GGUF"
        checks.append(Check("model", "ok", f"{ref.name}: {where}, {path} ({format_bytes(checkpoint)})"))
        return checks
    if ref.kind == "local_dir":
        files = _weight_files(Path(ref.model_id))
        status = "ok" if files else strict
        checks.append(Check("model", status, f"local folder {ref.model_id}: "
                            + (f"{len(files)} weight files, {format_bytes(checkpoint)}" if files else "no weight files"),
                            fix=None if files else "point --model at a folder written by save_pretrained"))
        return checks
    repo = ref.model_id
    what = f"catalog {entry.name} = {repo} (config shipped)" if entry else f"hub {repo}"
    snap = hub.cached_snapshot(repo)
    cached = bool(snap and _weight_files(snap))
    offline = hub.offline()
    if cached:
        checks.append(Check("model", "ok", f"{what}: weights in the HF cache ({format_bytes(checkpoint)})"))
    elif offline:
        checks.append(Check("model", strict, f"{what}: weights not in the HF cache and HF_HUB_OFFLINE is set",
                            fix=f"hf download {repo} (with network, same HF_HOME), or unset HF_HUB_OFFLINE"))
    else:
        checks.append(Check("model", "info", f"{what}: not downloaded yet; the first load fetches "
                            f"{format_bytes(checkpoint)}"))
    gated = bool(entry and entry.gated)
    source = token_source(token)
    if gated or source:
        checks.append(Check("hf_token", "ok" if source else ("info" if cached else strict),
                            f"token configured ({source})" if source else f"{repo} is gated and no token is configured",
                            fix=None if source or cached else f"accept the license at https://huggingface.co/{repo}, "
                            "then `hf auth login` (or set HF_TOKEN)"))
    if offline:
        checks.append(Check("hub_access", "skip", "HF_HUB_OFFLINE=1: access not checked"))
    elif not cached:
        status, detail = _access_check(repo, token)
        answered_no = status == "fail"
        if status == "fail" and hw.assumed:
            status = "warn"
        # Only a hub that answered "gated" is a licence matter; a network error is not.
        if status == "ok":
            fix = None
        elif answered_no and "gated" in detail:
            fix = f"accept the license at https://huggingface.co/{repo} and `hf auth login`"
        elif answered_no:
            fix = f"check the repo id {repo} (or `hf auth login` if it is private)"
        else:
            fix = "check the network or proxy to the hub (HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to plan without it"
        checks.append(Check("hub_access", status, detail, fix=fix))  # type: ignore[arg-type]
    return checks


def checkpoint_bytes(ref: ModelRef, params: int) -> int:
    """Bytes a load reads: the files when they are here, else the published 16-bit size."""
    if ref.kind == "gguf" or ref.gguf_file:
        path = Path(ref.model_id) / str(ref.gguf_file)
        if path.is_file():
            return path.stat().st_size
    if ref.kind == "local_dir":
        files = _weight_files(Path(ref.model_id))
        if files:
            return sum(f.stat().st_size for f in files)
    snap = hub.cached_snapshot(ref.model_id) if ref.kind in ("catalog", "hub") else None
    if snap is not None:
        files = _weight_files(snap)
        if files:
            return sum(f.stat().st_size for f in files)
    return int(params * 2)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(folder.glob("*.bin"))
