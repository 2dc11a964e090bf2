"""Flow engine settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlowConfig:
    """Timeouts and limits of the flow meter.

    idle_timeout_s: a flow with no packet for this long ends (reason ``idle``).
    active_timeout_s: a flow older than this ends and the next packet starts a new one
        (reason ``active``), so long tunnels still report periodically.
    close_linger_s: after RST, or FIN in both directions, late packets of the closing
        handshake (final ACK, retransmitted FIN) still join the flow for this long;
        a new SYN starts a new flow at once.
    sweep_interval_s: how often (in capture time) idle flows are looked for.
    """

    idle_timeout_s: float = 120.0
    active_timeout_s: float = 1800.0
    close_linger_s: float = 5.0
    sweep_interval_s: float = 1.0
    initial_capacity: int = 1 << 14

    def __post_init__(self) -> None:
        for name in ("idle_timeout_s", "active_timeout_s", "close_linger_s", "sweep_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def ns(self) -> tuple[int, int, int, int]:
        s = 1_000_000_000
        return (int(self.idle_timeout_s * s), int(self.active_timeout_s * s),
                int(self.close_linger_s * s), int(self.sweep_interval_s * s))
