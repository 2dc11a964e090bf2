"""Endpoint context: a client's flows to one server port, judged together.

Why: a per-connection proxy (Shadowsocks, Trojan, VMess) opens one flow per request it
carries, and a short proxied fetch on its own looks like many other short encrypted
exchanges; the model calls most such flows VPN and leaves the rest just under its
threshold. An analyst would not: when most of one client's flows to one server port
look like a tunnel, they all go to the same proxy. So after the model has scored every
flow, the flows of one **endpoint** are judged together:

* an endpoint is one capture's flows from one client address (``src_ip``, the
  initiator) to one server address and port (``dst_ip``, ``dst_port``) over one IP
  protocol (``ip_proto``);
* only flows the model scored count (a signature's verdict is final, and a flow a
  signature explained as no VPN is not the model's);
* when an endpoint has at least ``MIN_FLOWS`` such flows and the model called more than
  half of them VPN, its other scored flows are VPN too: ``detection`` = ``endpoint``,
  ``confidence`` = the median P(VPN) of its scored flows (over the threshold, since most
  are), ``vpn_protocol`` = the protocol the model guessed most often for the endpoint's
  VPN flows, and evidence that says how many of its flows the model called VPN.

A second rule, for proxies the model does not call: with the signatures on, when an
endpoint has at least ``MIN_FLOWS`` scored flows and more than half of them are **fully
encrypted both ways** (TCP from the SYN, each side's first payload random: no TLS, no
header, not text; ``features.fully_encrypted_both_ways``), its other scored flows are VPN
too, with ``vpn_protocol`` = the model's guess for the endpoint's flows it called VPN, or
``ENCRYPTED_PROXY`` when it called none. Shadowsocks carrying plain HTTP is such
an endpoint: the model leaves its flows under the threshold (their sizes are those of many
short encrypted exchanges), yet every connection to the proxy is random from its first
byte. Few other protocols are (Wu et al., USENIX Security 2023), and the common ones are
named first: Telegram's transport by its signature (so the rule needs the signatures; with
``--no-signatures`` Telegram's flows would count), BitTorrent's encrypted peer wire by
having few connections per peer.

The rules read verdicts and flow columns, not the threshold: they run on labelled tables
wherever they are (a batch client that never loads the model included).

The rules only ever add VPN verdicts: the first only where the model already called most
of an endpoint's flows VPN, so a non-VPN flow is lifted only beside a majority of false
alarms on the same endpoint; the second only where most of an endpoint's flows are random
from their first byte both ways and no signature named them. docs/model.md (Endpoint
context) has what they changed.

They need every flow of a capture, so it runs where a whole result exists: ``vpnid
classify`` and ``vpnid report`` (two passes over a spooled table, memory bounded by the
endpoints' scores, not the flows' rows), ``vpnid evaluate``, and ``vpnid batch`` over the
whole dataset before it commits (a run is one capture: its files are stitched as one).
``vpnid live`` judges an endpoint on the flows that ended so far (``RunningEndpoints``).
"""

from __future__ import annotations

import tempfile
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from classifier.model.features import ENCRYPTED_COLUMNS, fully_encrypted_both_ways

#: Fewest model-scored flows an endpoint needs before its flows are judged together.
#: Chosen on out-of-fold scores (docs/model.md): from 5, no lab scenario's non-VPN
#: endpoints but one uTP capture's were lifted; from 3, BitTorrent peers were too.
MIN_FLOWS = 5

#: The columns that name an endpoint.
KEY_COLUMNS = ("capture", "src_ip", "dst_ip", "dst_port", "ip_proto")

#: ``vpnid batch``: a run's files are one capture (rotated files stitched), so no ``capture``.
RUN_KEY_COLUMNS = KEY_COLUMNS[1:]

DETECTION = "endpoint"

#: ``vpn_protocol`` of the flows the fully-encrypted rule lifts.
ENCRYPTED_PROXY = "encrypted-proxy"


def endpoint_keys(table: pa.Table, keys: tuple[str, ...] = KEY_COLUMNS) -> pa.Array:
    """One string per row naming its endpoint (the ``keys`` columns joined; nulls as empty)."""
    parts = [pc.cast(table.column(c).combine_chunks(), pa.string()) for c in keys]
    return pc.binary_join_element_wise(*parts, "\x1f", null_handling="replace", null_replacement="")


@dataclass
class EndpointVerdict:
    """Per endpoint code: scored flows, how many the model called VPN, how many were fully
    encrypted both ways, their median P(VPN), lifted or not, and lifted by the fully-encrypted
    rule alone (the model did not call a majority)."""

    flows: np.ndarray
    vpn: np.ndarray
    encrypted: np.ndarray
    median: np.ndarray
    lifted: np.ndarray
    by_encryption: np.ndarray


def passes(flows: np.ndarray | int, vpn: np.ndarray | int, min_flows: int = MIN_FLOWS) -> np.ndarray | bool:
    """The rule: enough scored flows, and the model called more than half of them VPN."""
    return (flows >= min_flows) & (2 * vpn > flows)


def judge(codes: np.ndarray, vpn: np.ndarray, proba: np.ndarray, n_codes: int,
          min_flows: int = MIN_FLOWS, encrypted: np.ndarray | None = None) -> EndpointVerdict:
    """Group scored flows into verdicts (``codes[i]``: flow i's endpoint, ``vpn[i]``: the model
    called it VPN, ``proba[i]``: its P(VPN), ``encrypted[i]``: it is fully encrypted both ways;
    None: the fully-encrypted rule is off)."""
    codes = np.asarray(codes, np.int64)
    proba = np.asarray(proba, np.float64)
    flows = np.bincount(codes, minlength=n_codes)

    def count(flags: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=np.asarray(flags, float), minlength=n_codes).astype(np.int64)

    vpn = count(vpn)
    encrypted = count(encrypted) if encrypted is not None else np.zeros(n_codes, np.int64)
    median = np.full(n_codes, np.nan)
    if len(codes):
        order = np.lexsort((proba, codes))
        sorted_p = proba[order]
        start = np.searchsorted(codes[order], np.arange(n_codes))
        has = flows > 0
        lo = start[has] + (flows[has] - 1) // 2
        hi = start[has] + flows[has] // 2
        median[has] = 0.5 * (sorted_p[lo] + sorted_p[hi])
    by_model = passes(flows, vpn, min_flows)
    by_encryption = passes(flows, encrypted, min_flows) & ~by_model
    return EndpointVerdict(flows=flows, vpn=vpn, encrypted=encrypted, median=median, lifted=by_model | by_encryption,
                           by_encryption=by_encryption)


class Lift(NamedTuple):
    """Per row: the score with endpoint context, lifted by either rule, lifted by the fully-encrypted rule alone."""

    score: np.ndarray
    lifted: np.ndarray
    by_encryption: np.ndarray


def lift_scores(table: pa.Table, proba: np.ndarray, scored: np.ndarray, threshold: float,
                min_flows: int = MIN_FLOWS, encrypted: bool = False) -> Lift:
    """``vpnid evaluate``'s view of the rules for an in-memory table.

    ``score`` is ``proba`` with every lifted flow raised to its endpoint's median (to 1 when
    only the fully-encrypted rule lifted it: the model's probability does not describe that
    verdict), so ``score >= threshold`` is the verdict with endpoint context. ``encrypted``:
    apply the fully-encrypted rule too (the signatures ran).
    """
    proba = np.asarray(proba, np.float64)
    scored = np.asarray(scored, bool) & np.isfinite(proba)
    codes = pc.dictionary_encode(endpoint_keys(table)).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_codes = int(codes.max()) + 1 if len(codes) else 0
    vpn = proba >= threshold
    fe = fully_encrypted_both_ways(table)[scored] if encrypted else None
    v = judge(codes[scored], vpn[scored], proba[scored], n_codes, min_flows, fe)
    lifted = scored & v.lifted[codes] & ~vpn
    by_encryption = lifted & v.by_encryption[codes]
    score = proba.copy()
    score[lifted] = np.where(by_encryption[lifted], 1.0, v.median[codes[lifted]])
    return Lift(score, lifted, by_encryption)


def model_proba(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(VPN), scored, called VPN) of a labelled table: the model's own verdicts.

    ``label_batch`` writes ``confidence`` = P for a flow the model called VPN and 1 - P
    for one it did not; rows another stage decided are not scored.
    """
    detection = table.column("detection").to_numpy(zero_copy_only=False)
    scored = detection == "model"
    conf = pc.fill_null(table.column("confidence"), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    is_vpn = pc.fill_null(table.column("is_vpn"), False).to_numpy(zero_copy_only=False).astype(bool)
    proba = np.where(is_vpn, conf, 1.0 - conf)
    scored &= np.isfinite(proba)
    return np.where(scored, proba, np.nan), scored, scored & is_vpn


class EndpointTally:
    """Pass one over labelled tables: every scored flow's endpoint, verdict and P(VPN)
    (and, with ``encrypted``, whether it is fully encrypted both ways).

    Memory: a code, two flags and a probability per scored flow plus one entry per
    endpoint, not the flows' rows.
    """

    def __init__(self, min_flows: int = MIN_FLOWS, keys: tuple[str, ...] = KEY_COLUMNS,
                 encrypted: bool = False) -> None:
        self.min_flows = min_flows
        self.keys = keys
        self.encrypted = encrypted
        self.ids: dict[str, int] = {}
        self._codes: list[np.ndarray] = []
        self._vpn: list[np.ndarray] = []
        self._fe: list[np.ndarray] = []
        self._proba: list[np.ndarray] = []
        self._protocols: dict[int, Counter] = {}
        self.verdict: EndpointVerdict | None = None

    def codes(self, table: pa.Table, add: bool = False) -> np.ndarray:
        """Endpoint codes of ``table``'s rows (-1: an endpoint not seen in pass one)."""
        enc = pc.dictionary_encode(endpoint_keys(table, self.keys))
        names = enc.dictionary.to_pylist()
        if add:
            for k in names:
                self.ids.setdefault(k, len(self.ids))
        local = np.array([self.ids.get(k, -1) for k in names], np.int64)
        idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        return local[idx] if len(idx) else np.zeros(0, np.int64)

    @property
    def columns(self) -> list[str]:
        """The labelled table's columns ``add`` reads (a caller may read only these)."""
        return [*self.keys, "is_vpn", "vpn_protocol", "confidence", "detection",
                *(ENCRYPTED_COLUMNS if self.encrypted else ())]

    def add(self, table: pa.Table) -> np.ndarray:
        """Record a labelled table's scored flows; returns the endpoint codes of those the rules
        could lift (scored, not VPN), so that a caller can skip tables where none is lifted."""
        proba, scored, vpn = model_proba(table)
        if not scored.any():
            return np.zeros(0, np.int64)
        codes = self.codes(table, add=True)
        self._codes.append(codes[scored])
        self._vpn.append(vpn[scored])
        if self.encrypted:
            self._fe.append(fully_encrypted_both_ways(table)[scored])
        self._proba.append(proba[scored])
        guesses = pa.table({"code": codes[vpn], "name": pc.fill_null(
            table.column("vpn_protocol").take(pa.array(np.flatnonzero(vpn))), "unknown")})
        for row in guesses.group_by(["code", "name"]).aggregate([([], "count_all")]).to_pylist():
            self._protocols.setdefault(row["code"], Counter())[row["name"]] += row["count_all"]
        return np.unique(codes[scored & ~vpn])

    def finish(self) -> EndpointVerdict:
        def cat(parts: list[np.ndarray], dtype) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        codes, vpn, proba = cat(self._codes, np.int64), cat(self._vpn, bool), cat(self._proba, np.float64)
        fe = cat(self._fe, bool) if self.encrypted else None
        self._codes, self._vpn, self._fe, self._proba = [], [], [], []
        self.verdict = judge(codes, vpn, proba, len(self.ids), self.min_flows, fe)
        return self.verdict

    def apply(self, table: pa.Table, registry: Any = None) -> pa.Table:
        """Pass two: relabel a table's lifted flows (and re-annotate the registry columns)."""
        v = self.verdict if self.verdict is not None else self.finish()
        proba, scored, vpn = model_proba(table)
        codes = self.codes(table)
        lift = scored & ~vpn & (codes >= 0)
        lift[lift] = v.lifted[codes[lift]]
        if not lift.any():
            return table
        rows = np.flatnonzero(lift)
        c = codes[rows]
        guess = [_most_common(self._protocols.get(int(k))) for k in c]
        return relabel(table, rows, _pick(v, c), guess, proba[rows], registry)


def _most_common(names: Counter | None) -> str | None:
    """The protocol the model guessed most often for an endpoint's VPN flows (None: it called none)."""
    return names.most_common(1)[0][0] if names else None


def _pick(v: EndpointVerdict, codes: np.ndarray) -> EndpointVerdict:
    """The verdicts of ``codes`` (one per lifted row)."""
    return EndpointVerdict(flows=v.flows[codes], vpn=v.vpn[codes], encrypted=v.encrypted[codes],
                           median=v.median[codes], lifted=v.lifted[codes], by_encryption=v.by_encryption[codes])


def relabel(table: pa.Table, rows: np.ndarray, v: EndpointVerdict, guess: list[str | None], own: np.ndarray,
            registry: Any = None) -> pa.Table:
    """``table`` with ``rows`` called VPN by their endpoint (``v``: their endpoints' verdicts, one per
    row; ``guess``: the protocol the model guessed most for the endpoint's VPN flows, None when it
    called none; ``own``: the flow's own P(VPN)), registry columns redone.

    A row the model's majority lifted takes the endpoint's median P(VPN) as confidence; one the
    fully-encrypted rule alone lifted takes the share of the endpoint's flows that are fully
    encrypted. Both take the model's guess as protocol, so one endpoint reads as one protocol;
    without a guess, ``ENCRYPTED_PROXY`` for the fully-encrypted rule.
    """
    evidence = table.column("evidence").take(pa.array(rows)).to_pylist()
    by_fe = v.by_encryption
    heads = [f"{e} of {n} flows from this client to this server port fully encrypted both ways (TCP, each "
             "side's first payload random: no TLS, no header, not text; no signature named them)" if fe else
             f"{k} of {n} flows from this client to this server port called VPN by the model (median P(VPN) {m:.3f})"
             for fe, e, k, n, m in zip(by_fe, v.encrypted, v.vpn, v.flows, v.median, strict=True)]
    notes = [f"endpoint: {h}; this flow alone: " + (e if e else f"P(VPN)={p:.3f}")
             for h, p, e in zip(heads, own, evidence, strict=True)]
    protocol = [g if g is not None else ENCRYPTED_PROXY if fe else "unknown" for g, fe in zip(guess, by_fe, strict=True)]
    confidence = np.where(by_fe, v.encrypted / np.maximum(v.flows, 1), v.median)
    table = _set(table, "is_vpn", rows, [True] * len(rows))
    table = _set(table, "vpn_protocol", rows, protocol)
    table = _set(table, "confidence", rows, np.asarray(confidence, float).tolist())
    table = _set(table, "detection", rows, [DETECTION] * len(rows))
    table = _set(table, "evidence", rows, notes)
    if registry is not None:
        table = registry.annotate(table)
    return table


class RunningEndpoints:
    """``vpnid live``'s endpoint context: each endpoint judged on the flows that ended so far.

    A live sensor cannot wait for a capture's end, so when flows end it adds the model's
    verdicts to their endpoints' records and lifts an ended flow whose endpoint (its flows
    ended before it and with it) passes the rule. Flows written before their endpoint
    passed stay as they were. Memory is bounded: the last ``keep`` verdicts per endpoint
    and at most ``max_endpoints`` endpoints, the least recently seen dropped first.
    ``encrypted``: apply the fully-encrypted rule too (the signatures ran).
    """

    def __init__(self, min_flows: int = MIN_FLOWS, keep: int = 64, max_endpoints: int = 100_000,
                 encrypted: bool = False) -> None:
        self.min_flows, self.keep, self.max_endpoints = min_flows, keep, max_endpoints
        self.encrypted = encrypted
        self._seen: OrderedDict[str, tuple[deque, Counter]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def apply(self, table: pa.Table, registry: Any = None) -> pa.Table:
        """Record the ended flows of ``table`` and return it with its lifted flows relabelled."""
        proba, scored, vpn = model_proba(table)
        rows = np.flatnonzero(scored)
        if not len(rows):
            return table
        keys = endpoint_keys(table.take(pa.array(rows))).to_pylist()
        names = table.column("vpn_protocol").take(pa.array(rows)).to_pylist()
        fe = fully_encrypted_both_ways(table)[rows] if self.encrypted else np.zeros(len(rows), bool)
        for key, p, yes, enc, name in zip(keys, proba[rows], vpn[rows], fe, names, strict=True):
            rec = self._seen.pop(key, None) or (deque(maxlen=self.keep), Counter())
            rec[0].append((float(p), bool(yes), bool(enc)))
            if yes:
                rec[1][name or "unknown"] += 1
            self._seen[key] = rec
        while len(self._seen) > self.max_endpoints:
            self._seen.popitem(last=False)
        # judge this batch's endpoints on their records with the shared rule (``judge``)
        batch_keys = list(dict.fromkeys(keys))
        code_of = {k: i for i, k in enumerate(batch_keys)}
        records = [self._seen.get(k, ((), Counter())) for k in batch_keys]
        sizes = [len(r) for r, _ in records]
        flat = np.array([x for r, _ in records for x in r], np.float64).reshape(-1, 3)  # (P(VPN), VPN, encrypted)
        v = judge(np.repeat(np.arange(len(batch_keys)), sizes), flat[:, 1] > 0, flat[:, 0], len(batch_keys),
                  self.min_flows, flat[:, 2] > 0 if self.encrypted else None)
        codes = np.fromiter((code_of[k] for k in keys), np.int64, len(keys))
        lift = v.lifted[codes] & ~vpn[rows]
        if not lift.any():
            return table
        c = codes[lift]
        guess = [_most_common(records[k][1]) for k in c]
        return relabel(table, rows[lift], _pick(v, c), guess, proba[rows[lift]], registry)


def _set(table: pa.Table, name: str, rows: np.ndarray, values: list) -> pa.Table:
    """``table`` with column ``name`` replaced at ``rows`` by ``values`` (in row order)."""
    pos = table.schema.get_field_index(name)
    field = table.schema.field(pos)
    mask = np.zeros(table.num_rows, bool)
    mask[rows] = True
    col = table.column(name).combine_chunks()
    return table.set_column(pos, field, pc.replace_with_mask(col, pa.array(mask), pa.array(values, field.type)))


def with_endpoint_context(tables: Iterable[pa.Table], registry: Any = None, min_flows: int = MIN_FLOWS,
                          spool_dir: str | None = None, encrypted: bool = False) -> Iterator[pa.Table]:
    """Labelled tables in, the same tables with endpoint context out (two passes).

    Pass one spools every table to a temporary Parquet file and tallies the scored
    flows; pass two reads the spool back one table at a time and relabels. Nothing is
    yielded before the input is exhausted, and the spool is removed afterwards.
    ``encrypted``: apply the fully-encrypted rule too (only when the signatures ran).
    """
    tally = EndpointTally(min_flows, encrypted=encrypted)
    with tempfile.TemporaryDirectory(prefix="vpnid-endpoints-", dir=spool_dir) as tmp:
        path = Path(tmp) / "labelled.parquet"
        writer: pq.ParquetWriter | None = None
        try:
            for table in tables:
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table, row_group_size=max(1, table.num_rows))
                tally.add(table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            return
        tally.finish()
        spool = pq.ParquetFile(path)
        for i in range(spool.num_row_groups):
            yield tally.apply(spool.read_row_group(i), registry)
