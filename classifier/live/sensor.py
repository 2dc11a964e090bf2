"""The live sensor: interface -> flow meter -> early verdicts and alerts -> rotating Parquet.

One loop, one thread:

1. read whatever the capture has (a decoded batch, waiting at most until the next task);
2. feed it to the same ``FlowMeter`` the offline reader uses, with the same timeouts,
   so a replayed capture gives the flows ``vpnid classify`` finds in the file;
3. once a second, end flows idle by the wall clock (``FlowMeter.expire``) so quiet
   flows end even when no packet arrives, and label the open flows that changed
   (``FlowMeter.snapshot`` + ``label_batch``): a signature or a confident model raises
   the alert while the flow is still running; a flow is alerted at most once;
4. flows that end are labelled again (the final verdict), judged with the earlier ended
   flows of their endpoint (``RunningEndpoints``: a client's flows to one server port),
   written to the rotating Parquet files, and alerted if they are VPN and were not
   alerted yet.

Stopping (``stop()``, called from SIGINT/SIGTERM handlers) drains the capture, ends every
open flow, writes them and closes the files: nothing captured is lost.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from classifier.flows import state as S
from classifier.flows.batch import FlowBatch
from classifier.flows.config import FlowConfig
from classifier.flows.meter import FlowMeter
from classifier.flows.schema import CLASSIFY_SCHEMA, REPORT_SCHEMA
from classifier.live.alerts import AlertWriter, alert_records
from classifier.live.capture import Capture, CaptureError, CaptureOptions, KernelStats, open_capture
from classifier.live.rotate import RotatingParquet
from classifier.model.endpoint_context import RunningEndpoints
from classifier.pipeline import LabelOptions, label_batch


@dataclass
class LiveOptions:
    """Everything ``vpnid live`` was asked to do."""

    capture: CaptureOptions
    out_dir: Path
    alerts: str | None = None  # None or "-": standard output
    rotate_s: float = 300.0
    config: FlowConfig = field(default_factory=FlowConfig)
    label: LabelOptions = field(default_factory=LabelOptions)
    tick_s: float = 1.0  # wall-clock expiry and early labelling interval
    early: bool = True
    early_model_packets: int = 10  # a model verdict on an open flow needs this many packets
    early_max_flows: int = 4096  # open flows labelled per tick at most
    stats_s: float = 60.0  # progress line interval (0: never)
    duration_s: float | None = None  # stop by itself after this long
    quiet: bool = False
    extra_metadata: dict = field(default_factory=dict)


@dataclass
class LiveTotals:
    """Counters of a run, for the log, the Parquet metadata and the final summary."""

    batches: int = 0
    packets: int = 0
    flows_ended: int = 0
    vpn_flows: int = 0
    alerts_open: int = 0
    alerts_ended: int = 0
    early_checks: int = 0
    files: int = 0
    error: str | None = None  # why the capture ended early (interface down), if it did


class Sensor:
    """Runs the capture loop until ``stop()`` (or ``duration_s``); see the module docstring."""

    def __init__(self, opts: LiveOptions, log: IO[str] | None = None, capture: Capture | None = None) -> None:
        """``capture`` replaces the interface (anything with read/drain/stats/close/method)."""
        self.opts = opts
        self.log = log or sys.stderr
        self.interface = opts.capture.interface
        if capture is None:
            from classifier.live.warmup import warm

            warm(opts.label, opts.config)  # before the ring exists: nothing waits in it meanwhile
            capture = open_capture(opts.capture)
        self.capture = capture
        self.meter = FlowMeter(opts.config, capture=self.interface)
        self.alerts = AlertWriter(opts.alerts)
        self.totals = LiveTotals()
        self.kernel = KernelStats()
        self._period_drops = 0
        self._period_packets = 0
        self._stopping = False
        self._alerted: set[int] = set()
        self.endpoints = RunningEndpoints(encrypted=opts.label.signatures) if opts.label.judges_endpoints else None
        # per table slot: the flow last labelled early there, its payload heads and packets then
        self._checked_fid = np.full(0, -1, np.int64)
        self._checked_heads = np.zeros(0, np.int64)
        self._checked_pk = np.zeros(0, np.int64)
        schema = classified_schema(opts.label)
        c = opts.capture
        meta = {"interface": self.interface, "bpf": c.bpf or "", "snaplen": c.snaplen,
                "capture_method": self.capture.method, "idle_timeout_s": opts.config.idle_timeout_s,
                "active_timeout_s": opts.config.active_timeout_s, **opts.extra_metadata}
        self.files = RotatingParquet(opts.out_dir, schema, opts.rotate_s, meta, self._closing_metadata)

    # -- control -------------------------------------------------------------------------
    def stop(self, *_args: object) -> None:
        """Ask the loop to finish (safe from a signal handler: it only sets a flag)."""
        self._stopping = True

    def say(self, text: str) -> None:
        if not self.opts.quiet:
            print(f"vpnid live: {text}", file=self.log, flush=True)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> LiveTotals:
        o = self.opts
        self.say(f"capturing on {self.interface} ({self.capture.method}"
                 + (f", filter {o.capture.bpf!r}" if o.capture.bpf else "") + f") -> {o.out_dir}")
        started = time.monotonic()
        try:
            try:
                self._loop(started)
            except CaptureError as exc:  # the interface went away: keep what was captured
                self.totals.error = str(exc)
                print(f"vpnid live: error: {exc}", file=self.log, flush=True)
            self._finish()
        except BaseException:
            self.files.abort()
            raise
        finally:
            self.capture.close()
            self.alerts.close()
        return self.totals

    def _loop(self, started: float) -> None:
        o = self.opts
        next_tick = started + o.tick_s
        next_stats = started + o.stats_s if o.stats_s > 0 else float("inf")
        while not self._stopping:
            mono = time.monotonic()
            if o.duration_s is not None and mono - started >= o.duration_s:
                break
            wait = max(0.0, min(next_tick, next_stats) - mono)
            self._feed(self.capture.read(min(wait, 0.1)))
            mono = time.monotonic()
            if mono >= next_tick:
                now = time.time_ns()
                self._poll_kernel()
                self._ended(self.meter.expire(now), now)
                if o.early:
                    self._early(now)
                if self.files.due(now):
                    self._rotate(now)
                next_tick = mono + o.tick_s
            if mono >= next_stats:
                self._progress()
                next_stats = mono + o.stats_s

    def _feed(self, packets) -> None:
        if packets is None:
            return
        self.totals.batches += 1
        self.totals.packets += packets.n
        done = self.meter.add(packets)
        if done is not None and len(done):
            self._ended(done, time.time_ns())

    def _finish(self) -> None:
        """Drain the capture, end every open flow, write them, close the file."""
        try:
            for packets in self.capture.drain():
                self._feed(packets)
        except CaptureError:
            pass  # already reported: what the ring held up to the error has been read
        now = time.time_ns()
        self._ended(self.meter.expire(now), now)
        self._ended(self.meter.flush(), now)
        self._poll_kernel()
        path = self.files.close(now)
        if path is not None:
            self.totals.files += 1
            self.say(f"wrote {path}")
        k = self.kernel
        t = self.totals
        self.say(f"stopped: {t.packets} packets, {t.flows_ended} flows ({t.vpn_flows} VPN), "
                 f"{t.alerts_open + t.alerts_ended} alerts ({t.alerts_open} while open), "
                 f"{t.files} Parquet file(s); kernel: {k.packets} packets, {k.drops} dropped")

    # -- verdicts ------------------------------------------------------------------------
    def _ended(self, done: FlowBatch | None, now_ns: int) -> None:
        if done is None or len(done) == 0:
            return
        table = label_batch(done, self.opts.label)
        if self.endpoints is not None:
            table = self.endpoints.apply(table, self.opts.label.registry)
        if self.files.due(now_ns):
            self._rotate(now_ns)
        self.files.write(table, now_ns)
        self.totals.flows_ended += table.num_rows
        is_vpn = table.column("is_vpn").to_numpy(zero_copy_only=False)
        self.totals.vpn_flows += int(is_vpn.sum())
        fid = table.column("flow_id").to_numpy().astype(np.int64)
        if self._alerted:
            seen = np.isin(fid, np.fromiter(self._alerted, np.int64, len(self._alerted)))
            self._alerted.difference_update(int(x) for x in fid[seen])
        else:
            seen = np.zeros(len(fid), bool)
        rows = np.flatnonzero(is_vpn & ~seen)
        if len(rows):
            self.alerts.write(alert_records(table, rows, now_ns, self.interface, "ended"))
            self.totals.alerts_ended += len(rows)

    def _early(self, now_ns: int) -> None:
        """Label open flows that changed since they were last looked at; alert confident VPN ones.

        Signatures read the payload heads, so a flow is relabelled when its number of heads
        has doubled (1, 2, 4, 8, 16: at most five times); the model reads statistics that
        settle as a flow grows, so with a model a flow is also relabelled when its packet
        count has doubled. That bounds the work per flow however long it runs; at most
        ``early_max_flows`` flows are labelled per tick (flows never looked at first), the
        rest wait for the next tick, so a burst of new flows cannot stall the capture.
        """
        meter = self.meter
        slots = meter.open_slots()
        if len(slots) == 0:
            return
        if len(self._checked_fid) < meter.capacity:  # the table grew: slots keep their numbers
            grow = meter.capacity - len(self._checked_fid)
            self._checked_fid = np.concatenate([self._checked_fid, np.full(grow, -1, np.int64)])
            self._checked_heads = np.concatenate([self._checked_heads, np.zeros(grow, np.int64)])
            self._checked_pk = np.concatenate([self._checked_pk, np.zeros(grow, np.int64)])
        si = meter.pool.si
        fid = si[slots, S.FLOW_ID]
        heads = si[slots, S.HEADN]
        pk = si[slots, S.PK0] + si[slots, S.PK0 + 1]
        same = self._checked_fid[slots] == fid
        due = np.frexp(heads)[1] > np.frexp(np.where(same, self._checked_heads[slots], 0))[1]
        if self.opts.label.model is not None:
            prev = np.where(same, self._checked_pk[slots], 0)
            due |= (pk >= self.opts.early_model_packets) & (np.frexp(pk)[1] > np.frexp(prev)[1])
        if self._alerted:
            due &= ~np.isin(fid, np.fromiter(self._alerted, np.int64, len(self._alerted)))
        pick = np.flatnonzero(due)
        if len(pick) > self.opts.early_max_flows:
            pick = pick[np.argsort(same[pick], kind="stable")[: self.opts.early_max_flows]]
        if len(pick) == 0:
            return
        cand = slots[pick]
        self._checked_fid[cand] = fid[pick]
        self._checked_heads[cand] = heads[pick]
        self._checked_pk[cand] = pk[pick]
        batch = meter.snapshot(cand)
        self.totals.early_checks += len(batch)
        table = label_batch(batch, self.opts.label)
        is_vpn = table.column("is_vpn").to_numpy(zero_copy_only=False)
        if not is_vpn.any():
            return
        by_model = pc.fill_null(pc.equal(table.column("detection"), "model"), False).to_numpy(
            zero_copy_only=False).astype(bool)
        packets = table.column("packets").to_numpy()
        rows = np.flatnonzero(is_vpn & (~by_model | (packets >= self.opts.early_model_packets)))
        if len(rows) == 0:
            return
        self.alerts.write(alert_records(table, rows, now_ns, self.interface, "open"))
        self.totals.alerts_open += len(rows)
        self._alerted.update(int(x) for x in table.column("flow_id").to_numpy().astype(np.int64)[rows])

    # -- files and counters --------------------------------------------------------------
    def _poll_kernel(self) -> None:
        before = self.kernel.drops
        self.kernel = self.capture.stats()
        if self.kernel.drops > before:
            self.say(f"warning: the kernel dropped {self.kernel.drops - before} packets "
                     f"({self.kernel.drops} in total): the capture is not keeping up")

    def _closing_metadata(self) -> dict[str, object]:
        self._poll_kernel()
        k = self.kernel
        period = {"period_kernel_packets": k.packets - self._period_packets,
                  "period_kernel_drops": k.drops - self._period_drops}
        self._period_packets, self._period_drops = k.packets, k.drops
        return {**k.as_dict(), **period}

    def _rotate(self, now_ns: int) -> None:
        path = self.files.close(now_ns)
        if path is not None:
            self.totals.files += 1
            self.say(f"wrote {path}")

    def _progress(self) -> None:
        t, k = self.totals, self.kernel
        self.say(f"{t.packets} packets, {self.meter.open_flows} open flows, {t.flows_ended} ended "
                 f"({t.vpn_flows} VPN), {t.alerts_open + t.alerts_ended} alerts; kernel drops {k.drops}")


def classified_schema(label: LabelOptions) -> pa.Schema:
    """Schema of the Parquet files: flows, verdicts and, with a registry, its columns."""
    return REPORT_SCHEMA if label.registry is not None else CLASSIFY_SCHEMA
