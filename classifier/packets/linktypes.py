"""Link-layer types the decoder understands (LINKTYPE_* values of pcap/pcapng)."""

ETHERNET = 1
PPP = 9
RAW_12 = 12  # LINKTYPE_RAW on some BSDs
RAW_14 = 14  # LINKTYPE_RAW on OpenBSD
NULL = 0  # BSD loopback, family in host byte order
LOOP = 108  # OpenBSD loopback, family in network byte order
PPP_HDLC = 50
RAW = 101
LINUX_SLL = 113
IPV4 = 228
IPV6 = 229
NFLOG = 239
LINUX_SLL2 = 276

SUPPORTED: dict[int, str] = {
    ETHERNET: "Ethernet",
    PPP: "PPP",
    PPP_HDLC: "PPP in HDLC framing",
    RAW_12: "raw IP",
    RAW_14: "raw IP",
    NULL: "BSD loopback",
    LOOP: "OpenBSD loopback",
    RAW: "raw IP",
    LINUX_SLL: "Linux cooked (SLL)",
    IPV4: "raw IPv4",
    IPV6: "raw IPv6",
    NFLOG: "Linux NFLOG",
    LINUX_SLL2: "Linux cooked v2 (SLL2)",
}


def describe(linktype: int) -> str:
    return SUPPORTED.get(linktype, f"link type {linktype}")
