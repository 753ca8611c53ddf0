"""Run directory artifacts: atomic Parquet writes, manifests, and the stage-complete check."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from azr.pipeline import BUFFER
from azr.artifacts import (
    SCHEMA_VERSION,
    ArtifactError,
    RunDir,
    manifest_path,
    read_json,
    read_manifest,
    read_table,
    stage_complete,
    write_json,
    write_table,
)


def frame(n=3, start=0):
    return pd.DataFrame({"task_id": [f"t{i}" for i in range(start, start + n)], "value": range(start, start + n)})


def test_roundtrip_and_manifest(tmp_path):
    path = write_table(frame(), tmp_path / "iter-0001" / "tasks.parquet", config_hash="abc", seconds=1.5)
    pd.testing.assert_frame_equal(read_table(path), frame())
    manifest = read_manifest(path)
    assert manifest["rows"] == 3
    assert manifest["config_hash"] == "abc"
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert len(manifest["sha256"]) == 64


def test_run_dir_layout(tmp_path):
    run = RunDir(tmp_path / "r1")
    assert BUFFER.output(run, 0) == tmp_path / "r1" / "buffer" / "iter-0000.parquet"
    assert run.stage_file(12, "tasks.parquet") == tmp_path / "r1" / "iter-0012" / "tasks.parquet"
    assert run.checkpoint_dir(3) == tmp_path / "r1" / "iter-0003" / "checkpoint"
    run.stage_file(2, "x").parent.mkdir(parents=True)
    run.stage_file(10, "x").parent.mkdir(parents=True)
    assert run.iterations() == [2, 10]


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="nothere.parquet: file not found"):
        read_table(tmp_path / "nothere.parquet")
    path = write_table(frame(), tmp_path / "a.parquet")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="a.parquet: contents do not match its manifest"):
        read_table(path)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ArtifactError, match="g.parquet: no manifest"):
        read_table(garbage)
    with pytest.raises(ArtifactError, match="g.parquet: not a readable Parquet file"):
        read_table(garbage, verify=False)


def test_json_artifact(tmp_path):
    path = write_json({"loss": 0.5}, tmp_path / "train.json", config_hash="h")
    assert read_json(path) == {"loss": 0.5}
    assert read_manifest(path)["rows"] is None
    path.write_text("{broken")
    with pytest.raises(ArtifactError, match="train.json: corrupt JSON"):
        read_json(path)


def test_stage_complete_tracks_inputs_and_config(tmp_path):
    src = write_table(frame(), tmp_path / "proposals.parquet")
    out = write_table(frame(2), tmp_path / "tasks.parquet", inputs=[src], config_hash="h1")
    assert stage_complete([out], [src], "h1")
    assert not stage_complete([out], [src], "h2"), "config changed"
    write_table(frame(3, start=5), src)  # the input is rewritten with other rows
    assert not stage_complete([out], [src], "h1"), "input hash changed"
    assert not stage_complete([tmp_path / "missing.parquet"], [src], "h1")
    assert not stage_complete([out], [tmp_path / "missing-input.parquet"], "h1")


def test_output_without_manifest_is_not_complete(tmp_path):
    out = write_table(frame(), tmp_path / "tasks.parquet")
    manifest_path(out).unlink()
    assert not stage_complete([out], [], "")


def test_changed_output_is_not_complete(tmp_path):
    out = write_table(frame(), tmp_path / "tasks.parquet")
    frame(4).to_parquet(out)  # someone rewrote the file behind the manifest's back
    assert not stage_complete([out], [], "")


WRITER = """
import sys, pandas as pd
from azr.artifacts import write_table
n = int(sys.argv[2])
df = pd.DataFrame({"task_id": [f"t{i}" for i in range(n)], "value": range(n), "text": ["x" * 50] * n})
print("ready", flush=True)
while True:
    write_table(df, sys.argv[1])
"""


def test_writer_killed_mid_write_leaves_nothing_that_reads_as_complete(tmp_path):
    """SIGKILL a writer at many points: the file is either the old complete one, or not complete."""
    path = tmp_path / "tasks.parquet"
    write_table(frame(), path)
    outcomes = set()
    for delay in [0.0, 0.02, 0.05, 0.08, 0.11, 0.15, 0.2, 0.3]:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "400000"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if stage_complete([path], [], ""):
            rows = len(read_table(path))
            assert rows in (3, 400000)
            assert read_manifest(path)["rows"] == rows
            outcomes.add("complete")
        else:
            with pytest.raises(ArtifactError):
                read_table(path)
            outcomes.add("incomplete")
    # no leftover file may be mistaken for a finished one; leftover temp files are hidden dot-files
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p.name not in {"tasks.parquet", "tasks.parquet.manifest.json"})
    assert "incomplete" in outcomes, "no kill landed mid-write; the test exercised nothing"


def test_schema_keeps_types_of_all_null_columns_and_refuses_wrong_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("task_id", pa.string()), ("inputs", pa.list_(pa.string()))])
    path = write_table(pd.DataFrame({"task_id": ["a"], "inputs": [None]}), tmp_path / "t.parquet", schema=schema)
    assert pq.read_schema(path).field("inputs").type == pa.list_(pa.string())
    with pytest.raises(ValueError, match=r"missing \['inputs'\], unexpected \['extra'\]"):
        write_table(pd.DataFrame({"task_id": ["a"], "extra": [1]}), tmp_path / "u.parquet", schema=schema)
    assert not (tmp_path / "u.parquet").exists()


def test_a_row_with_a_wrong_column_fails_where_it_is_made():
    from azr import schemas

    good = {name: None for name in schemas.SOLUTIONS.names}
    assert schemas.row(schemas.SOLUTIONS, good) is good
    wrong = {**{k: v for k, v in good.items() if k != "answer"}, "anwser": "1"}
    with pytest.raises(ValueError, match=r"schemas.SOLUTIONS .*missing \['answer'\], unknown \['anwser'\]"):
        schemas.row(schemas.SOLUTIONS, wrong)
    later = {k: v for k, v in good.items() if k != "solve_seconds"}
    assert schemas.row(schemas.SOLUTIONS, later, later=("solve_seconds",)) is later
