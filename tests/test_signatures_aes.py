"""The vectorized AES-256 the Telegram signature uses, against FIPS-197 and the cryptography package."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier.signatures._aes import SBOX, ctr_keystream_block, encrypt_blocks_256


def _rows(data: bytes, width: int) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(-1, width)


def test_fips_197_aes_256_example():
    # FIPS-197 appendix C.3
    out = encrypt_blocks_256(_rows(bytes(range(32)), 32), _rows(bytes.fromhex("00112233445566778899aabbccddeeff"), 16))
    assert bytes(out[0]).hex() == "8ea2b7ca516745bfeafc49904b496089"
    assert (SBOX[0], SBOX[0x53], SBOX[0xFF]) == (0x63, 0xED, 0x16)
    assert len(set(SBOX.tolist())) == 256


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16)),
                min_size=1, max_size=20), st.integers(0, 5))
def test_every_row_under_its_own_key_matches_cryptography(pairs, index):
    keys = _rows(b"".join(k for k, _ in pairs), 32)
    blocks = _rows(b"".join(b for _, b in pairs), 16)
    ecb = encrypt_blocks_256(keys, blocks)
    ctr = ctr_keystream_block(keys, blocks, index)
    for i, (key, block) in enumerate(pairs):
        assert bytes(ecb[i]) == Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)
        stream = Cipher(algorithms.AES(key), modes.CTR(block)).encryptor().update(bytes(16 * (index + 1)))
        assert bytes(ctr[i]) == stream[16 * index:]


def test_the_counter_carries_across_bytes():
    key = _rows(bytes(range(32)), 32)
    iv = b"\x00" * 8 + b"\xff" * 8  # + 3 carries into byte 7
    stream = Cipher(algorithms.AES(bytes(range(32))), modes.CTR(iv)).encryptor().update(bytes(64))
    assert bytes(ctr_keystream_block(key, _rows(iv, 16), 3)[0]) == stream[48:64]
