"""The Hugging Face environment as routerllm reads it, checked against what huggingface_hub and datasets themselves
read from the same environment (each in a fresh interpreter, since they read it once at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from routerllm_cli import hub

HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "XDG_CACHE_HOME",
           "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def libraries_say(env: dict[str, str], *, datasets: bool = False) -> dict:
    code = ("import json, huggingface_hub.constants as c\n"
            "out = {'cache': c.HF_HUB_CACHE, 'offline': c.HF_HUB_OFFLINE}\n")
    if datasets:
        code += ("import datasets.config as d\n"
                 "out.update(datasets_cache=str(d.HF_DATASETS_CACHE), datasets_offline=d.HF_DATASETS_OFFLINE)\n")
    code += "print(json.dumps(out))"
    clean = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    proc = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def ours(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict:
    for key in HF_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {"cache": str(hub.cache_dir()), "offline": hub.offline(), "datasets_cache": str(hub.datasets_cache_dir()),
            "datasets_offline": hub.datasets_offline()}


@pytest.mark.parametrize("env", [
    {},
    {"HF_HOME": "/data/hf"},
    {"XDG_CACHE_HOME": "/xdg"},
    {"HF_HOME": "/data/hf", "HF_HUB_CACHE": "/fast/hub"},
    {"HUGGINGFACE_HUB_CACHE": "/old/hub"},
    {"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "yes"}, {"HF_HUB_OFFLINE": "0"}, {"HF_HUB_OFFLINE": "false"},
    {"TRANSFORMERS_OFFLINE": "1"},
], ids=lambda env: ",".join(f"{k}={v}" for k, v in env.items()) or "unset")
def test_cache_and_offline_as_huggingface_hub_reads_them(env, monkeypatch):
    theirs = libraries_say(env)
    mine = ours(env, monkeypatch)
    assert mine["cache"] == theirs["cache"] and mine["offline"] == theirs["offline"]


def test_datasets_offline_and_cache_as_datasets_reads_them(monkeypatch):
    for env in ({"HF_HUB_OFFLINE": "1", "HF_HOME": "/data/hf"},  # the hub's offline flag carries over
                {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "0", "HF_DATASETS_CACHE": "/ds"}):  # its own wins
        theirs = libraries_say(env, datasets=True)
        mine = ours(env, monkeypatch)
        assert (mine["datasets_offline"], mine["datasets_cache"]) == (theirs["datasets_offline"],
                                                                      theirs["datasets_cache"]), env


def test_cached_snapshot_follows_refs_main(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    repo = tmp_path / "hub" / "models--org--tiny"
    assert hub.repo_cache("org/tiny") == repo and hub.cached_snapshot("org/tiny") is None
    for rev in ("aaa", "bbb"):
        (repo / "snapshots" / rev).mkdir(parents=True)
    assert hub.cached_snapshot("org/tiny") == repo / "snapshots" / "bbb"  # no ref: the newest
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa\n")
    assert hub.cached_snapshot("org/tiny") == repo / "snapshots" / "aaa"
    assert hub.cached_snapshot("not-a-repo-id") is None
    assert isinstance(hub.hf_home(), Path)
