"""Raw per-flow state: the accumulator layout shared by the kernel, finalisation and merging.

A flow's state is a row of fixed-width numpy arrays (``si`` int64 counters, ``sf``
float64 running means, the first packets, the payload heads). Finalising turns rows
into the documented flow table (``FLOW_SCHEMA``); because sizes and inter-arrival
times are kept as count/mean/M2 (Welford), partial states of one flow seen in
different files can be merged exactly (``merge_rows``) before finalising.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier.flows.batch import HEAD_BYTES, HEAD_PACKETS
from classifier.flows.schema import FIRST_PACKETS

# --- int64 columns of ``si`` (index 0 of a pair is the initiator's direction, +1 the responder's)
FIRST, LAST = 0, 1
PK0, BY0, PL0 = 2, 4, 6  # packets, IP bytes, payload bytes per direction
SMIN0, SMAX0 = 8, 10  # packet size min/max per direction
LTS0 = 12  # last timestamp per direction
IMIN0, IMAX0 = 14, 16  # inter-arrival min/max per direction, ns
BIMIN, BIMAX = 18, 19  # bidirectional inter-arrival min/max, ns
TCP0 = 20  # 8 counters: FIN, SYN, RST, PSH, ACK, URG, ECE, CWR (bit order of the flags byte)
FIRSTFLAGS = 28  # TCP flags of the first packet, -1 for non-TCP
FSEEN0 = 29  # OR of TCP flags per direction
CLOSED = 31  # 0 open, 1 FIN both ways, 2 RST
HEADN, HD0 = 32, 33  # payload heads stored, in total and per direction
FN = 35  # first packets stored
TRUNC, FRAGS = 36, 37
FLOW_ID = 38
INIT_LOW = 39  # 1 when the initiator is the numerically lower endpoint of the key
ACTIVE = 40
END = 41
IPVER, VLAN, PROTO, HAS_PORTS = 42, 43, 44, 45
PPK0 = 46  # payload-carrying packets per direction
N_HIST = 12  # payload-size histogram bins per direction (edges: PAYLOAD_HIST_EDGES)
PHIST0 = 48  # histogram of direction 0 at PHIST0..PHIST0+N_HIST-1, direction 1 right after
N_INT = PHIST0 + 2 * N_HIST

#: Lower edges of the payload-size histogram bins, bytes (the last bin is open-ended).
#: Fine below 128 bytes, where encrypted inner ACKs and keepalives of tunnels sit.
PAYLOAD_HIST_EDGES = np.array([1, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1280], np.int64)

# --- float64 columns of ``sf``
F_SMEAN0, F_SM2_0 = 0, 2  # size mean and M2 per direction
F_IMEAN0, F_IM2_0 = 4, 6  # inter-arrival mean and M2 per direction (ns)
F_BIMEAN, F_BIM2 = 8, 9
N_FLOAT = 10

# --- end reasons
REASON_IDLE, REASON_ACTIVE, REASON_FIN, REASON_RST, REASON_EOF = 0, 1, 2, 3, 4
REASONS = np.array(["idle", "active", "fin", "rst", "eof"], dtype=object)

# --- control scalars of the table
C_NOW, C_NEXT_SWEEP, C_FREE_TOP, C_DONE_N, C_NEXT_ID, C_ACTIVE_N = range(6)

ROW_ARRAYS = ("keys", "hashes", "si", "sf", "fsize", "fdir", "fts", "hdir", "hlen", "hcap", "hts", "hseq",
              "hdata")


@dataclass
class FlowState:
    """Rows of raw flow state (one per flow); the same arrays the kernel updates."""

    keys: np.ndarray  # (n, 5) uint64: low endpoint hi/lo, high endpoint hi/lo, proto|vlan|ports
    hashes: np.ndarray  # (n,) uint64
    si: np.ndarray  # (n, N_INT) int64
    sf: np.ndarray  # (n, N_FLOAT) float64
    fsize: np.ndarray  # (n, FIRST_PACKETS) int32
    fdir: np.ndarray  # (n, FIRST_PACKETS) uint8
    fts: np.ndarray  # (n, FIRST_PACKETS) int64
    hdir: np.ndarray  # (n, HEAD_PACKETS) uint8
    hlen: np.ndarray  # (n, HEAD_PACKETS) int32
    hcap: np.ndarray  # (n, HEAD_PACKETS) uint8
    hts: np.ndarray  # (n, HEAD_PACKETS) int64
    hseq: np.ndarray  # (n, HEAD_PACKETS) uint32
    hdata: np.ndarray  # (n, HEAD_PACKETS, HEAD_BYTES) uint8

    @classmethod
    def allocate(cls, n: int) -> FlowState:
        k, b, f = HEAD_PACKETS, HEAD_BYTES, FIRST_PACKETS
        return cls(
            keys=np.zeros((n, 5), np.uint64), hashes=np.zeros(n, np.uint64),
            si=np.zeros((n, N_INT), np.int64), sf=np.zeros((n, N_FLOAT), np.float64),
            fsize=np.zeros((n, f), np.int32), fdir=np.zeros((n, f), np.uint8), fts=np.zeros((n, f), np.int64),
            hdir=np.zeros((n, k), np.uint8), hlen=np.zeros((n, k), np.int32), hcap=np.zeros((n, k), np.uint8),
            hts=np.zeros((n, k), np.int64), hseq=np.zeros((n, k), np.uint32),
            hdata=np.zeros((n, k, b), np.uint8),
        )

    def __len__(self) -> int:
        return len(self.hashes)

    def take(self, idx: np.ndarray) -> FlowState:
        return FlowState(*(getattr(self, a)[idx] for a in ROW_ARRAYS))

    @classmethod
    def concat(cls, parts: list[FlowState]) -> FlowState:
        if not parts:
            return cls.allocate(0)
        return cls(*(np.concatenate([getattr(p, a) for p in parts]) for a in ROW_ARRAYS))

    def grow(self, n: int) -> FlowState:
        """A copy with room for ``n`` rows (the first ``len(self)`` rows kept)."""
        bigger = FlowState.allocate(n)
        m = len(self)
        for a in ROW_ARRAYS:
            getattr(bigger, a)[:m] = getattr(self, a)
        return bigger
