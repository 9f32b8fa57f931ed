"""One spelling per key value: SQLite keys the contract reads as a typed value.

SQLite types values, not columns, and has no exact decimal nor time type: a key column
holds what was stored, often text. The source tells keys apart by that text (or by storage
class: 1 and '1'), the contract's type by value, so two spellings of one value ('1.0' and
'1.00'; '2024-01-01T00:00:00' and '2024-01-01 00:00:00'; '01' and '1' in an untyped
column) are two source rows and one warehouse key: one row replaced the other, every run
ok. Comparing every key's canonical value with every other's is a sort of the table; what
is checked instead is a sufficient condition, in one pass and then page by page:

- one storage class (integers and reals are one: SQLite compares them as numbers, and a
  number is its own only spelling);
- text in the plain spelling of the contract type (no sign '+', no leading zero, no
  exponent; a time as `YYYY-MM-DD[ T]HH:MM:SS[.f][Z|±HH:MM]`);
- one separator and one zone suffix for times;
- a fraction's width decided by its significant digits: every value whose fraction has L
  significant digits (trailing zeros aside) has the same width, so '1.5' with '2.25'
  (shortest), '1.50' with '2.25' (fixed) and isoformat()'s '...:00' with '...:00.500000'
  pass, '1.5' with '2.50' does not.

Under these, the spelling of a value is a function of the value: no two spellings of one.
A table outside them may still hold no actual pair; it is refused all the same, naming an
example of each spelling, because its next row may be one (the fix: key it as string, or
store one spelling). `Spellings` is what a pass saw; SqlSource keeps the table's and adds
each page's to it before the page is used (extract/key_check.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone
from decimal import Decimal
from itertools import product
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from steadyflow.arrow_types import arrow_type, cast_text_decimal, cast_text_time
from steadyflow.extract.dialects import InvalidText

# (separator, zone suffix, significant fraction digits, fraction width) of a plain spelling
Form = tuple[str, str, int, int]

_DIGITS = "(?:0|[1-9][0-9]*)"
_FRACTION = r"(?:\.(?P<frac>[0-9]+))?"
# the plain spelling of each type's text; None: no text is the only spelling of its value
# (float64 '1.0' and '1', bool 'true' and '1')
_PLAIN: dict[str, str | None] = {
    "int": f"^-?{_DIGITS}$",
    "decimal": f"^-?{_DIGITS}{_FRACTION}$",
    "timestamp": (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?P<sep>[ T])[0-9]{2}:[0-9]{2}:[0-9]{2}"
                  rf"{_FRACTION}(?P<zone>Z|[+-][0-9]{{2}}:[0-9]{{2}})?$"),
    "date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
    "float64": None, "bool": None,
}
_NEGATIVE_ZERO = r"^-0(?:\.0+)?$"  # '-0' and '0' are one value
SHOWN = {"int": "digits without '+' or leading zeros",
         "decimal": "digits and one '.', without '+' or leading zeros",
         "timestamp": "YYYY-MM-DD HH:MM:SS[.f][Z|+HH:MM] or with T",
         "date": "YYYY-MM-DD"}


def family(ctype: str) -> str:
    """The contract type's kind of spelling ('int' for int32/int64, 'decimal' for any)."""
    if ctype in ("int32", "int64"):
        return "int"
    return "decimal" if ctype.startswith("decimal") else ctype


@dataclass(frozen=True, slots=True)
class Spellings:
    """What some rows of a key column hold: storage classes ('integer' stands for reals
    too), the least text the contract reads that is not spelled plainly, and per plain
    `Form` the least text spelled so."""

    classes: frozenset[str] = frozenset()
    odd: str | None = None
    forms: Mapping[Form, str] = field(default_factory=dict)

    def merge(self, other: Spellings) -> Spellings:
        """The spellings of both sets of rows."""
        if not other.classes and not other.forms and other.odd is None:
            return self
        forms = dict(self.forms)
        for form, text in other.forms.items():
            forms[form] = min(text, forms.get(form, text))
        odds = [t for t in (self.odd, other.odd) if t is not None]
        return Spellings(self.classes | other.classes, min(odds) if odds else None, forms)


def storage_class(value: Any) -> str | None:
    """SQLite's storage class of a value as sqlite3 gives it (None for NULL; a real is an
    'integer': SQLite compares them as numbers, 2 = 2.0; text that is not UTF-8 is text)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return "integer"
    return "text" if isinstance(value, str | InvalidText) else "blob"


def of_values(values: Iterable[Any], ctype: str) -> Spellings:
    """The spellings of sqlite3's values of a key column (text that is not UTF-8, read
    as model.INVALID's marker, costs its row and is no key: left out)."""
    values = list(values)
    classes = frozenset(c for c in map(storage_class, values) if c is not None)
    if ctype == "string" or "text" not in classes:
        return Spellings(classes)
    text = pa.array([v for v in values if isinstance(v, str)], pa.string())
    return replace_classes(of_text(text, ctype), classes)


def of_arrow(column: pa.Array | pa.ChunkedArray, ctype: str) -> Spellings:
    """The spellings of a key column as ADBC read it (one storage class per column: a page
    mixing classes is read by sqlite3, extract/sqlite_arrow.py)."""
    kind = column.type
    if column.null_count == len(column):
        return Spellings()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if ctype == "string":
            return Spellings(frozenset({"text"}))
        text = pc.drop_null(column)
        flat = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
        return replace_classes(of_text(flat.cast(pa.string()), ctype), frozenset({"text"}))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return Spellings(frozenset({"integer"}))
    return Spellings(frozenset({"blob"}))


def replace_classes(spellings: Spellings, classes: frozenset[str]) -> Spellings:
    return Spellings(classes, spellings.odd, spellings.forms)


def of_text(text: pa.Array, ctype: str) -> Spellings:
    """The spellings of text values (no nulls) of a key column whose contract type is
    `ctype`: the plain ones by `Form`, the least other one the contract type reads."""
    kind = family(ctype)
    plain = _PLAIN.get(kind)
    if len(text) == 0:
        return Spellings(frozenset({"text"}))
    if plain is None:
        return Spellings(frozenset({"text"}), _least_read(text, ctype))
    if kind in ("int", "date"):  # one plain spelling per value
        matched = pc.match_substring_regex(text, plain)
    else:  # one pass: the groups, null where the text is not plain
        parts: Any = pc.extract_regex(text, plain)  # a struct array, one field per group
        matched = pc.is_valid(parts)
    if kind in ("int", "decimal"):
        matched = pc.and_(matched, pc.invert(pc.match_substring_regex(text, _NEGATIVE_ZERO)))
    odd = _least_read(pc.filter(text, pc.invert(matched)), ctype)
    good = pc.filter(text, matched)
    if len(good) == 0 or kind in ("int", "date"):
        return Spellings(frozenset({"text"}), odd)
    parts = pc.filter(parts, matched)
    frac = pc.fill_null(parts.field("frac"), "")  # no fraction
    width = pc.utf8_length(frac)
    significant = pc.utf8_length(pc.utf8_rtrim(frac, characters="0"))
    empty = pa.array([""] * len(good), pa.string())
    sep = parts.field("sep") if kind == "timestamp" else empty
    zone = pc.fill_null(parts.field("zone"), "") if kind == "timestamp" else empty
    grouped = pa.table({"sep": sep, "zone": zone, "l": significant, "w": width,
                        "t": good}).group_by(["sep", "zone", "l", "w"]).aggregate(
        [("t", "min")])
    forms: dict[Form, str] = {
        (row["sep"], row["zone"], row["l"], row["w"]): row["t_min"]
        for row in grouped.to_pylist()}
    return Spellings(frozenset({"text"}), odd, forms)


def reads(text: pa.Array, ctype: str) -> bool:
    """Does the contract type read every one of these texts as a value (as a page's
    conversion does: extract/sql.py `column_to_arrow`)? A text it does not read costs its
    row (quarantined), so it is no key that could replace another."""
    target = arrow_type(ctype)
    try:
        if pa.types.is_timestamp(target):
            cast = cast_text_time(text, target)
        elif pa.types.is_decimal(target):
            cast = cast_text_decimal(text, target)
        else:
            cast = pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return cast.null_count == 0


def _least_read(text: pa.Array, ctype: str) -> str | None:
    """The least of these texts the contract type reads as a value, None if it reads none
    (all of them at once first: usually all or none)."""
    if len(text) == 0:
        return None
    if reads(text, ctype):
        return str(pc.min(text).as_py())
    texts = sorted({str(t) for t in text.to_pylist() if t is not None})
    found = [t for t in texts if reads(pa.array([t]), ctype)]
    return found[0] if found else None


def problem(spellings: Spellings, ctype: str) -> tuple[str, list[str]] | None:
    """Why the spellings let one value be spelled twice, naming examples, and the texts
    named (whose other spellings `twins` lists); None when they do not (the conditions in
    the module docstring)."""
    if len(spellings.classes) > 1:
        return f"holds values stored as {' and '.join(sorted(spellings.classes))}", []
    if spellings.odd is not None:
        shown = SHOWN.get(family(ctype))
        how = (f"not spelled plainly ({shown})" if shown else
               f"text, and no text is the only spelling of a {ctype} ('1.0' and '1')")
        return f"holds {spellings.odd!r}, {how}", [spellings.odd]
    forms = spellings.forms
    for i, what in ((0, "separators between date and time"), (1, "zone suffixes")):
        kinds = sorted({f[i] for f in forms})
        if len(kinds) > 1:
            examples = [min(t for f, t in forms.items() if f[i] == k) for k in kinds]
            return f"mixes {what} ({', '.join(map(repr, examples))})", examples
    for places in sorted({f[2] for f in forms}):
        widths = sorted(f[3] for f in forms if f[2] == places)
        if len(widths) > 1:
            examples = [next(t for f, t in forms.items() if f[2:] == (places, w))
                        for w in widths[:2]]
            digits = "no significant fraction digit" if places == 0 else (
                f"{places} significant fraction digit{'s' if places > 1 else ''}")
            return (f"spells values with {digits} in more than one width "
                    f"({', '.join(map(repr, examples))})", examples)
    return None


def twins(text: str, ctype: str, forms: Iterable[Form]) -> list[str]:
    """Other spellings of the value `text` spells, in the separators, zones and fraction
    widths of the plain forms `forms` (and the shortest fraction): what a key column may
    hold beside it that the contract reads as the same value. Empty where none is known
    (not a value of the type, float64, bool)."""
    kind, forms = family(ctype), list(forms)
    out: set[str] = set()
    if kind in ("int", "decimal"):
        try:
            value = Decimal(text.strip())
        except ArithmeticError:
            return []
        if not value.is_finite():
            return []
        value = abs(value) if value == 0 else value
        digits = -min(0, int(value.normalize().as_tuple().exponent))
        out.add(f"{value:.{digits}f}")
        out.update(f"{value:.{w}f}" for _, _, _, w in forms if w >= digits)
    elif kind == "timestamp":
        try:
            instant = cast_text_time(pa.array([text]), arrow_type(ctype))[0].as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return []
        fraction = f"{instant.microsecond:06d}".rstrip("0")
        seps = {f[0] for f in forms} or {" "}
        zones = {f[1] for f in forms} or {""}
        widths = {f[3] for f in forms if f[3] >= len(fraction)} | {len(fraction)}
        for sep, zone, width in product(seps, zones, widths):
            try:
                local = instant.astimezone(_offset(zone))
            except OverflowError:  # year 1 or 9999 shifted past the calendar: none
                continue
            out.add(f"{local.year:04d}" + local.strftime(f"-%m-%d{sep}%H:%M:%S")
                    + ("." + fraction.ljust(width, "0") if width else "") + zone)
    elif kind == "date":
        try:
            out.add(pc.cast(pa.array([text]), pa.date32())[0].as_py().isoformat())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return []
    out.discard(text)
    return sorted(out)


def _offset(zone: str) -> timezone:
    """The zone a plain time's suffix names ('' and 'Z': UTC)."""
    if zone in ("", "Z"):
        return UTC
    sign = -1 if zone[0] == "-" else 1
    return timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))


__all__ = ["Form", "Spellings", "family", "of_arrow", "of_text", "of_values", "problem",
           "reads", "storage_class", "twins"]
