"""A full disk while a Parquet file, a manifest or a checkpoint is written, on a real small tmpfs.

Each write must fail with an error naming the file, leave nothing half-written that could be taken
as complete, and succeed once space is freed. Mounting a tmpfs needs root (CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from azr.artifacts import NoSpaceError, leftover_temporaries, manifest_path, read_table, stage_complete, write_table
from tests.conftest import SMOKE_CONFIG, run_azr

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 4 MiB at tmp_path/disk; its size can be changed with `resize(mount, megabytes)`."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def resize(mount: Path, megabytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={megabytes}m", str(mount)], check=True)


def fill_leaving(mount: Path, free_bytes: int) -> Path:
    """Fill the disk, then give back ``free_bytes`` (whole pages): a filler file takes the rest."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\1" * PAGE)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - free_bytes))
    return filler


def rows(n: int = 2000) -> pd.DataFrame:
    return pd.DataFrame({"task_id": [f"t{i:05d}" for i in range(n)], "program": [f"def f(x):\n    return x * {i}" for i in range(n)]})


def parquet_size(tmp_path: Path, frame: pd.DataFrame) -> int:
    probe = write_table(frame, tmp_path / "probe.parquet")
    return probe.stat().st_size


def test_a_parquet_file_the_disk_cannot_hold_is_not_written(small_disk):
    out = small_disk / "run" / "iter-0001" / "tasks.parquet"
    fill_leaving(small_disk, 2 * PAGE)
    with pytest.raises(NoSpaceError, match="tasks.parquet: no space left on the device") as error:
        write_table(rows(), out)
    assert "azr resume" in str(error.value)
    assert not out.exists() and not manifest_path(out).exists()
    assert leftover_temporaries(small_disk) == []  # the partial temporary file was removed
    assert not stage_complete([out], [], "")


def test_a_manifest_the_disk_cannot_hold_leaves_its_file_incomplete(small_disk, tmp_path):
    """The Parquet file fits exactly, its manifest does not: the file is there but never counts as done."""
    frame = rows()
    out = small_disk / "tasks.parquet"
    size = parquet_size(tmp_path, frame)
    filler = fill_leaving(small_disk, -(-size // PAGE) * PAGE)
    with pytest.raises(NoSpaceError, match=r"tasks.parquet.manifest.json: no space left"):
        write_table(frame, out)
    assert out.exists() and not manifest_path(out).exists()
    assert not stage_complete([out], [], "")
    filler.unlink()  # space freed: the same write completes
    write_table(frame, out)
    assert stage_complete([out], [], "")
    pd.testing.assert_frame_equal(read_table(out), frame)


def test_a_checkpoint_the_disk_cannot_hold_leaves_the_last_one_whole(small_disk):
    from azr.checkpoint import latest_checkpoint, load_policy, read_meta, save_checkpoint
    from azr.artifacts import RunDir
    from azr.config import AZRConfig, TrainingConfig
    from azr import rl

    resize(small_disk, 64)
    config = AZRConfig.model_validate({"model": {"name_or_path": "tiny-random"}})
    model, tokenizer = load_policy(config.model, trainable=True)
    optimizer, scheduler = rl.build_optimizer(model, TrainingConfig())
    run = RunDir(small_disk / "run")
    save = lambda iteration: save_checkpoint(run.checkpoint_dir(iteration), model, tokenizer, optimizer, scheduler,
                                             {}, iteration=iteration, model_config=config.model)
    save(1)
    size = sum(p.stat().st_size for p in run.checkpoint_dir(1).iterdir())
    filler = fill_leaving(small_disk, size // 2)
    with pytest.raises(NoSpaceError, match="checkpoint: no space left on the device"):
        save(2)
    assert leftover_temporaries(small_disk) == []  # no partial copy keeps the space
    assert latest_checkpoint(run, before_iteration=3) == run.checkpoint_dir(1)
    read_meta(run.checkpoint_dir(1))  # whole
    filler.unlink()
    save(2)
    assert latest_checkpoint(run, before_iteration=3) == run.checkpoint_dir(2)


@pytest.mark.slow
def test_a_run_whose_disk_fills_up_fails_clearly_and_resumes_to_the_same_rows(small_disk, smoke_run):
    """The whole run directory (Parquet files, checkpoints, MLflow's and Prefect's databases) on a 24 MiB
    disk: the smoke run does not fit. It must stop with an error naming what could not be written,
    then `azr resume`, once the disk is larger, must finish with the rows of an uninterrupted run."""
    from tests.conftest import assert_same_table
    from tests.test_flows import PARQUET
    from azr.artifacts import RunDir

    resize(small_disk, 24)
    result = run_azr("run", "--config", SMOKE_CONFIG, "--runs-dir", small_disk, timeout=3600)
    assert result.returncode != 0, "the run fitted: make the disk smaller"
    err = " ".join(result.stderr.split())
    assert "no space left on the device" in err.lower(), result.stderr[-3000:]
    assert f"azr resume {small_disk / 'smoke'}" in err
    run = RunDir(small_disk / "smoke")
    for path in run.root.rglob("*.parquet"):  # whatever is marked done is whole
        if manifest_path(path).exists():
            read_table(path)

    resize(small_disk, 256)
    result = run_azr("resume", run.root, timeout=3600)
    assert result.returncode == 0, f"azr resume failed:\n{result.stdout}\n{result.stderr}"
    reference = RunDir(smoke_run[1])
    for iteration in (1, 2):
        for name in PARQUET:
            assert_same_table(read_table(run.stage_file(iteration, name)),
                              read_table(reference.stage_file(iteration, name)), obj=f"iter-{iteration:04d}/{name}")
