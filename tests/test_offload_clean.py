"""`routerllm offload clean` deletes only inside a folder routerllm made, and refuses every dangerous case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from routerllm_cli.cli.app import app
from routerllm_cli.offload.folder import LOCK_NAME, MARKER_NAME, OffloadLock

runner = CliRunner()


@pytest.fixture
def offload(isolated_env: Path) -> Path:
    """The offload folder as a load leaves it: made (and marked) by routerllm's lock, then filled."""
    folder = isolated_env / "offload"
    with OffloadLock(folder):
        (folder / "sub").mkdir(parents=True)
        (folder / "model.layers.10.weight.dat").write_bytes(b"x" * 1000)
        (folder / "sub" / "index.json").write_text("{}")
    return folder


def clean(*args: str, input: str | None = None):
    return runner.invoke(app, ["offload", "clean", *args], input=input)


def test_dry_run_lists_files_and_sizes_and_deletes_nothing(offload):
    result = clean("--dry-run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["files"] == 2 and data["bytes"] == 1002 and data["deleted"] is False
    assert {(Path(e["path"]).name, e["bytes"]) for e in data["entries"]} == {("model.layers.10.weight.dat", 1000),
                                                                             ("index.json", 2)}
    human = clean("--dry-run")
    assert human.exit_code == 0 and "1.0 KB  " + str(offload / "model.layers.10.weight.dat") in human.stdout
    assert (offload / "model.layers.10.weight.dat").exists()


def test_yes_deletes_contents_keeps_the_folder_and_its_marker(offload):
    result = clean("--yes")
    assert result.exit_code == 0, result.output
    assert offload.is_dir() and [p.name for p in offload.iterdir()] == [MARKER_NAME]
    assert clean("--yes").exit_code == 0  # still routerllm's folder: cleanable again


def _refused_and_kept(result, folder: Path, keep: list[Path], needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert "refusing" in result.stderr and needle in result.stderr and "fix:" in result.stderr
    assert all(p.exists() for p in keep)


def test_refuses_a_folder_routerllm_did_not_make(isolated_env, monkeypatch):
    mine = isolated_env / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", str(mine))
    for args in (["--yes"], ["--dry-run"]):
        _refused_and_kept(clean(*args), mine, [mine / "thesis.tex"], "routerllm did not make it")
    OffloadLock(mine).acquire().release()  # a load that locks a folder of someone else's files does not adopt it
    _refused_and_kept(clean("--yes"), mine, [mine / "thesis.tex"], "routerllm did not make it")


def test_a_copied_marker_does_not_count(offload, isolated_env, monkeypatch):
    copy = isolated_env / "copy"
    copy.mkdir()
    (copy / MARKER_NAME).write_bytes((offload / MARKER_NAME).read_bytes())
    (copy / "keep.bin").write_text("x")
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", str(copy))
    _refused_and_kept(clean("--yes"), copy, [copy / "keep.bin"], "routerllm did not make it")


def test_refuses_the_current_folder_and_its_ancestors(offload, isolated_env, monkeypatch):
    monkeypatch.delenv("ROUTERLLM_OFFLOAD_FOLDER")  # so the config's value is the one used
    (isolated_env / "config.yaml").write_text("offload_folder: .\n")
    result = clean("--config", "config.yaml", "--yes")
    _refused_and_kept(result, isolated_env, [isolated_env / "config.yaml", offload], "current folder")
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", str(isolated_env.parent))
    _refused_and_kept(clean("--yes"), isolated_env, [isolated_env / "config.yaml"], "current folder")


@pytest.mark.parametrize("system", ["/usr", "/etc", "/usr/share", "/var/lib", "/boot"])
def test_refuses_system_folders_even_for_a_dry_run(offload, system, monkeypatch):
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", system)
    for args in (["--dry-run"], ["--dry-run", "--json"], ["--yes"]):
        result = clean(*args)
        assert result.exit_code == 2 and "system folder" in result.stderr, result.output
        assert result.stdout == ""  # nothing listed


def test_refuses_to_prompt_without_a_terminal(offload):
    result = clean()
    assert result.exit_code == 2
    assert "--yes" in result.stderr
    assert (offload / "model.layers.10.weight.dat").exists()


@pytest.mark.parametrize("target", ["/", "~"])
def test_refuses_root_and_home(offload, target, monkeypatch):
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", target)
    result = clean(os.path.expanduser(target), "--yes")
    assert result.exit_code == 2
    assert "refusing" in result.stderr and ("/ or your home" in result.stderr or "repository root" in result.stderr)


def test_refuses_repo_root(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "keep.py").write_text("x")
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", str(repo))
    result = clean("--yes")
    assert result.exit_code == 2 and "repository root" in result.stderr
    assert (repo / "keep.py").exists()


def test_refuses_paths_outside_the_configured_folder(offload, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "precious").write_text("x")
    result = clean(str(other), "--yes")
    assert result.exit_code == 2 and "outside the configured offload folder" in result.stderr
    assert (other / "precious").exists()
    result = clean(str(offload / ".." / "elsewhere"), "--yes")
    assert result.exit_code == 2
    assert (other / "precious").exists()


def test_never_follows_symlinks_out(offload, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"y" * 10)
    (offload / "link_dir").symlink_to(outside, target_is_directory=True)
    (offload / "link_file").symlink_to(outside / "precious.bin")
    result = clean("--yes")
    assert result.exit_code == 0, result.output
    assert (outside / "precious.bin").read_bytes() == b"y" * 10
    assert not (offload / "link_dir").exists() and not (offload / "link_file").is_symlink()


def test_refuses_when_the_folder_itself_is_a_symlink(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    (real / "w.dat").write_text("x")
    link = tmp_path / "offload_link"
    link.symlink_to(real, target_is_directory=True)
    monkeypatch.setenv("ROUTERLLM_OFFLOAD_FOLDER", str(link))
    result = clean("--yes")
    assert result.exit_code == 2 and "symlink" in result.stderr
    assert (real / "w.dat").exists()


def _hold_lock(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from routerllm_cli.offload.folder import OffloadLock\n"
        f"l = OffloadLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_refuses_while_a_live_process_holds_the_lock(offload):
    holder = _hold_lock(offload)
    try:
        result = clean("--yes")
        assert result.exit_code == 1
        assert f"in use by pid {holder.pid}" in result.stderr
        assert (offload / "model.layers.10.weight.dat").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_covers_every_path_inside_the_locked_folder(offload):
    holder = _hold_lock(offload)
    try:
        for args in ([str(offload / "sub"), "--yes"], [str(offload / "sub"), "--dry-run"]):
            result = clean(*args)
            assert result.exit_code == 1 and f"in use by pid {holder.pid}" in result.stderr, result.output
        assert (offload / "sub" / "index.json").exists()
    finally:
        holder.kill()
        holder.wait()
    nested = _hold_lock(offload / "sub")  # a lock below the folder to clean covers it too
    try:
        result = clean("--yes")
        assert result.exit_code == 1 and f"in use by pid {nested.pid}" in result.stderr
        assert (offload / "model.layers.10.weight.dat").exists()
    finally:
        nested.kill()
        nested.wait()


def test_stale_lock_is_reported_and_cleared(offload):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    import socket

    (offload / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))
    result = clean("--yes")
    assert result.exit_code == 0, result.output
    assert f"stale lock from pid {pid}" in result.stderr
    assert not (offload / LOCK_NAME).exists()


def test_lock_is_exclusive_and_released(offload):
    with OffloadLock(offload):
        assert (offload / LOCK_NAME).exists()
        info = OffloadLock(offload).read()
        assert info.pid == os.getpid() and info.alive
    assert not (offload / LOCK_NAME).exists()
