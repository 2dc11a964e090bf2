"""Live mode: classify traffic from a network interface (a mirror port) as it passes.

``capture`` reads frames with AF_PACKET (a TPACKET_V3 ring, or a plain socket) into
decoded ``PacketBatch``es; ``sensor.Sensor`` feeds them to the offline flow engine,
labels open flows early and ended flows finally, and writes ``alerts`` (JSON lines) and
``rotate``-d Parquet files. ``vpnid live`` (classifier/cli/live.py) is the front end;
docs/live.md describes the behaviour.
"""
