"""docs/schema.md documents every column of the flow schemas, with the right type and nullability."""

from __future__ import annotations

import re

import pyarrow as pa
from conftest import REPO

from classifier.flows.batch import PayloadHeads
from classifier.flows.schema import CLASSIFY_FIELDS, FLOW_FIELDS, REGISTRY_FIELDS
from classifier.packets.batch import COLUMNS
from classifier.packets.linktypes import SUPPORTED

DOC = (REPO / "docs" / "schema.md").read_text()


def _rows() -> dict[str, tuple[str, str]]:
    """Column name -> (type, null) from the markdown tables of docs/schema.md."""
    rows = {}
    for m in re.finditer(r"^\| `([a-z0-9_]+)` \| ([^|]+) \| (yes|no) \|", DOC, re.MULTILINE):
        rows[m.group(1)] = (m.group(2).strip().replace("\\", ""), m.group(3))
    return rows


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}, {t.tz}]"
    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return {"double": "float64", "bool": "bool"}.get(str(t), str(t))


def test_every_schema_field_is_documented_with_type_and_nullability():
    rows = _rows()
    for f in FLOW_FIELDS + CLASSIFY_FIELDS + REGISTRY_FIELDS:
        assert f.name in rows, f"{f.name} missing from docs/schema.md"
        doc_type, doc_null = rows[f.name]
        assert doc_type == _type_name(f.type), f.name
        assert doc_null == ("yes" if f.nullable else "no"), f.name


def test_packet_columns_payload_heads_and_link_types_are_documented():
    for name, _dtype in COLUMNS:
        assert f"`{name}`" in DOC, name
    for name in PayloadHeads.__dataclass_fields__:
        assert f"| `{name}` |" in DOC, name
    for lt in SUPPORTED:
        assert re.search(rf"^\| [0-9, ]*\b{lt}\b[0-9, ]* \|", DOC, re.MULTILINE), lt
    for key in ("vpnid.version", "vpnid.inputs", "vpnid.idle_timeout_s", "vpnid.active_timeout_s"):
        assert f"`{key}`" in DOC
