"""AES-256 encryption of one block per row, every row under its own key, in numpy.

Why not the ``cryptography`` package: it encrypts many blocks under one key fast, but a
signature that must try a different key on every flow (MTProto's obfuscated transport
carries its key in its first 64 bytes) would build one cipher object per flow, about 24
microseconds each: on a capture of 50,000 random-looking TCP flows that was a third of
the signature stage. Here every step of FIPS-197 (key expansion, SubBytes, ShiftRows,
MixColumns, AddRoundKey) runs over all rows at once. For detection only (it reads a
4-byte tag, it protects nothing); tests check it against ``cryptography`` and against
FIPS-197's example.
"""

from __future__ import annotations

import numpy as np


def _sbox() -> np.ndarray:
    """FIPS-197's S-box: the multiplicative inverse in GF(2^8), then the affine map."""
    exp = np.zeros(256, np.uint8)
    log = np.zeros(256, np.int64)
    x = 1
    for i in range(255):  # 3 generates GF(2^8)*: exp[i] = 3^i
        exp[i] = x
        log[x] = i
        x ^= (x << 1) ^ (0x11B if x & 0x80 else 0)
        x &= 0xFF
    inv = np.zeros(256, np.uint8)
    inv[1:] = exp[(255 - log[1:]) % 255]
    b = inv.astype(np.int64)
    out = b.copy()
    for shift in range(1, 5):
        out ^= ((b << shift) | (b >> (8 - shift))) & 0xFF
    return (out ^ 0x63).astype(np.uint8)


SBOX = _sbox()
#: multiplication by 2 in GF(2^8) (MixColumns' "xtime")
XTIME = np.array([((v << 1) ^ (0x1B if v & 0x80 else 0)) & 0xFF for v in range(256)], np.uint8)
#: ShiftRows on the column-major state: byte r + 4c takes byte r + 4((c + r) mod 4)
SHIFT_ROWS = np.array([r + 4 * ((c + r) % 4) for c in range(4) for r in range(4)])
_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40)


def expand_keys_256(keys: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 keys -> (n, 15, 16) round keys (AES-256: 14 rounds)."""
    n = len(keys)
    w = np.zeros((n, 60, 4), np.uint8)
    w[:, :8] = keys.reshape(n, 8, 4)
    for i in range(8, 60):
        t = w[:, i - 1]
        if i % 8 == 0:
            t = SBOX[np.roll(t, -1, axis=1)]
            t[:, 0] ^= _RCON[i // 8 - 1]
        elif i % 8 == 4:
            t = SBOX[t]
        w[:, i] = w[:, i - 8] ^ t
    return w.reshape(n, 15, 16)


def _mix_columns(s: np.ndarray) -> np.ndarray:
    a = s.reshape(-1, 4, 4)  # (n, column, row)
    total = a[:, :, 0] ^ a[:, :, 1] ^ a[:, :, 2] ^ a[:, :, 3]
    # b_r = a_r ^ total ^ xtime(a_r ^ a_{r+1}): 2a_r ^ 3a_{r+1} ^ a_{r+2} ^ a_{r+3}
    out = a ^ total[:, :, None] ^ XTIME[a ^ np.roll(a, -1, axis=2)]
    return out.reshape(-1, 16)


def encrypt_blocks_256(keys: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """AES-256 of ``blocks[i]`` (n, 16) under ``keys[i]`` (n, 32); uint8 in, uint8 out."""
    keys = np.asarray(keys, np.uint8)
    state = np.asarray(blocks, np.uint8)
    if keys.ndim != 2 or keys.shape[1] != 32 or state.shape != (len(keys), 16):
        raise ValueError(f"need (n, 32) keys and (n, 16) blocks, got {keys.shape} and {state.shape}")
    rk = expand_keys_256(keys)
    state = state ^ rk[:, 0]
    for r in range(1, 15):
        state = SBOX[state][:, SHIFT_ROWS]
        if r < 14:
            state = _mix_columns(state)
        state = state ^ rk[:, r]
    return state


def ctr_keystream_block(keys: np.ndarray, ivs: np.ndarray, index: int) -> np.ndarray:
    """Keystream bytes ``16*index .. 16*index+15`` of AES-256-CTR per row: E(key, iv + index).

    The counter is the whole 16-byte IV read as a big-endian number, as OpenSSL's and
    ``cryptography``'s CTR mode count.
    """
    ivs = np.asarray(ivs, np.uint8)
    counter = ivs.astype(np.int64)
    carry = index
    for pos in range(15, -1, -1):
        total = counter[:, pos] + carry
        counter[:, pos] = total & 0xFF
        carry = total >> 8
        if not np.any(carry):
            break
    return encrypt_blocks_256(keys, counter.astype(np.uint8))
