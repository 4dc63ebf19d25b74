"""CRC-16 carried inside ST2000R vendor payloads.

CJ/T 188's checksum is an additive byte sum: two errors that cancel (one byte +n, another
-n, or two swapped bytes) pass it.  A bulk reply carrying 48 meter counts must never be
accepted corrupted, so every vendor payload ends with CRC-16/CCITT-FALSE (polynomial 1021h,
initial FFFFh, no reflection, no final XOR), sent low byte first.  It detects every error
burst of up to 16 bits and every odd number of bit errors.  ``binascii.crc_hqx`` computes it
in C.
"""

from __future__ import annotations

from binascii import crc_hqx


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (check value of b"123456789" is 29B1h)."""
    return crc_hqx(data, 0xFFFF)
