"""Column names and types of every Parquet file in a run directory (DESIGN.md section 11).

People open these files in pandas and DuckDB, so the columns are part of the user interface:
each file has a fixed Arrow schema (a column that is all null in one iteration keeps its type),
and a change here bumps ``azr.artifacts.SCHEMA_VERSION``.
"""

from __future__ import annotations

import pyarrow as pa

STR = pa.string()
INT = pa.int64()
FLOAT = pa.float64()
BOOL = pa.bool_()
BOOLS = pa.list_(pa.bool_())
STRS = pa.list_(pa.string())
INTS = pa.list_(pa.int64())
FLOATS = pa.list_(pa.float64())

KEYS = [("run", STR), ("iteration", INT), ("task_id", STR), ("task_type", STR)]
GENERATION = [("prompt", STR), ("prompt_ids", INTS), ("response", STR), ("response_ids", INTS),
              ("response_mask", BOOLS), ("logprobs", FLOATS), ("finish_reason", STR)]

PROPOSALS = pa.schema(KEYS + GENERATION + [
    ("parsed", BOOL), ("parse_reason", STR), ("program", STR), ("input", STR), ("inputs", STRS),
    ("message", STR), ("reference_ids", STRS), ("generate_seconds", FLOAT),
])

TASKS = pa.schema(KEYS + [
    ("source", STR), ("accepted", BOOL), ("forced", BOOL), ("reason", STR), ("program", STR), ("input", STR),
    ("output", STR), ("inputs", STRS), ("outputs", STRS), ("message", STR), ("shown", INTS),
    ("complexity", FLOAT), ("validate_seconds", FLOAT),
])

SOLUTIONS = pa.schema(KEYS + [("sample", INT)] + GENERATION + [
    ("parsed", BOOL), ("parse_reason", STR), ("answer", STR), ("correct", BOOL), ("check_status", STR),
    ("solve_seconds", FLOAT),
])

REWARDS = pa.schema(KEYS + [
    ("role", STR), ("sample", INT), ("prompt_ids", INTS), ("response_ids", INTS), ("response_mask", BOOLS),
    ("logprobs", FLOATS),
    ("valid", BOOL), ("solve_rate", FLOAT), ("learnability", FLOAT), ("diversity", FLOAT), ("complexity", FLOAT),
    ("format", FLOAT), ("correctness", FLOAT), ("reward", FLOAT), ("advantage", FLOAT),
])

BUFFER = pa.schema([
    ("task_id", STR), ("task_type", STR), ("program", STR), ("input", STR), ("output", STR), ("inputs", STRS),
    ("outputs", STRS), ("message", STR), ("origin_iteration", INT),
])

# eval/iter-NNNN.parquet and `azr eval --out`: one row per answer to a held-out problem.
EVAL = pa.schema(KEYS + [
    ("set", STR), ("sample", INT), ("prompt", STR), ("response", STR),
    ("response_tokens", INT), ("finish_reason", STR), ("parsed", BOOL),
    ("parse_reason", STR), ("answer", STR), ("correct", BOOL), ("check_status", STR),
    ("check_error", STR), ("gold", STR), ("eval_seconds", FLOAT),
])


def row(schema: pa.Schema, values: dict, later: tuple[str, ...] = ()) -> dict:
    """``values`` as a row of ``schema``'s file, checked where the row is made: exactly the schema's
    columns (but ``later``, which the stage adds to the whole table afterwards), or a ValueError
    that names the missing and the unknown ones."""
    expected = set(schema.names) - set(later)
    if values.keys() != expected:
        missing, unknown = sorted(expected - values.keys()), sorted(values.keys() - expected)
        raise ValueError(f"a row of {_NAMES.get(id(schema), 'this table')} needs exactly its columns: "
                         f"missing {missing or 'none'}, unknown {unknown or 'none'}")
    return values


_NAMES = {id(s): f"schemas.{n}" for n, s in (("PROPOSALS", PROPOSALS), ("TASKS", TASKS), ("SOLUTIONS", SOLUTIONS),
                                              ("REWARDS", REWARDS), ("BUFFER", BUFFER), ("EVAL", EVAL))}
