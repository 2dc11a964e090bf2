"""Prefix-preserving pseudonymization of IP addresses (Crypto-PAn), IPv4 and IPv6.

Why prefix-preserving: a report or flows dataset shared with researchers should hide
who the hosts are but keep the network structure: two addresses that share a /24 (or a
/48) before still share one after, so subnets, clients behind one gateway and
server farms remain visible. Crypto-PAn (Xu, Fan, Ammar, Moon, ICNP 2002) does this
with AES: bit ``i`` of the output is bit ``i`` of the input XOR the first bit of
``AES_K(first i input bits || pad bits)``, so an output prefix depends only on the input
prefix of the same length. The mapping is a bijection per family (IPv4 stays IPv4,
IPv6 stays IPv6), deterministic for a key (the same address gets the same pseudonym in
every file of a run and across runs with the same key), and without the key it cannot
be inverted short of breaking AES.

This module follows the reference implementation exactly for IPv4 (checked against its
published sample trace) and the common 128-bit generalization for IPv6.

Vectorized: for ``N`` distinct addresses all ``N * bits`` AES inputs are built with
NumPy and encrypted in one ECB call, so thousands of addresses take milliseconds.

Key: 32 bytes (16 AES key, 16 pad seed). ``key_from_spec`` turns the command-line
value into a key: ``hex:`` followed by 64 hex digits is used as is (interoperable with
other Crypto-PAn tools); ``@FILE`` reads the value from a file (keeps it out of the
shell history and process list); anything else is a passphrase stretched with
PBKDF2-HMAC-SHA256, so a short guessable key is at least slow to brute-force.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from classifier.errors import UsageError

KEY_BYTES = 32
_PBKDF2_SALT = b"vpnid crypto-pan key v1"
_PBKDF2_ROUNDS = 200_000
_CHUNK = 4096  # addresses per AES call: bounds memory at CHUNK * 128 * 16 bytes

# a dotted quad not embedded in a longer dotted number (a version 1.2.3.4.5), but possibly
# followed by a full stop or a file suffix ("from 10.1.2.3.", "sensor-10.1.2.3.pcap")
_V4_TEXT = re.compile(r"(?<!\d)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_V6_TEXT = re.compile(r"(?<![0-9A-Fa-f:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
                      r"(?![0-9A-Fa-f:])")


def key_from_spec(spec: str) -> bytes:
    """The ``--anonymize`` value -> a 32-byte Crypto-PAn key (see the module docstring)."""
    if spec.startswith("@"):
        path = Path(spec[1:])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"--anonymize: cannot read key file {path}: {exc.strerror or exc}") from None
        if len(data) == KEY_BYTES:
            return data
        spec = data.decode("utf-8", "replace").strip()
    if spec.lower().startswith("hex:"):
        try:
            key = bytes.fromhex(spec[4:].strip())
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise UsageError("--anonymize hex:KEY needs exactly 64 hex digits (32 bytes)")
        return key
    if not spec:
        raise UsageError("--anonymize needs a non-empty key")
    return hashlib.pbkdf2_hmac("sha256", spec.encode(), _PBKDF2_SALT, _PBKDF2_ROUNDS, KEY_BYTES)


class CryptoPAn:
    """Crypto-PAn with a 32-byte key; maps addresses given as 16-byte rows."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"Crypto-PAn needs a {KEY_BYTES}-byte key, got {len(key)}")
        self._cipher = Cipher(algorithms.AES(key[:16]), modes.ECB())
        pad = self._encrypt(key[16:])
        self._pad = np.frombuffer(pad, np.uint8)
        # masks[i]: the first i bits set (i = 0..128), as 16 bytes
        bits = np.arange(128)
        self._masks = np.packbits(bits[None, :] < np.arange(129)[:, None], axis=1)

    def _encrypt(self, data: bytes) -> bytes:
        enc = self._cipher.encryptor()
        return enc.update(data) + enc.finalize()

    def anonymize_rows(self, rows: np.ndarray, bits: int) -> np.ndarray:
        """``rows``: (N, 16) uint8, the address in the leading ``bits // 8`` bytes (rest
        ignored). Returns (N, bits // 8) uint8 pseudonyms."""
        nbytes = bits // 8
        out = np.empty((len(rows), nbytes), np.uint8)
        masks = self._masks[:bits]  # (bits, 16)
        inv = ~masks
        pad_part = self._pad[None, :] & inv  # (bits, 16)
        for lo in range(0, len(rows), _CHUNK):
            block = rows[lo : lo + _CHUNK]
            addr = np.zeros((len(block), 16), np.uint8)
            addr[:, :nbytes] = block[:, :nbytes]
            inputs = (addr[:, None, :] & masks[None, :, :]) | pad_part[None, :, :]  # (n, bits, 16)
            cipher = np.frombuffer(self._encrypt(inputs.tobytes()), np.uint8).reshape(len(block), bits, 16)
            flip = np.packbits(cipher[:, :, 0] >> 7, axis=1)  # (n, nbytes)
            out[lo : lo + len(block)] = block[:, :nbytes] ^ flip
        return out

    def anonymize_v4(self, values: np.ndarray) -> np.ndarray:
        """uint32 IPv4 addresses -> uint32 pseudonyms."""
        raw = np.asarray(values, np.uint32).astype(">u4").view(np.uint8).reshape(-1, 4)
        rows = np.zeros((len(raw), 16), np.uint8)
        rows[:, :4] = raw
        return self.anonymize_rows(rows, 32).copy().view(">u4").ravel().astype(np.uint32)

    def anonymize_text_addresses(self, texts: list[str]) -> list[str | None]:
        """Address strings -> pseudonym strings (None where a value is not an address)."""
        out: list[str | None] = [None] * len(texts)
        v4_pos, v4_raw, v6_pos, v6_raw = [], [], [], []
        for i, text in enumerate(texts):
            if text is None:
                continue
            if ":" in text:
                pct = text.find("%")
                try:
                    v6_raw.append(socket.inet_pton(socket.AF_INET6, text if pct < 0 else text[:pct]))
                    v6_pos.append(i)
                except (OSError, ValueError):
                    pass
            else:
                try:
                    v4_raw.append(socket.inet_pton(socket.AF_INET, text))
                    v4_pos.append(i)
                except (OSError, ValueError):
                    pass
        for pos, raw, bits, af in ((v4_pos, v4_raw, 32, socket.AF_INET), (v6_pos, v6_raw, 128, socket.AF_INET6)):
            if not pos:
                continue
            rows = np.zeros((len(raw), 16), np.uint8)
            rows[:, : bits // 8] = np.frombuffer(b"".join(raw), np.uint8).reshape(-1, bits // 8)
            anon = self.anonymize_rows(rows, bits)
            for i, row in zip(pos, anon, strict=True):
                out[i] = socket.inet_ntop(af, row.tobytes())
        return out


class Anonymizer:
    """Pseudonymizes address columns and addresses quoted in text, with a cache, so an
    address seen in many batches costs one AES computation."""

    def __init__(self, key: bytes) -> None:
        self.cpan = CryptoPAn(key)
        self._cache: dict[str, str] = {}

    @classmethod
    def from_spec(cls, spec: str) -> Anonymizer:
        return cls(key_from_spec(spec))

    def addresses(self, texts: list[str]) -> list[str]:
        """Pseudonyms for address strings; a value that is not an address is replaced by
        ``"invalid"`` (it cannot be pseudonymized, and it must not leak)."""
        missing = sorted({t for t in texts if t is not None and t not in self._cache})
        if missing:
            for text, anon in zip(missing, self.cpan.anonymize_text_addresses(missing), strict=True):
                self._cache[text] = anon if anon is not None else "invalid"
        return [self._cache[t] if t is not None else None for t in texts]

    def column(self, column: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Pseudonymize an address column (each distinct value once)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if len(column) == 0:
            return column.cast(pa.string())
        encoded = pc.dictionary_encode(column.cast(pa.string()))
        mapped = pa.array(self.addresses(encoded.dictionary.to_pylist()), pa.string())
        return mapped.take(encoded.indices)

    def text(self, text: str | None) -> str | None:
        """Replace every address quoted in a free-text string (evidence sentences)."""
        if not text:
            return text

        def sub(m: re.Match[str]) -> str:
            return self.addresses([m.group(0)])[0] if _is_address(m.group(0)) else m.group(0)

        return _V6_TEXT.sub(sub, _V4_TEXT.sub(sub, text))

    def text_column(self, column: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        if len(column) == 0:
            return column
        encoded = pc.dictionary_encode(column)
        mapped = pa.array([self.text(t) for t in encoded.dictionary.to_pylist()], pa.string())
        return mapped.take(encoded.indices)

    def table(self, table: pa.Table, address_columns: tuple[str, ...] = ("src_ip", "dst_ip"),
              text_columns: tuple[str, ...] = ("evidence",)) -> pa.Table:
        """Pseudonymize the address columns and the addresses in the text columns present."""
        for name in (*address_columns, *text_columns):
            pos = table.schema.get_field_index(name)
            if pos < 0:
                continue
            fn = self.column if name in address_columns else self.text_column
            table = table.set_column(pos, table.schema.field(pos), fn(table.column(pos)))
        return table


def _is_address(text: str) -> bool:
    af = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        socket.inet_pton(af, text)
    except (OSError, ValueError):
        return False
    return True
