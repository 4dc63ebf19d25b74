"""The spool on disk: durable appends, acknowledgement, torn and corrupt records."""

from __future__ import annotations

import os

from st2000r.historian.spool import HEADER, Spool


def batch(i, n=3):
    return {"n": n, "at": i, "readings": [[f"bus/1/1/{c}", i] for c in range(n)]}


def test_unacked_records_survive_a_reopen_in_order(tmp_path):
    spool = Spool(tmp_path)
    records = [spool.append(batch(i)) for i in range(5)]
    spool.ack(records[1])
    spool.close()
    again = Spool(tmp_path)
    assert [r.at for r in again.pending()] == [2, 3, 4]
    assert again.rows == 9 and again.problems == []
    again.ack(again.pending()[-1])
    again.close()
    assert Spool(tmp_path).rows == 0


def test_a_torn_last_record_is_cut_off(tmp_path):
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(batch(i))
    spool.close()
    path = tmp_path / "seg-000000001.log"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 5)  # the process died inside the last append
    again = Spool(tmp_path)
    assert [r.at for r in again.pending()] == [0, 1]
    assert "cut off" in again.problems[0]
    again.append(batch(9))  # appends continue after the cut
    again.close()
    assert [r.at for r in Spool(tmp_path).pending()] == [0, 1, 9]


def test_a_corrupt_record_in_the_middle_is_set_aside_not_dropped(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1)  # one record per segment
    for i in range(3):
        spool.append(batch(i))
    spool.close()
    first = tmp_path / "seg-000000001.log"
    data = bytearray(first.read_bytes())
    data[HEADER.size + 2] ^= 0xFF  # a flipped bit in the first record's payload
    first.write_bytes(bytes(data))
    again = Spool(tmp_path)
    assert [r.at for r in again.pending()] == [1, 2]
    assert "wrong checksum" in again.problems[0]
    assert (tmp_path / "seg-000000001.log.corrupt").read_bytes() == bytes(data)


def test_the_bound_refuses_an_append(tmp_path):
    import pytest

    from st2000r.historian.spool import SpoolFull

    spool = Spool(tmp_path, max_bytes=200)
    spool.append(batch(0))
    with pytest.raises(SpoolFull):
        spool.append(batch(1, n=20))
    assert spool.rows == 3
    assert os.path.getsize(tmp_path / "seg-000000001.log") == spool.bytes


def test_the_acknowledgement_is_rewritten_in_place_and_a_torn_one_replays(tmp_path):
    """The ack line is rewritten in place (no temporary file, no rename) and checksummed: a
    torn one replays every segment left, which the idempotent keys make harmless; the older
    form without a checksum is still read."""
    spool = Spool(tmp_path)
    records = [spool.append(batch(i)) for i in range(4)]
    spool.ack(records[1])
    assert not (tmp_path / "ack.tmp").exists()
    first = (tmp_path / "ack").read_text()
    spool.ack(records[2])
    second = (tmp_path / "ack").read_text()
    spool.close()
    assert len(first) == len(second) and first != second
    assert [r.at for r in Spool(tmp_path).pending()] == [3]
    seg, off = second.split()[:2]
    (tmp_path / "ack").write_text(f"{seg} {off}\n")  # the older form
    again = Spool(tmp_path)
    assert [r.at for r in again.pending()] == [3] and again.problems == []
    again.close()
    (tmp_path / "ack").write_text(second.replace(off, str(int(off) + 1), 1))  # torn: checksum fails
    torn = Spool(tmp_path)
    assert [r.at for r in torn.pending()] == [0, 1, 2, 3]
    assert "ack file unreadable" in torn.problems[0]
    torn.close()


def test_memory_holds_batches_up_to_a_bound_the_rest_is_read_back(tmp_path):
    """Past ``cache_bytes`` a batch is not kept in memory: ``load`` reads it back from its
    segment, equal to what was appended; reopening decodes nothing that starts with its
    ``"n"`` and ``"at"`` (an older record, other keys first, is decoded whole)."""
    spool = Spool(tmp_path, cache_bytes=300)
    appended = [batch(i, n=4) for i in range(6)]
    records = [spool.append(b) for b in appended]
    kept = [r.payload is not None for r in records]
    assert kept[0] and not kept[-1]
    assert [spool.load(r) for r in records] == appended
    spool.ack(records[0])
    spool.append({"readings": [["bus/1/1/1", 9]], "n": 1, "at": 9})  # the older key order
    spool.close()
    again = Spool(tmp_path)
    pending = again.pending()
    assert [(r.rows, r.at) for r in pending] == [(4, 1), (4, 2), (4, 3), (4, 4), (4, 5), (1, 9)]
    assert [r.payload is None for r in pending] == [True] * 5 + [False]
    assert [again.load(r) for r in pending[:5]] == appended[1:]
    again.close()
