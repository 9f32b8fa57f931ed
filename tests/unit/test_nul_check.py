"""validate/rules.py: the NUL rule of a text column runs match_substring only when a NUL
byte lies somewhere in the column's character data; the verdict is the exact rule's
whatever the chunks, slices and nulls (oracle: Python's `"\\x00" in value`)."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from steadyflow.model import Column, Contract
from steadyflow.validate import rules
from steadyflow.validate.rules import REASON, validate

CONTRACT = Contract(columns=(Column("id", "int64", nullable=False), Column("note", "string")),
                    primary_key=("id",), cursor="id")
NUL = "note: contains a NUL character (no warehouse text type holds it)"


def _oracle(notes: list[str | None]) -> dict[int, str]:
    return {i: NUL for i, note in enumerate(notes) if note is not None and "\x00" in note}


def _column(notes: list[str | None], how: str) -> pa.ChunkedArray:
    """The same values laid out as a reader or a slice may leave them: one chunk, several,
    or slices of a longer array whose cut-off values (and a null's bytes) hold NULs."""
    if how == "whole":
        return pa.chunked_array([pa.array(notes, pa.string())], pa.string())
    if how == "chunks":
        cut = len(notes) // 2
        return pa.chunked_array([pa.array(notes[:cut], pa.string()),
                                 pa.array(notes[cut:], pa.string())], pa.string())
    padded = pa.array(["\x00x", *notes, "y\x00"], pa.string())  # NULs outside the slice
    return pa.chunked_array([padded.slice(1, len(notes))], pa.string())


def _nul_in_a_null_slot() -> pa.Array:
    """['a', null, 'b'] whose null slot spans a NUL byte of the data buffer."""
    offsets = pa.array([0, 1, 3, 4], pa.int32()).buffers()[1]
    validity = pa.array([True, False, True]).buffers()[1]
    return pa.Array.from_buffers(pa.string(), 3, [validity, offsets, pa.py_buffer(b"a\x00zb")])


@pytest.mark.parametrize("how", ["whole", "chunks", "slice"])
def test_the_nul_rule_matches_the_oracle_however_the_column_is_laid_out(how: str) -> None:
    rng = random.Random(15)
    for _ in range(60):
        notes: list[str | None] = [
            rng.choice([None, "", "plain", "a\x00b", "\x00", "x" * rng.randint(1, 9)])
            if rng.random() < 0.2 else "v" * rng.randint(0, 5) for _ in range(rng.randint(1, 40))]
        batch = pa.table({"id": pa.array(range(len(notes)), pa.int64()),
                          "note": _column(notes, how)})
        verdict = validate(batch, CONTRACT)
        bad = {int(i): reason for i, reason in zip(verdict.bad["id"].to_pylist(),
                                                   verdict.bad[REASON].to_pylist(), strict=True)}
        assert bad == _oracle(notes)
        assert verdict.good.num_rows == len(notes) - len(bad)


def test_a_nul_only_in_a_null_slot_fails_no_row() -> None:
    batch = pa.table({"id": pa.array([0, 1, 2], pa.int64()), "note": _nul_in_a_null_slot()})
    verdict = validate(batch, CONTRACT)
    assert verdict.bad.num_rows == 0 and verdict.good["note"].to_pylist() == ["a", None, "b"]


def test_text_without_a_nul_is_not_searched_by_match_substring(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost this saves: ~6 ms per 122,880-row page of the bench's SKUs (bench/NOTES.md,
    session 15); a column holding one NUL still goes through the exact rule."""
    calls: list[int] = []
    match_substring = pc.match_substring

    def counted(values: pa.Array, pattern: str, *args: object, **kwargs: object) -> pa.Array:
        calls.append(len(values))
        return match_substring(values, pattern, *args, **kwargs)

    monkeypatch.setattr(rules.pc, "match_substring", counted)
    clean = pa.table({"id": pa.array([1, 2], pa.int64()), "note": ["a", None]})
    assert validate(clean, CONTRACT).bad.num_rows == 0
    assert calls == []
    dirty = pa.table({"id": pa.array([1, 2], pa.int64()), "note": ["a", "b\x00"]})
    assert validate(dirty, CONTRACT).bad[REASON].to_pylist() == [NUL]
    assert calls == [2]
