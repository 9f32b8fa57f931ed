from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steadyflow.errors import ContractError
from steadyflow.model import INVALID, MAX_TIME, MIN_TIME, Column, Contract, TextEncoding
from steadyflow.validate.quarantine import row_hashes
from steadyflow.validate.rules import REASON, Verdict, validate

CONTRACT = Contract(
    columns=(
        Column("id", "int64", nullable=False),
        Column("qty", "int64", min=1),
        Column("price", "decimal(12,2)", min=0),
        Column("currency", "string", allowed=("USD", "EUR")),
        Column("at", "timestamp", nullable=False),
    ),
    primary_key=("id",), cursor="at")


def test_bad_rows_are_split_off_with_their_first_broken_rule() -> None:
    raw = pa.table({
        "id": ["1", "2", "3", "4", "5", None],
        "qty": ["2", "abc", "0", "3", "4", "1"],
        "price": ["1.50", "2.00", "3.00", "-1.00", "5.00", "1.00"],
        "currency": ["USD", "USD", "EUR", "EUR", "XXX", "USD"],
        "at": ["2026-01-01 00:00:00.000001"] * 6,
    })
    verdict = validate(raw, CONTRACT)
    assert verdict.good.num_rows == 1
    assert verdict.good.schema.field("price").type == pa.decimal128(12, 2)
    assert verdict.good.to_pylist()[0] == {
        "id": 1, "qty": 2, "price": Decimal("1.50"), "currency": "USD",
        "at": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)}
    reasons = dict(zip(verdict.bad["id"].to_pylist(), verdict.bad[REASON].to_pylist(),
                       strict=True))
    assert reasons == {
        "2": "qty: not a valid int64",
        "3": "qty: below minimum 1",
        "4": "price: below minimum 0",
        "5": "currency: not one of USD,EUR",
        None: "id: must not be null",
    }
    assert sum(verdict.reasons.values()) == 5
    assert verdict.bad_mask.to_pylist() == [False, True, True, True, True, True]


def test_clean_typed_batch_passes_untouched() -> None:
    typed = pa.table({
        "id": pa.array([1, 2], pa.int64()), "qty": pa.array([1, 5], pa.int64()),
        "price": pa.array([Decimal("0.00"), Decimal("9.99")], pa.decimal128(12, 2)),
        "currency": ["EUR", None],
        "at": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * 2, pa.timestamp("us", tz="UTC")),
    })
    verdict = validate(typed, CONTRACT)
    assert verdict.good.num_rows == 2 and verdict.bad.num_rows == 0 and not verdict.reasons


# --- values a warehouse would refuse, or a type cannot hold: quarantined per row -------------

def _reasons(verdict: Verdict) -> dict[object, str]:
    return dict(zip(verdict.bad["id"].to_pylist(), verdict.bad[REASON].to_pylist(),
                    strict=True))


def _good_ids(verdict: Verdict) -> list[object]:
    return verdict.good["id"].to_pylist()


def test_a_readers_invalid_reason_quarantines_its_row_first() -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("note", "string", nullable=False)),
                        primary_key=("id",), cursor="id")
    raw = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "note": ["a", None, "c"],
                    INVALID: [None, "note: invalid UTF-8 (b'\\xff')", None]})
    verdict = validate(raw, contract)
    assert _good_ids(verdict) == [1, 3]
    assert _reasons(verdict) == {"2": "note: invalid UTF-8 (b'\\xff')"}
    assert verdict.bad[INVALID].to_pylist() == ["note: invalid UTF-8 (b'\\xff')"]
    # replaying the parked row keeps it parked: its value was never read
    again = validate(verdict.bad.drop_columns([REASON]), contract)
    assert again.good.num_rows == 0 and _reasons(again) == _reasons(verdict)


def test_nul_characters_in_text_are_quarantined_for_every_warehouse() -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("note", "string")), primary_key=("id",), cursor="id")
    raw = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()),
                    "note": ["plain", "a\x00b", "\x00", None]})
    verdict = validate(raw, contract)
    assert _good_ids(verdict) == [1, 4]
    reason = "note: contains a NUL character (no warehouse text type holds it)"
    assert _reasons(verdict) == {"2": reason, "3": reason}
    assert verdict.bad["note"].to_pylist() == ["a\x00b", "\x00"]


def test_times_outside_the_years_1_to_9999_are_quarantined_not_clamped() -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("at", "timestamp"), Column("day", "date")),
                        primary_key=("id",), cursor="id")
    us = pa.timestamp("us", tz="UTC")
    late = int((MAX_TIME - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 10**6) + 1
    raw = pa.table({
        "id": pa.array([1, 2, 3, 4, 5], pa.int64()),
        "at": pa.array([0, late, -(2**62), None,
                        int((MIN_TIME - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(
                            microseconds=1))], us),
        "day": pa.array([0, 0, 0, 2_932_897, None], pa.date32()),  # 2932897 = 10000-01-01
    })
    verdict = validate(raw, contract)
    assert _good_ids(verdict) == [1, 5]
    assert _reasons(verdict) == {
        "2": "at: outside the years 1..9999 (no warehouse holds it)",
        "3": "at: outside the years 1..9999 (no warehouse holds it)",
        "4": "day: outside the years 1..9999 (no warehouse holds it)"}


def test_year_zero_text_is_quarantined_and_parked_as_text() -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("at", "timestamp")), primary_key=("id",), cursor="id")
    raw = pa.table({"id": ["1", "2", "3"],
                    "at": ["2024-01-01 00:00:00", "0000-06-01 00:00:00", "garbage"]})
    verdict = validate(raw, contract)
    assert _good_ids(verdict) == [1]
    assert _reasons(verdict) == {"2": "at: outside the years 1..9999 (no warehouse holds it)",
                                 "3": "at: not a valid timestamp"}


def test_nan_and_infinities_fail_min_max_rules_but_stay_values_without_them() -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("ruled", "float64", min=0),
                                 Column("free", "float64")), primary_key=("id",), cursor="id")
    nan, inf = float("nan"), float("inf")
    raw = pa.table({"id": pa.array([1, 2, 3, 4, 5], pa.int64()),
                    "ruled": [1.5, nan, inf, -inf, None],
                    "free": [nan, 1.0, 1.0, 1.0, -inf]})
    verdict = validate(raw, contract)
    assert _good_ids(verdict) == [1, 5]
    why = "ruled: not a finite number (its min/max rule cannot hold NaN or infinity)"
    assert _reasons(verdict) == {"2": why, "3": why, "4": why}
    free = verdict.good["free"].to_pylist()
    assert math.isnan(free[0]) and free[1] == -inf


@pytest.mark.parametrize("values", [
    pa.array(["1.25", "5.6789", "1.005", "1e-7", "0.1"]),
    pa.array([1.25, 5.6789, 1.005, 1e-7, 0.1], pa.float64()),
    pa.array([Decimal("1.25"), Decimal("5.6789"), Decimal("1.005"), Decimal("1E-7"),
              Decimal("0.1")], pa.decimal128(20, 8)),
])
def test_decimals_with_more_scale_than_the_contract_are_quarantined_not_rounded(
        values: pa.Array) -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("price", "decimal(12,2)")),
                        primary_key=("id",), cursor="id")
    verdict = validate(pa.table({"id": pa.array([1, 2, 3, 4, 5], pa.int64()),
                                 "price": values}), contract)
    assert verdict.good.to_pylist() == [{"id": 1, "price": Decimal("1.25")},
                                        {"id": 5, "price": Decimal("0.10")}]
    assert set(_reasons(verdict).values()) == {"price: not a valid decimal(12,2)"}
    assert sorted(_reasons(verdict)) == ["2", "3", "4"]


def test_integers_into_a_decimal_column_fit_or_are_quarantined_by_precision() -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("price", "decimal(12,2)")),
                        primary_key=("id",), cursor="id")
    verdict = validate(pa.table({"id": pa.array([1, 2], pa.int64()),
                                 "price": pa.array([7, 10**11], pa.int64())}), contract)
    assert verdict.good.to_pylist() == [{"id": 1, "price": Decimal("7.00")}]
    assert _reasons(verdict) == {"2": "price: not a valid decimal(12,2)"}


def test_a_pattern_re2_cannot_compile_is_a_contract_error_naming_the_column() -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("code", "string", pattern="(?<=a)b")),
                        primary_key=("id",), cursor="id")
    with pytest.raises(ContractError, match="column code: pattern '\\(\\?<=a\\)b'"):
        validate(pa.table({"id": pa.array([1], pa.int64()), "code": ["ab"]}), contract)


def test_binary_and_nul_values_reach_the_quarantine_file_as_text(tmp_path: Path) -> None:
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("note", "string"), Column("blob", "string")),
                        primary_key=("id",), cursor="id")
    raw = pa.table({"id": pa.array([1, 2, 3], pa.int64()),
                    "note": ["ok", "nul\x00here", None],
                    "blob": pa.array([b"fine", b"ok", b"\xff\xfe"], pa.binary())})
    verdict = validate(raw, contract)
    assert _good_ids(verdict) == [1]
    assert verdict.bad.to_pylist() == [
        {"id": "2", "note": "nul\x00here", "blob": "ok", INVALID: None,
         REASON: "note: contains a NUL character (no warehouse text type holds it)"},
        {"id": "3", "note": None, "blob": "\\xff\\xfe", INVALID: None,
         REASON: "blob: not a valid string"}]
    pq.write_table(verdict.bad, tmp_path / "q.parquet")
    assert pq.read_table(tmp_path / "q.parquet").equals(verdict.bad)
    hashes = row_hashes(verdict.bad)
    assert len(set(hashes)) == 2


def test_a_text_nul_and_a_null_digest_apart() -> None:
    bad = pa.table({"a": ["\x00", None], REASON: ["r", "r"]})
    first, second = row_hashes(bad)
    assert first != second


def test_a_rows_digest_leaves_its_reason_out_and_finds_rows_parked_with_it() -> None:
    """A reason worded anew by a contract change must not make a re-read row a new one;
    rows parked by versions whose digest held the reason are still found."""
    from steadyflow.validate.quarantine import parked_rows

    bad = pa.table({"a": ["x", "y"], INVALID: [None, None], REASON: ["not one of a", "r"]})
    reworded = bad.set_column(2, REASON, pa.array(["not one of a,b", "r"]))
    assert row_hashes(bad) == row_hashes(reworded)
    older = row_hashes(bad, with_reason=True)
    assert older[0] != row_hashes(bad)[0]
    asked: list[str] = []

    def lookup(digests: list[str]) -> dict[str, str]:
        asked.extend(digests)
        return {older[0]: "old batch"}

    digests, by = parked_rows(lookup, bad)
    assert (digests, by) == (row_hashes(bad), ["old batch", None])
    assert set(asked) == {*row_hashes(bad), *older}


def test_min_and_max_compare_int64_beyond_2_pow_53_exactly() -> None:
    """Found by the generated suite: Arrow refused to compare int64 values past 2**53 with
    the float bound, the batch failed for good and every row of it went missing."""
    contract = Contract(columns=(Column("id", "int64", nullable=False),
                                 Column("n", "int64", min=0.5, max=2**63 - 2)),
                        primary_key=("id",), cursor="id")
    batch = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()),
                      "n": pa.array([2**63 - 1, -(2**63), 1, 0], pa.int64())})
    verdict = validate(batch, contract)
    assert verdict.good["id"].to_pylist() == [3]
    assert sorted(verdict.bad[REASON].to_pylist()) == [
        "n: above maximum 9.22337e+18", "n: below minimum 0.5", "n: below minimum 0.5"]


def test_a_character_the_warehouse_encoding_lacks_costs_its_row() -> None:
    """Given the warehouse's text encoding (a PostgreSQL database in LATIN1), a value
    holding a character it lacks is quarantined naming column and character; without one,
    or for text the encoding holds, nothing is."""
    contract = Contract(columns=(Column("id", "int64", nullable=False), Column("s", "string")),
                        primary_key=("id",), cursor="id")
    raw = pa.table({"id": pa.array([1, 2, 3, 4, 5], pa.int64()),
                    "s": ["ascii", "café ÿ", "x😀y🎉", None, ""]})
    assert validate(raw, contract).bad.num_rows == 0
    verdict = validate(raw, contract, encoding=TextEncoding("LATIN1", "iso8859-1"))
    assert verdict.good["id"].to_pylist() == [1, 2, 4, 5]
    assert verdict.bad[REASON].to_pylist() == [
        "s: the warehouse database's encoding LATIN1 cannot hold the character '😀' "
        "(U+1F600)"]


def _typed_rows(ids: list[int | None], qty: list[int], currency: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table({
        "id": pa.array(ids, pa.int64()), "qty": pa.array(qty, pa.int64()),
        "price": pa.array([Decimal("1.00")] * n, pa.decimal128(12, 2)),
        "currency": pa.array(currency, pa.string()),
        "at": pa.array([datetime(2026, 1, 1, tzinfo=UTC)] * n, pa.timestamp("us", tz="UTC")),
    })


@pytest.mark.parametrize("bad", [False, True])
def test_a_batch_in_chunks_gets_the_verdict_of_one_chunk_and_keeps_its_chunks(
        bad: bool) -> None:
    """A reader's page in several chunks (connectorx's record batches) is validated as the
    same rows in one chunk: same good rows, same bad rows and reasons. Columns already of
    the contract type keep their chunks (no copy of every column on the loader's thread);
    the price, cast from text here, is one array."""
    first = _typed_rows([1, 2, 3], [1, 2, 3], ["USD", "EUR", "USD"])
    second = _typed_rows([4, None if bad else 5, 6], [0 if bad else 4, 5, 6],
                         ["XXX" if bad else "EUR", "USD", "USD"])
    chunked = pa.concat_tables([first, second])
    chunked = chunked.set_column(2, "price", pa.chunked_array(
        [pa.array(["1.00"] * 3), pa.array(["2.50", "-1.00" if bad else "3.00", "4.00"])]))
    assert chunked.column("id").num_chunks == 2
    got, want = validate(chunked, CONTRACT), validate(chunked.combine_chunks(), CONTRACT)
    assert got.good.to_pylist() == want.good.to_pylist()
    assert got.bad.to_pylist() == want.bad.to_pylist()
    assert got.reasons == want.reasons
    assert got.bad_mask.to_pylist() == want.bad_mask.to_pylist()
    assert got.good.num_rows == (4 if bad else 6)
    if not bad:
        assert got.good.column("id").num_chunks == 2  # kept, not copied into one
