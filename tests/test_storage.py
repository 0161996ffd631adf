"""Atomic writes when several processes write into one output directory: temporaries are
each process's own, only dead processes' are cleaned up, a directory target replaced by
many writers at once never fails, and the scene lock makes a second process wait."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dipfill.storage import exclusive, remove_stale_temporaries, staged, temporary_path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the pid is reused, which this test does not wait for)


def test_temporary_names_carry_their_owner_and_never_repeat(tmp_path: Path) -> None:
    final = tmp_path / "scene_mosaic.zarr"
    names = {temporary_path(final).name for _ in range(200)}
    assert len(names) == 200
    name = next(iter(names))
    assert name.startswith(".scene_mosaic.zarr.tmp-") and f".{os.getpid()}." in name


def test_stale_cleanup_removes_only_temporaries_of_dead_processes(tmp_path: Path) -> None:
    final = tmp_path / "scene_mosaic.zarr"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours = temporary_path(final)
        other_live = ours.with_name(ours.name.replace(f".{os.getpid()}.", f".{live.pid}."))
        dead = ours.with_name(ours.name.replace(f".{os.getpid()}.", f".{_dead_pid()}."))
        elsewhere = tmp_path / f".{final.name}.tmp-otherhost.{_dead_pid()}.abcdef012345"
        legacy = tmp_path / f".{final.name}.tmp-0123abcd"  # unknown owner
        unrelated = tmp_path / ".other_mosaic.zarr.tmp-x.1.ab"
        for path in (ours, other_live, dead, elsewhere, legacy, unrelated):
            (path / "bands").mkdir(parents=True)
        assert remove_stale_temporaries(final) == [dead]
        assert not dead.exists()
        assert all(p.exists() for p in (ours, other_live, elsewhere, legacy, unrelated))
    finally:
        live.kill()
        live.wait()


def _write_dir_repeatedly(final: str, tag: str, rounds: int, errors) -> None:
    try:
        for i in range(rounds):
            with staged(final) as tmp:
                tmp.mkdir()
                for k in range(5):
                    (tmp / f"chunk{k}").write_text(f"{tag}:{i}")
    except BaseException as exc:  # reported to the parent, which asserts there are none
        errors.put(f"{tag}: {type(exc).__name__}: {exc}")


def test_concurrent_writers_of_one_directory_never_fail(tmp_path: Path) -> None:
    """Four processes replace one Zarr-like directory 40 times each: every replacement
    succeeds, the result is one writer's whole directory, and no temporary is left."""
    final = tmp_path / "scene_mosaic.zarr"
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_write_dir_repeatedly, args=(str(final), f"w{n}", 40, errors)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == [] and all(p.exitcode == 0 for p in procs)
    contents = {(final / f"chunk{k}").read_text() for k in range(5)}
    assert len(contents) == 1  # one writer's directory, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene_mosaic.zarr"]


def test_a_second_process_waits_for_the_lock_and_gets_it_when_the_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "scene" / ".dipfill.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from dipfill.storage import exclusive\n"
         f"with exclusive({str(lock)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        waited: list[str] = []
        killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1.0); os.kill({holder.pid}, 9)"])
        t0 = time.monotonic()
        with exclusive(lock, on_wait=waited.append):
            elapsed = time.monotonic() - t0
        killer.wait()
        assert waited and waited[0].endswith(f" {holder.pid}")  # told who holds it
        assert elapsed >= 0.8  # it waited for the holder, which never released it: the kernel did
    finally:
        holder.kill()
        holder.wait()
    with exclusive(lock, on_wait=pytest.fail):  # free again, no waiting
        pass
