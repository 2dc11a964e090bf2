"""Labeled flows for training and evaluation: flow Parquet with labels, or captures plus a manifest.

Labeling captures is where most training sets go wrong, so the rule is explicit:

* a capture the manifest marks non-VPN gives every flow label 0;
* in a capture the manifest marks VPN, only the *tunnel* flows are labelled 1: flows
  to or from the scenario's ``server_port`` between the tunnel's two hosts (the pair of
  the largest such flow), plus ESP/AH (and for IPsec the IKE ports 500/4500, for PPTP
  GRE) between those hosts. When no flow uses the server port, the largest flow of the
  capture is taken as the tunnel. Every other flow of a VPN capture (the DNS lookup
  before connecting, an ARP-triggered ping, a stray broadcast) is *left out*, neither
  VPN nor non-VPN: it may belong to the VPN session without being the tunnel, and a
  wrong label costs more than a missing one. Non-VPN captures supply the negatives.

IP addresses and ports decide labels here; they are never features (features.py).

Augmentation (``augment`` copies per capture) re-meters each capture with packet-level
changes: random packet loss, timing jitter, a slowdown of all gaps (1-10x: lab links
between namespaces answer in microseconds, real paths in milliseconds), in about one copy
in three a coarse clock (timestamps rounded to 1 ms, 10 ms or 1 s), and a capture
window that starts and ends mid-way, so flows lose their beginnings (mid-flow) and their ends, and, in about
one copy in four, one direction of every flow (a tap on one leg of an asymmetric route,
or a mirror port fed one direction of a link, sees only that). Copies keep the
source capture as their group, so grouped evaluation never tests on a sibling of a
training capture; repeated lab captures of one scenario (``--repeat``) share the
scenario as their group for the same reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from classifier.errors import ErrorLog, UsageError
from classifier.flows.schema import FLOW_SCHEMA
from classifier.model.coalesce import coalesce_segments

#: Ports of incidental traffic in public captures marked as VPN (DNS, DHCP, NTP, NetBIOS, SSDP, LLMNR, mDNS).
INCIDENTAL_PORTS = frozenset({53, 67, 68, 123, 137, 138, 139, 1900, 5353, 5355})
#: Transport protocols without ports that only IPsec uses (ESP, AH).
IPSEC_PROTOS = (50, 51)

_TRUE = {"1", "vpn", "yes", "true", "y"}
_FALSE = {"0", "non-vpn", "nonvpn", "not-vpn", "no", "false", "n", "benign"}


@dataclass
class LabeledFlows:
    """Flow rows with labels, protocol names and the group (source capture) of each row."""

    table: pa.Table
    label: np.ndarray  # int8: 1 VPN, 0 non-VPN
    protocol: np.ndarray  # object: protocol name of VPN rows (None when unknown or non-VPN)
    group: np.ndarray  # object: source capture; augmented copies share their source's group
    variant: np.ndarray  # object: "original" or "augmented-K"
    inputs: list[dict] = field(default_factory=list)
    #: What the signature stage said of each row, when asked for (``signatures=True``):
    #: the protocol it named (None: no signature matched), and whether that is a VPN (False
    #: for plain encapsulation such as GRE or VXLAN). None for flow tables read from Parquet,
    #: which keep no payload heads for signatures to read.
    signature: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    @classmethod
    def concat(cls, parts: list[LabeledFlows]) -> LabeledFlows:
        # an input's record rides on its last part, which may hold no rows (an augmented copy
        # whose window kept no packet): keep every record, whichever parts are dropped
        inputs = [i for p in parts for i in p.inputs]
        parts = [p for p in parts if len(p)] or parts[:1]
        if not parts:
            return cls(FLOW_SCHEMA.empty_table(), np.zeros(0, np.int8), np.zeros(0, object),
                       np.zeros(0, object), np.zeros(0, object))
        cols = FLOW_SCHEMA.names
        sigs = [p.signature for p in parts]
        return cls(
            pa.concat_tables([p.table.select(cols).cast(FLOW_SCHEMA) for p in parts]),
            np.concatenate([p.label for p in parts]).astype(np.int8),
            np.concatenate([p.protocol for p in parts]),
            np.concatenate([p.group for p in parts]),
            np.concatenate([p.variant for p in parts]),
            inputs,
            None if any(s is None for s in sigs) else (np.concatenate([s[0] for s in sigs]),  # type: ignore[index]
                                                       np.concatenate([s[1] for s in sigs])),  # type: ignore[index]
        )

    def take(self, mask: np.ndarray) -> LabeledFlows:
        idx = np.flatnonzero(mask)
        sig = None if self.signature is None else (self.signature[0][idx], self.signature[1][idx])
        return LabeledFlows(self.table.take(pa.array(idx)), self.label[idx], self.protocol[idx],
                            self.group[idx], self.variant[idx], self.inputs, sig)

    def protocol_names(self) -> np.ndarray:
        """Protocol of each row for reports: the name, ``"unknown-vpn"`` or ``"non-vpn"``."""
        out = np.where(self.label == 1, "unknown-vpn", "non-vpn").astype(object)
        named = np.array([isinstance(p, str) and p != "" for p in self.protocol], bool)
        out[named & (self.label == 1)] = self.protocol[named & (self.label == 1)]
        return out

    def summary(self) -> dict:
        protos: dict[str, int] = {}
        for p in self.protocol_names()[self.label == 1]:
            protos[str(p)] = protos.get(str(p), 0) + 1
        return {"flows": len(self), "vpn_flows": int((self.label == 1).sum()),
                "non_vpn_flows": int((self.label == 0).sum()), "captures": self.capture_count(),
                "groups": len(np.unique(self.group)), "protocols": protos}

    def capture_count(self) -> int:
        """Distinct source captures (a group may hold several: the repeats of one lab scenario)."""
        if len(self) == 0:
            return 0
        return pc.count_distinct(self.table.column("capture")).as_py()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_labels(values: pa.ChunkedArray | pa.Array | list, where: str) -> np.ndarray:
    """1/0, booleans or vpn/non-vpn strings -> int8; a bad value names ``where`` and its row."""
    arr = values if isinstance(values, pa.ChunkedArray | pa.Array) else pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        num = pc.cast(arr, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        bad = ~np.isin(num, (0.0, 1.0))
        out = np.nan_to_num(num).astype(np.int8)
    else:
        text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))).fill_null("")
        text = text.to_numpy(zero_copy_only=False).astype(str)
        yes, no = np.isin(text, list(_TRUE)), np.isin(text, list(_FALSE))
        bad = ~(yes | no)
        out = yes.astype(np.int8)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UsageError(f"{where}: row {row}: label must be 1/0 or vpn/non-vpn, not {arr[row].as_py()!r}")
    return out


def load_parquet(path: str) -> LabeledFlows:
    """A flows Parquet (FLOW_SCHEMA columns) with ``label`` and optional ``protocol``."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UsageError(f"{path}: cannot read Parquet: {exc}") from None
    if "label" not in table.column_names:
        raise UsageError(f"{path}: a labeled flows Parquet needs a 'label' column (1/0 or vpn/non-vpn)")
    missing = [c for c in FLOW_SCHEMA.names if c not in table.column_names]
    if missing:
        raise UsageError(f"{path}: not a vpnid flow table; missing column(s): {', '.join(missing[:8])}")
    label = parse_labels(table.column("label"), path)
    protocol = (np.asarray(table.column("protocol").to_pylist(), object) if "protocol" in table.column_names
                else np.full(len(label), None, object))
    protocol[label == 0] = None
    group = np.asarray(table.column("capture").to_pylist(), object)
    group = np.array([f"{path}::{g}" for g in group], object) if len(group) else group
    flows = table.select(FLOW_SCHEMA.names)
    try:
        flows = flows.cast(FLOW_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise UsageError(f"{path}: flow columns do not match the flow schema: {exc}") from None
    info = {"path": path, "kind": "parquet", "sha256": sha256_file(path), "flows": len(label),
            "vpn_flows": int(label.sum())}
    return LabeledFlows(flows, label, protocol, group, np.full(len(label), "original", object), [info])


# ---------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Truth:
    """What a manifest says about one capture."""

    path: str
    vpn: bool | None  # None: mixed capture, not usable for training
    protocol: str | None
    server_port: int | None
    public: bool = False  # a public-corpus row: tunnel flows found by the incidental-port rule
    group: str = ""  # what grouped evaluation keeps together: the lab scenario, else the file


def _public_protocol(text: str) -> str | None:
    t = text.lower()
    for key, name in (("wireguard", "wireguard"), ("tailscale", "wireguard"), ("openvpn", "openvpn"),
                      ("ikev", "ipsec"), ("esp", "ipsec"), ("ah", "ipsec"), ("nat-t", "ipsec"),
                      ("shadowsocks", "proxy"), ("vmess", "proxy"), ("trojan", "proxy"), ("psiphon", "proxy"),
                      ("anyconnect", "openconnect"), ("forti", "tls-vpn"), ("softether", "softether"),
                      ("tinc", "tinc"), ("pptp", "pptp"), ("l2tp", "l2tp"), ("gre(ppp)", "pptp"),
                      ("wstunnel", "proxy"), ("dns-tunnel", "dns-tunnel"), ("icmp-tunnel", "icmp-tunnel"),
                      ("protonvpn", "wireguard"), ("tunnelbear", "wireguard")):
        if key in t:
            return name
    return "unknown-vpn"


#: Column of a labels manifest that says whether a capture is VPN (the first one present).
LABEL_COLUMNS = ("vpn", "label", "is_vpn")


def read_labels_manifest(mp: Path) -> dict[str, Truth]:
    """A labels manifest: ``file`` and ``vpn`` (or ``label``/``is_vpn``), optionally ``protocol``,
    ``server_port`` and ``group``; other columns are ignored, in any order. A ``file``
    that is a directory stands for every capture under it.

    Why: captures made elsewhere (a colleague's, a held-out set) come with a list of
    which file holds a VPN, not the lab's ten columns. A VPN file with a ``server_port``
    is labelled by the lab's tunnel rule (module docstring); without one, by the public
    corpus's rule (every flow but incidental services such as DNS and DHCP is VPN), which
    is approximate and suits captures of one tunnel. An empty label, or ``partial``,
    leaves the file out (mixed captures cannot be labelled per file).
    """
    from classifier.flows.api import expand_inputs

    text = mp.read_text(encoding="utf-8-sig")  # a spreadsheet's export may start with a byte-order mark
    first = text.split("\n", 1)[0]
    # a spreadsheet set to a comma-decimal locale separates columns with ';'
    delimiter = next((d for d in (",", ";", "\t") if d in first), ",")
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip().lower() for h in (reader.fieldnames or ())]
    reader.fieldnames = header
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    if "file" not in header or label_col is None:
        raise UsageError(f"{mp}:1: a manifest needs a file column and a label column ({', '.join(LABEL_COLUMNS)}); "
                         f"found {', '.join(header) or 'no header'} (or use the lab's MANIFEST.csv columns, or "
                         "the public corpus's contains_vpn)")
    out: dict[str, Truth] = {}
    for rec in reader:
        where = f"{mp}:{reader.line_num}"
        if not any(isinstance(v, str) and v.strip() for v in rec.values()):
            continue  # an empty row, as spreadsheets export after the last one
        file = (rec.get("file") or "").strip()
        if not file:
            raise UsageError(f"{where}: file must not be empty")
        flag = (rec.get(label_col) or "").strip().lower()
        if flag in ("", "partial", "mixed"):
            vpn = None
        elif flag in _TRUE or flag in _FALSE:
            vpn = flag in _TRUE
        else:
            raise UsageError(f"{where}: {label_col} must be yes/no, 1/0, true/false or vpn/non-vpn "
                             f"(empty or partial: left out), not {flag!r}")
        port_text = (rec.get("server_port") or "").strip()
        port = int(port_text) if port_text.isdigit() else None
        if port_text and (port is None or port > 65535):
            raise UsageError(f"{where}: server_port must be a port number (0-65535), not {port_text!r}")
        protocol = (rec.get("protocol") or "").strip().lower() or None
        group = (rec.get("group") or "").strip()
        target = (mp.parent / file).resolve()
        # a directory stands for every capture under it, each labelled alike
        paths = [str(Path(f).resolve()) for f in expand_inputs([str(target)])] if target.is_dir() else [str(target)]
        for path in paths:
            out[path] = Truth(path, vpn, protocol if vpn else None, port, public=bool(vpn) and port is None,
                              group=f"group:{group}" if group else "")
    return out


def read_truth(manifest: str | os.PathLike) -> dict[str, Truth]:
    """Map resolved capture path -> Truth, for the lab manifest, the public-corpus manifest or a labels manifest.

    Which one is told by the header: the lab's ten columns exactly, a ``contains_vpn``
    column (the public corpus), else a labels manifest (``read_labels_manifest``).
    """
    from classifier.lab.manifest import MANIFEST_COLUMNS

    mp = Path(manifest)
    try:
        head = mp.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{mp}: cannot read manifest: {exc}") from None
    header = next(csv.reader(io.StringIO(head[0]))) if head else []
    if "contains_vpn" in header:
        return _read_public_manifest(mp)
    if tuple(header) == MANIFEST_COLUMNS:
        return _read_lab_manifest(mp)
    return read_labels_manifest(mp)


def _read_public_manifest(mp: Path) -> dict[str, Truth]:
    """The public corpus's manifest: yes / no / partial per file in ``contains_vpn``."""
    out: dict[str, Truth] = {}
    with open(mp, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for rec in reader:
            flag = (rec.get("contains_vpn") or "").strip().lower()
            if flag not in ("yes", "no", "partial"):
                raise UsageError(f"{mp}:{reader.line_num}: contains_vpn must be yes, no or partial")
            vpn = {"yes": True, "no": False}.get(flag)
            proto = _public_protocol(rec.get("protocols", "")) if vpn else None
            path = str((mp.parent / rec["file"]).resolve())
            out[path] = Truth(path, vpn, proto, None, public=True)
    return out


def _read_lab_manifest(mp: Path) -> dict[str, Truth]:
    """The lab's MANIFEST.csv: repeated captures of one scenario are near-twins, so they share a group."""
    from classifier.lab.manifest import read_manifest_rows

    out: dict[str, Truth] = {}
    for row in read_manifest_rows(mp):
        path = str((mp.parent / row.file).resolve())
        out[path] = Truth(path, row.vpn, row.protocol if row.vpn else None, row.server_port,
                          group=f"scenario:{row.scenario}")
    return out


def _arr(table: pa.Table, name: str, fill: int = -1) -> np.ndarray:
    col = pc.cast(table.column(name), pa.int64())
    return col.fill_null(fill).to_numpy(zero_copy_only=False).astype(np.int64)


def tunnel_mask(table: pa.Table, truth: Truth) -> tuple[np.ndarray, np.ndarray]:
    """(vpn, keep) boolean masks over a VPN capture's flows: which are the tunnel, which are labeled.

    See the module docstring for the rule; ``keep`` is False for flows left out.
    """
    n = table.num_rows
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, bool)
    sport, dport = _arr(table, "src_port"), _arr(table, "dst_port")
    proto = _arr(table, "ip_proto")
    size = _arr(table, "bytes", 0)
    if truth.public:
        incidental = np.isin(sport, list(INCIDENTAL_PORTS)) | np.isin(dport, list(INCIDENTAL_PORTS)) | \
            np.isin(proto, [1, 2, 58])
        if truth.protocol in ("dns-tunnel", "icmp-tunnel"):
            incidental = np.zeros(n, bool)
        return ~incidental, np.ones(n, bool)
    src = np.asarray(table.column("src_ip").to_pylist(), object)
    dst = np.asarray(table.column("dst_ip").to_pylist(), object)
    name = (truth.protocol or "").lower()
    port_hit = np.zeros(n, bool)
    if truth.server_port is not None:
        port_hit = (sport == truth.server_port) | (dport == truth.server_port)
    if name.startswith("ipsec"):
        port_hit |= np.isin(sport, [500, 4500]) | np.isin(dport, [500, 4500]) | np.isin(proto, IPSEC_PROTOS)
    if name in ("pptp", "l2tp"):
        port_hit |= proto == 47
    if not port_hit.any():
        return size == size.max(), np.ones(n, bool)
    anchor = int(np.argmax(np.where(port_hit, size, -1)))
    pair = {src[anchor], dst[anchor]}
    same_pair = np.array([s in pair and d in pair for s, d in zip(src, dst, strict=True)], bool)
    vpn = port_hit & same_pair
    return vpn, vpn.copy()


def label_capture_flows(table: pa.Table, truth: Truth) -> tuple[np.ndarray, np.ndarray]:
    """(label, keep) for the flows of one capture."""
    n = table.num_rows
    if truth.vpn is None:
        return np.zeros(n, np.int8), np.zeros(n, bool)
    if not truth.vpn:
        return np.zeros(n, np.int8), np.ones(n, bool)
    vpn, keep = tunnel_mask(table, truth)
    return vpn.astype(np.int8), keep


# ---------------------------------------------------------------- augmentation


@dataclass
class Augmentation:
    """Packet-level changes for one augmented copy of a capture."""

    loss: float  # probability of dropping each packet
    jitter: float  # sigma of the log-normal factor applied to every inter-arrival gap
    slowdown: float  # factor applied to all gaps: a lab link of microseconds looks like a real path
    start: float  # fraction of the capture's packets skipped at the start (mid-flow start)
    stop: float  # fraction of packets after which the capture ends
    #: 0: both directions; 1: only packets from the lower (address, port) endpoint to the
    #: higher one; 2: only the other way. One direction of every flow, as a tap on one leg
    #: of an asymmetric route sees it.
    one_way: int = 0
    #: Timestamp resolution of the copy, ns (0: as captured): every timestamp rounded down to a
    #: multiple of it, as capture tools with millisecond clocks, or a host that stamps a burst
    #: of packets at once, write them. Relative timing reads gaps, and a clock that
    #: makes many of them 0 must not look like a new kind of traffic.
    tick_ns: int = 0
    #: Snapshot length of the copy, bytes per frame (0: as captured): every frame cut to it,
    #: its headers kept, as a headers-only capture (``tcpdump -s 96``) keeps them. Never
    #: drawn: ``load_captures(snaplens=...)`` (``vpnid train --snaplen``) sets it, for a
    #: model of headers-only captures. Mixed into the default model's copies, cut calls
    #: became its top out-of-fold non-VPN scores (docs/model.md, Headers-only captures).
    snaplen: int = 0
    #: TCP segments of the copy merged as a capture made on an end host shows them (segmentation
    #: and receive offloads, ``coalesce.py``), when they came at most this far apart, ns (0: as
    #: captured). Never drawn: ``load_captures(coalesce_ns=...)`` (``vpnid evaluate
    #: --host-capture``) sets it. Drawn for one copy in four, it cost the default model flows
    #: on host captures and on the wire alike (docs/model.md, Captures made on a host).
    coalesce_ns: int = 0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Augmentation:
        start = float(rng.choice([0.0, 0.0, rng.uniform(0.05, 0.6)]))
        stop = float(rng.choice([1.0, 1.0, rng.uniform(start + 0.2, 1.0)])) if start < 0.8 else 1.0
        loss, jitter = float(rng.choice([0.0, 0.005, 0.02, 0.05])), float(rng.choice([0.0, 0.2, 0.5]))
        slowdown = float(np.exp(rng.uniform(0.0, np.log(10.0))))
        one_way = int(rng.choice([0, 0, 0, 0, 0, 0, 1, 2]))
        tick_ns = int(rng.choice([0, 0, 0, 0, 0, 0, 1_000_000, 10_000_000, 1_000_000_000]))
        # the order of the draws fixes the shipped model: add new ones last
        return cls(loss=loss, jitter=jitter, slowdown=slowdown, start=start, stop=min(1.0, max(stop, start + 0.1)),
                   one_way=one_way, tick_ns=tick_ns)

    def describe(self) -> str:
        text = (f"loss={self.loss:g} jitter={self.jitter:g} slowdown={self.slowdown:.1f} "
                f"window={self.start:.2f}-{self.stop:.2f}")
        text += f" one-way={'low->high' if self.one_way == 1 else 'high->low'}" if self.one_way else ""
        text += f" tick={self.tick_ns / 1e6:g}ms" if self.tick_ns else ""
        text += f" coalesced={self.coalesce_ns / 1e3:g}us" if self.coalesce_ns else ""
        return text + (f" snaplen={self.snaplen}" if self.snaplen else "")


def lower_endpoint_sends(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Per packet: does it go from the lower (address, port) endpoint to the higher one?

    The flow engine's own rule (``sender_low`` in ``flows/_kernels.py``, ties to the
    sender), over a whole batch: the same answer for every packet of one direction of a
    flow and the opposite for the other, so keeping one answer keeps one direction.
    """
    sh, sl, dh, dl = cols["src_hi"], cols["src_lo"], cols["dst_hi"], cols["dst_lo"]
    return (sh < dh) | ((sh == dh) & ((sl < dl) | ((sl == dl) & (cols["sport"] <= cols["dport"]))))


class _PacketTransform:
    """Applies an Augmentation to consecutive PacketBatches of one capture (keeps time monotonic)."""

    def __init__(self, aug: Augmentation, total_packets: int, rng: np.random.Generator) -> None:
        self.aug, self.rng = aug, rng
        self.lo, self.hi = int(aug.start * total_packets), int(np.ceil(aug.stop * total_packets))
        self.seen = 0
        self.last_in: int | None = None
        self.last_out: int | None = None

    def __call__(self, batch):
        from classifier.packets.batch import PacketBatch

        n = batch.n
        pos = self.seen + np.arange(n)
        self.seen += n
        ts = batch.cols["ts"].astype(np.int64)
        # jitter: every gap (in capture order) scaled by its own log-normal factor
        if n:
            prev = self.last_in if self.last_in is not None else int(ts[0])
            gaps = np.diff(ts, prepend=prev).astype(float)
            gaps = np.maximum(gaps, 0.0)
            gaps *= self.aug.slowdown
            if self.aug.jitter > 0:
                gaps *= self.rng.lognormal(0.0, self.aug.jitter, n)
            start = self.last_out if self.last_out is not None else int(ts[0])
            new_ts = start + np.cumsum(gaps).astype(np.int64)
            self.last_in, self.last_out = int(ts[-1]), int(new_ts[-1])
            if self.aug.tick_ns:  # after last_out: the next batch continues the unrounded clock
                new_ts = new_ts // self.aug.tick_ns * self.aug.tick_ns
        else:
            new_ts = ts
        keep = (pos >= self.lo) & (pos < self.hi)
        if self.aug.loss > 0:
            keep &= self.rng.random(n) >= self.aug.loss
        if self.aug.one_way:
            keep &= lower_endpoint_sends(batch.cols) == (self.aug.one_way == 1)
        idx = np.flatnonzero(keep)
        cols = {k: v[idx] for k, v in batch.cols.items()}
        cols["ts"] = new_ts[idx]
        cols = _as_captured(cols, self.aug.snaplen, self.aug.coalesce_ns)
        return PacketBatch(batch.buf, cols, len(cols["ts"]))


class _CaptureAs:
    """A capture's packet batches as another capture point would have recorded them, nothing else.

    ``coalesce_ns``: TCP segments merged as on a host (``coalesce_segments``); ``snaplen``:
    every frame cut to that snapshot length (``cut_frames``). 0 leaves either as captured.
    """

    def __init__(self, snaplen: int = 0, coalesce_ns: int = 0) -> None:
        self.snaplen, self.coalesce_ns = snaplen, coalesce_ns

    def __call__(self, batch):
        from classifier.packets.batch import PacketBatch

        # coalescing changes columns in place: the batch's own stay as read
        cols = {k: v.copy() for k, v in batch.cols.items()} if self.coalesce_ns else dict(batch.cols)
        cols = _as_captured(cols, self.snaplen, self.coalesce_ns)
        return PacketBatch(batch.buf, cols, len(cols["ts"]))


def _as_captured(cols: dict[str, np.ndarray], snaplen: int, coalesce_ns: int) -> dict[str, np.ndarray]:
    """Decoded columns (the caller's to change) as a host (``coalesce_ns``) and a snapshot length
    (``snaplen``) would have captured them; 0 leaves either as it was. Merging comes first: a
    host cuts its super-packets to its snapshot length."""
    if coalesce_ns:
        rows = coalesce_segments(cols, coalesce_ns)
        cols = {k: v[rows] for k, v in cols.items()}
    if snaplen:
        cut_frames(cols, snaplen)
    return cols


def cut_frames(cols: dict[str, np.ndarray], snaplen: int) -> None:
    """Cut every frame of decoded packet columns to ``snaplen`` bytes, in place, headers kept.

    What a capture made with that snapshot length would hold: the payload bytes present
    are those inside the first ``snaplen`` bytes of the frame (none when the headers fill
    them); wire lengths, and so every size, stay as they were.
    """
    frame = np.minimum(cols["cap_len"], snaplen)
    room = cols["data_off"] + frame - cols["payload_off"]
    cols["payload_cap"] = np.clip(room, 0, cols["payload_cap"]).astype(cols["payload_cap"].dtype)
    cols["cap_len"] = frame.astype(cols["cap_len"].dtype)


def meter_capture(path: str, log: ErrorLog, transform: Callable | None = None, config=None) -> pa.Table:
    """Flows of one capture, optionally with every packet batch transformed first."""
    return meter_capture_signed(path, log, transform, config, signatures=False)[0]


def meter_capture_signed(path: str, log: ErrorLog, transform: Callable | None = None, config=None,
                         signatures: bool = True) -> tuple[pa.Table, tuple[np.ndarray, np.ndarray] | None]:
    """Flows of one capture and, with ``signatures``, the signature stage's (protocol, is VPN) per row.

    The signatures read the payload heads, which the flow table does not keep, so they run
    here, batch by batch, while the heads are at hand.
    """
    from classifier.flows.meter import FlowMeter
    from classifier.packets.capture import InputStats, iter_packet_batches
    from classifier.signatures import detect

    meter = FlowMeter(config, capture=path)
    parts: list[pa.Table] = []
    named: list[np.ndarray] = []  # per batch: the protocol a signature named, or None
    vpn: list[np.ndarray] = []  # per batch: whether that verdict is a VPN

    def collect(done) -> None:
        if done is not None and len(done):
            parts.append(done.table)
            if signatures:
                sig = detect(done)
                named.append(np.asarray(sig.column("vpn_protocol").to_pylist(), object))
                vpn.append(sig.column("is_vpn").to_numpy(zero_copy_only=False).astype(bool))

    for packets in iter_packet_batches(path, log, InputStats(path)):
        collect(meter.add(transform(packets) if transform else packets))
    collect(meter.flush())
    table = pa.concat_tables(parts) if parts else FLOW_SCHEMA.empty_table()
    if not signatures:
        return table, None
    return table, (np.concatenate(named or [np.zeros(0, object)]), np.concatenate(vpn or [np.zeros(0, bool)]))


def _count_packets(path: str, log: ErrorLog) -> int:
    from classifier.packets.capture import InputStats, iter_packet_batches

    return sum(b.n for b in iter_packet_batches(path, log, InputStats(path)))


def _draw_snaplen(rng: np.random.Generator, snaplens: tuple[int, ...]) -> int:
    """One copy's snapshot length: one of ``snaplens``, or 0 (whole frames) when there are none."""
    return int(rng.choice(snaplens)) if snaplens else 0


def load_captures(paths: list[str], truth: dict[str, Truth], augment: int = 0, seed: int = 0,
                  log: ErrorLog | None = None, config=None, say: Callable[[str], None] | None = None,
                  signatures: bool = False, snaplens: tuple[int, ...] = (), coalesce_ns: int = 0) -> LabeledFlows:
    """Meter captures, label their flows by the manifest, and add ``augment`` augmented copies each.

    ``signatures`` also keeps what the signature stage says of every row (``LabeledFlows.signature``).
    ``snaplens``: every capture and every copy is metered as if captured with a snapshot
    length drawn from these (a headers-only capture; docs/model.md, Headers-only captures),
    from a generator of its own, so the augmentation draws stay those without it.
    ``coalesce_ns``: every capture and copy metered as if captured on one of its hosts, TCP
    segments that came at most this far apart merged (``coalesce.py``; ``vpnid evaluate
    --host-capture``).
    """
    log = log if log is not None else ErrorLog()
    say = say or (lambda _m: None)
    parts: list[LabeledFlows] = []
    for path in paths:
        t = truth.get(str(Path(path).resolve()))
        if t is None:
            raise UsageError(f"{path}: capture is not listed in the manifest")
        if t.vpn is None:
            say(f"{path}: skipped (manifest marks it as mixed)")
            continue
        name_key = int(hashlib.sha256(Path(path).name.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([seed, name_key])
        cut_rng = np.random.default_rng([seed, name_key, 1])
        first = _draw_snaplen(cut_rng, snaplens)
        as_captured = _CaptureAs(first, coalesce_ns) if first or coalesce_ns else None
        variants: list[tuple[str, Callable | None]] = [("original", as_captured)]
        if augment:
            total = _count_packets(path, log)
            for k in range(augment):
                aug = replace(Augmentation.draw(rng), snaplen=_draw_snaplen(cut_rng, snaplens), coalesce_ns=coalesce_ns)
                variants.append((f"augmented-{k} {aug.describe()}", _PacketTransform(aug, total, rng)))
        vpn_rows = 0
        for variant, transform in variants:
            table, sig = meter_capture_signed(path, log, transform, config, signatures)
            label, keep = label_capture_flows(table, t)
            idx = np.flatnonzero(keep)
            table = table.take(pa.array(idx))
            label = label[idx]
            proto = np.where(label == 1, t.protocol, None).astype(object)
            parts.append(LabeledFlows(table, label, proto, np.full(len(idx), t.group or t.path, object),
                                      np.full(len(idx), variant, object),
                                      signature=None if sig is None else (sig[0][idx], sig[1][idx])))
            if variant == "original":
                vpn_rows = int(label.sum())
                if t.vpn and vpn_rows == 0:
                    log.warn(path, "manifest says VPN but no tunnel flow was found")
                orig_flows = len(idx)
        parts[-1].inputs.append({"path": path, "kind": "capture", "sha256": sha256_file(path),
                                 "vpn": t.vpn, "protocol": t.protocol, "flows": orig_flows,
                                 "vpn_flows": vpn_rows, "augmented_copies": augment,
                                 **({"snaplen": first} if snaplens else {}),
                                 **({"coalesce_ns": coalesce_ns} if coalesce_ns else {})})
    return LabeledFlows.concat(parts) if parts else LabeledFlows.concat([])


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


def load_labeled(inputs: Iterable[str], manifest: str | None = None, augment: int = 0, seed: int = 0,
                 log: ErrorLog | None = None, config=None, say: Callable[[str], None] | None = None,
                 signatures: bool = False, snaplens: tuple[int, ...] = (), coalesce_ns: int = 0) -> LabeledFlows:
    """Everything ``vpnid train`` / ``vpnid evaluate`` accept as labeled input, as one LabeledFlows.

    Inputs: flow Parquet files with labels; MANIFEST.csv files (all their captures);
    directories (their captures, labeled by ``manifest`` or the directory's MANIFEST.csv);
    capture files (labeled by ``manifest`` or a MANIFEST.csv beside them).

    ``signatures`` keeps the signature stage's verdict of every row as well; it needs
    captures, since a flow table in Parquet keeps no payload heads. So does ``snaplens``
    (``load_captures``): a flow table's payload statistics are computed already, and so does
    ``coalesce_ns``: its packets are counted already.
    """
    from classifier.flows.api import expand_inputs

    log = log if log is not None else ErrorLog()
    parts: list[LabeledFlows] = []
    truth: dict[str, Truth] = read_truth(manifest) if manifest else {}
    captures: list[str] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise UsageError(f"{item}: no such file or directory")
        if p.is_file() and _is_parquet(p):
            if signatures:
                raise UsageError(f"{item}: a flow table keeps no payload heads, so signatures cannot be "
                                 "scored on it; give the captures and their manifest")
            if snaplens:
                raise UsageError(f"{item}: a flow table's payload statistics are computed already, so it cannot "
                                 "be cut to a snapshot length; give the captures and their manifest")
            if coalesce_ns:
                raise UsageError(f"{item}: a flow table's packets are counted already, so it cannot be read as "
                                 "a host's capture; give the captures and their manifest")
            parts.append(load_parquet(str(p)))
            continue
        if p.is_file() and p.suffix.lower() == ".csv":
            t = read_truth(p)
            truth.update(t)
            listed = sorted(k for k in t if Path(k).exists())
            missing = sorted(k for k in t if not Path(k).exists())
            if missing:
                log.warn(str(p), f"{len(missing)} listed capture(s) missing, e.g. {missing[0]}")
            captures.extend(listed)
            continue
        found = expand_inputs([str(p)], log)
        if not manifest:
            mdir = p if p.is_dir() else p.parent
            mfile = mdir / "MANIFEST.csv"
            if not mfile.is_file():
                raise UsageError(f"{item}: captures need a manifest: give --manifest or put MANIFEST.csv beside them")
            for k, v in read_truth(mfile).items():
                truth.setdefault(k, v)
        if p.is_dir():  # a directory: only the captures its manifest lists
            found = [f for f in found if str(Path(f).resolve()) in truth]
        captures.extend(found)
    seen: set[str] = set()
    unique = [c for c in captures if not (str(Path(c).resolve()) in seen or seen.add(str(Path(c).resolve())))]
    if unique:
        parts.append(load_captures(unique, truth, augment, seed, log, config, say, signatures, snaplens,
                                   coalesce_ns))
    if not parts:
        raise UsageError("no labeled input: give flow Parquet files with a label column, or captures and a manifest")
    out = LabeledFlows.concat(parts)
    if len(out) == 0:
        raise UsageError("the labeled inputs hold no usable flows")
    return out


def data_hash(X: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the training matrix and labels: two models with the same hash saw the same data."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X, np.float32).tobytes())
    h.update(np.ascontiguousarray(y, np.int8).tobytes())
    return h.hexdigest()


def inputs_hash(inputs: list[dict]) -> str:
    """sha256 over the input files' names and contents, independent of where the directory lies.

    Why: the shipped model is trained on lab captures outside the repository; this one
    number in the card says whether a regenerated training set is the same set.
    """
    lines = sorted(f"{Path(i['path']).name} {i.get('sha256', '')}" for i in inputs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def label_counts(label: np.ndarray) -> dict[str, int]:
    return {"vpn": int((label == 1).sum()), "non_vpn": int((label == 0).sum())}


__all__ = ["LabeledFlows", "Truth", "data_hash", "label_counts", "load_labeled"]
