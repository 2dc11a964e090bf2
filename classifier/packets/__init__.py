"""Reading packets: capture files -> :class:`PacketBatch` (numpy columns over a byte buffer).

``capture.iter_packet_batches(path)`` detects the format from the magic bytes (pcap in
both byte orders and resolutions, pcapng, either gzip-compressed), scans records with a
compiled kernel and decodes link, IP and transport headers for a whole chunk at once.
"""

from classifier.packets.batch import PacketBatch, PacketStatus
from classifier.packets.capture import InputStats, iter_packet_batches

__all__ = ["InputStats", "PacketBatch", "PacketStatus", "iter_packet_batches"]
