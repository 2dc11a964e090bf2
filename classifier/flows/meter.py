"""FlowMeter: the streaming flow engine (packets in, finished flows out).

Used the same way offline (``classifier.flows.api``), in batch and live:

    meter = FlowMeter(FlowConfig(), capture="mirror0")
    for packets in batches:
        done = meter.add(packets)      # flows that ended on these packets
    rest = meter.flush()               # flows still open at the end of input

Memory grows with the number of concurrent flows (the table doubles when full),
never with the number of packets.
"""

from __future__ import annotations

import numpy as np

from classifier.flows import _kernels as K
from classifier.flows import state as S
from classifier.flows.batch import HEAD_PACKETS_PER_DIR, FlowBatch
from classifier.flows.config import FlowConfig
from classifier.flows.finalize import finalize
from classifier.packets.batch import PacketBatch

_FRAG_CACHE = 1 << 12


class FlowMeter:
    """Bidirectional 5-tuple (+VLAN) flow table with idle/active timeouts and TCP close."""

    def __init__(self, config: FlowConfig | None = None, capture: str = "", raw: bool = False) -> None:
        self.config = config or FlowConfig()
        self.capture = capture
        self.raw = raw  # drains return FlowState (for merging partial flows) instead of FlowBatch
        cap = max(1024, 1 << (int(self.config.initial_capacity) - 1).bit_length())
        self.pool = S.FlowState.allocate(cap)
        self.index = np.zeros(2 * cap, np.int64)
        self.free = np.arange(cap - 1, -1, -1, dtype=np.int64)
        self.done = np.zeros(cap, np.int64)
        self.ctl = np.zeros(6, np.int64)
        self.ctl[S.C_FREE_TOP] = cap
        self.fc_key = np.zeros((_FRAG_CACHE, 3), np.uint64)
        self.fc_val = np.zeros(_FRAG_CACHE, np.int64)
        self.packets = 0

    @property
    def capacity(self) -> int:
        return len(self.pool)

    @property
    def open_flows(self) -> int:
        return int(self.ctl[S.C_ACTIVE_N])

    @property
    def now_ns(self) -> int:
        """Latest packet timestamp seen."""
        return int(self.ctl[S.C_NOW])

    def add(self, batch: PacketBatch) -> FlowBatch | S.FlowState | None:
        """Feed a packet batch; return the flows that ended (or None)."""
        idle, active, linger, every = self.config.ns
        p, c, st = batch, batch.cols, self.pool
        out = []
        i = 0
        while True:
            i, code = K.run(
                i, p.n, p.buf, c["status"], c["ts"], c["ip_ver"], c["ip_proto"], c["src_hi"], c["src_lo"],
                c["dst_hi"], c["dst_lo"], c["sport"], c["dport"], c["has_ports"], c["tcp_flags"], c["tcp_seq"],
                c["ip_len"], c["payload_off"], c["payload_len"], c["payload_cap"], c["vlan"], c["frag"],
                c["frag_id"], c["cap_len"], c["wire_len"],
                st.keys, st.hashes, st.si, st.sf, st.fsize, st.fdir, st.fts, st.hdir, st.hlen, st.hcap, st.hts,
                st.hseq, st.hdata, self.index, self.free, self.done, self.ctl, self.fc_key, self.fc_val,
                idle, active, linger, every, HEAD_PACKETS_PER_DIR)
            if code == K.DONE:
                break
            drained = self._drain()
            if drained is not None:
                out.append(drained)
            if self.ctl[S.C_FREE_TOP] < self.capacity // 4:
                self._grow()
            st = self.pool
        self.packets += p.n
        drained = self._drain()
        if drained is not None:
            out.append(drained)
        return self._join(out)

    def expire(self, now_ns: int | None = None) -> FlowBatch | S.FlowState | None:
        """End flows idle (or too old) at ``now_ns`` (wall clock in live mode)."""
        idle, active, linger, _ = self.config.ns
        now = max(int(now_ns if now_ns is not None else self.ctl[S.C_NOW]), int(self.ctl[S.C_NOW]))
        self.ctl[S.C_NOW] = now
        K.sweep(now, self.pool.si, self.index, self.pool.hashes, self.done, self.ctl, idle, active, linger, False)
        return self._drain()

    def flush(self) -> FlowBatch | S.FlowState | None:
        """End every open flow (reason ``eof`` unless it had closed) and return them."""
        idle, active, linger, _ = self.config.ns
        K.flush_all(self.pool.si, self.index, self.pool.hashes, self.done, self.ctl, idle, active, linger)
        return self._drain()

    def open_slots(self) -> np.ndarray:
        """Table slots of the flows open now (in slot order), for :meth:`snapshot`."""
        return np.flatnonzero(self.pool.si[:, S.ACTIVE] != 0)

    def snapshot(self, slots: np.ndarray | None = None) -> FlowBatch | S.FlowState:
        """Copy of open flows as they stand now (all, or the given slots), without ending them.

        Live mode labels flows before they end (a WireGuard handshake should not wait for
        the flow's idle timeout). The rows are copies, so the table keeps updating them;
        their ``end_reason`` is ``eof`` (still open). Given slots that hold no open flow
        are left out; rows carry their ``flow_id``.
        """
        if slots is None:
            slots = self.open_slots()
        slots = np.asarray(slots, np.int64)
        rows = self.pool.take(slots[self.pool.si[slots, S.ACTIVE] != 0])
        rows.si[:, S.END] = S.REASON_EOF
        return rows if self.raw else finalize(rows, self.capture)

    def _drain(self) -> FlowBatch | S.FlowState | None:
        n = int(self.ctl[S.C_DONE_N])
        if n == 0:
            return None
        slots = self.done[:n].copy()
        rows = self.pool.take(slots)
        top = int(self.ctl[S.C_FREE_TOP])
        self.free[top:top + n] = slots[::-1]
        self.ctl[S.C_FREE_TOP] = top + n
        self.ctl[S.C_DONE_N] = 0
        return rows if self.raw else finalize(rows, self.capture)

    def _grow(self) -> None:
        old = self.capacity
        new = 2 * old
        self.pool = self.pool.grow(new)
        free = np.zeros(new, np.int64)
        top = int(self.ctl[S.C_FREE_TOP])
        added = np.arange(new - 1, old - 1, -1, dtype=np.int64)
        free[: len(added)] = added
        free[len(added): len(added) + top] = self.free[:top]
        self.free = free
        self.ctl[S.C_FREE_TOP] = top + len(added)
        self.done = np.zeros(new, np.int64)
        self.index = np.zeros(2 * new, np.int64)
        K.rebuild_index(self.index, self.pool.keys, self.pool.hashes, self.pool.si)

    def _join(self, parts: list) -> FlowBatch | S.FlowState | None:
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return S.FlowState.concat(parts) if self.raw else FlowBatch.concat(parts)
