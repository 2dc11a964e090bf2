"""vpnid: find VPN tunnels in captured or mirrored network traffic.

The data moves through stages, one subpackage each:

    packets/   capture files -> PacketBatch (numpy columns over a byte buffer)
    flows/     PacketBatch -> FlowBatch (bidirectional flows: Arrow table + payload heads)
    signatures/ FlowBatch -> per-flow protocol verdicts with evidence
    model/     flow features -> VPN probability
    registry/  registered-IP list and matching
    report/    Parquet, terminal and HTML reports
    batch/, live/, cli/  the front ends

The one obvious entry point for a notebook is :func:`classifier.read_flows`.
"""

from classifier._version import __version__

__all__ = ["__version__", "read_flows"]


def read_flows(*inputs, **kwargs):
    """Read captures and return their flows as one ``pyarrow.Table`` (see docs/schema.md)."""
    from classifier.flows.api import read_flows as _read_flows

    return _read_flows(*inputs, **kwargs)
