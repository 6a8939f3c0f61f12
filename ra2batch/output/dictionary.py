"""The data dictionary: every field of every output table, with its type, description, unit and range.

Read from the schemas' field metadata (``output.schema.described``): the contract of this ra2batch
version (:func:`contract`), or an output's tables as written (:func:`written`: their Delta schemas
at the published version, so an output written before the metadata existed shows empty entries).
A run writes the contract beside its tables as ``DATA_DICTIONARY.md`` (:func:`write_dictionary`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass

import pyarrow as pa

import ra2batch
from ra2batch.output import delta
from ra2batch.output.reader import Snapshot
from ra2batch.output.runs import RUNS, RUNS_TABLE
from ra2batch.output.schema import TABLES
from ra2batch.storage import Location

DICTIONARY = "DATA_DICTIONARY.md"


@dataclass(frozen=True)
class Entry:
    """One field of one table."""

    table: str
    field: str
    type: str
    unit: str
    range: str
    description: str


def contract() -> dict[str, pa.Schema]:
    """Every table's schema as this ra2batch version writes it, ``runs`` last."""
    return {**{name: t.schema for name, t in TABLES.items()}, RUNS_TABLE: RUNS}


def _delta_schema(table) -> pa.Schema:
    """A Delta table's schema in Arrow terms, its description as schema metadata (as the contract's)."""
    schema = pa.schema(table.schema().to_arrow())
    return schema.with_metadata({"description": table.metadata().description or ""})


def written(snapshot: Snapshot) -> dict[str, pa.Schema]:
    """Every table's schema as the output of ``snapshot`` holds it: each table at the version its
    manifest names, ``runs`` at its latest."""
    schemas = {name: _delta_schema(snapshot.table(name)) for name in TABLES}
    return {**schemas, RUNS_TABLE: _delta_schema(delta.open_table(snapshot.out, RUNS_TABLE))}


def _type(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_type(t.value_type)}>"
    return str(t)


def _meta(metadata: dict[bytes, bytes] | None, key: str) -> str:
    return (metadata or {}).get(key.encode(), b"").decode()


def entries(schemas: dict[str, pa.Schema]) -> list[Entry]:
    """One :class:`Entry` per field of each table, in schema order."""
    return [Entry(name, f.name, _type(f.type), _meta(f.metadata, "unit"), _meta(f.metadata, "range"),
                  _meta(f.metadata, "description")) for name, schema in schemas.items() for f in schema]


def _cell(text: str) -> str:
    """``text`` as a Markdown table cell: a pipe would end it."""
    return text.replace("|", "\\|")


def _markdown(schemas: dict[str, pa.Schema], source: str) -> str:
    lines = ["# ra2batch data dictionary", "", source]
    for name, schema in schemas.items():
        lines += ["", f"## {name}", "", _cell(_meta(schema.metadata, "description")), "",
                  "| field | type | unit | range | description |", "|---|---|---|---|---|"]
        lines += [f"| `{e.field}` | {e.type} | {e.unit} | {e.range} | {_cell(e.description)} |"
                  for e in entries({name: schema})]
    return "\n".join(lines) + "\n"


def render(schemas: dict[str, pa.Schema], fmt: str, source: str) -> str:
    """The dictionary of ``schemas`` as Markdown (``md``, headed by ``source``), CSV or JSON (one object:
    ``source`` and each table's ``description`` and ``fields``)."""
    if fmt == "md":
        return _markdown(schemas, source)
    rows = entries(schemas)
    if fmt == "csv":
        sink = io.StringIO()
        writer = csv.DictWriter(sink, fieldnames=list(Entry.__dataclass_fields__), lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(e) for e in rows)
        return sink.getvalue()
    tables = {name: {"description": _meta(schema.metadata, "description"),
                     "fields": [{k: v for k, v in asdict(e).items() if k != "table"} for e in rows if e.table == name]}
              for name, schema in schemas.items()}
    return json.dumps({"source": source, "tables": tables}, indent=1) + "\n"


def contract_source() -> str:
    """The heading line of the contract's dictionary."""
    return f"The tables that ra2batch {ra2batch.__version__} writes under a scoring job's --output."


def write_dictionary(out: Location) -> None:
    """Write the contract as ``DATA_DICTIONARY.md`` beside the tables of ``out`` (a few kB)."""
    out.write_bytes(render(contract(), "md", contract_source()).encode(), DICTIONARY)
