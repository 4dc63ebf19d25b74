"""The client side of bench/bench_bridge.py, each role a process of its own so that what is
measured is the server: raw non-blocking sockets on one ``epoll``, no asyncio, no objects
per request.

``load PORT CLIENTS SECONDS``: CLIENTS connections, each with one 125-register read of
input registers (function 04, unit 1) outstanding at a time, the next sent as soon as the
answer is complete.  Latency of a request: from just before its ``send`` to the return of
the ``epoll.poll`` that reported its answer (the client's own handling of the other answers
of that wake-up is not counted).  Prints one JSON line: ``requests``, ``seconds``,
``latencies_us`` (every request of the measuring window, after ``--warmup``), ``cpu_s``
(this process's CPU time in the window), ``server_cpu_s`` (the server's, with
``--server-pid``).

``watch PORT``: the freshness watcher.  Reads every meter's value registers of the map of
``community.toml`` (8 reads of 125 registers per CDT block, spread over 4 connections, each
with 64 requests in flight and a new one sent for each answer, round and round: deeper
pipelines make the server's turns long, shallower ones make the sweep slow), prints
``ready`` once every read was answered once (the baseline), then
records for every meter the first answer whose value differs from that first sweep (time:
``time.monotonic()`` at the ``epoll.poll`` return that delivered it; CLOCK_MONOTONIC, the
same clock in every process) until every meter changed or ``--timeout``.  Prints one JSON
line: ``seen`` (per meter in map order, or null), ``sweeps_ms`` (the duration of every
connection's every pass over its reads, after the first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import struct
import sys
import time

READ_COUNT = 125
_REQUEST = struct.Struct(">HHHBBHH")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (0 without one)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, clients: int, seconds: float, warmup: float, unit: int = 1, server: int | None = None) -> dict:
    """``clients`` readers for ``warmup`` + ``seconds``; the figures of the measuring window
    (``server``: the server's pid, whose CPU time in the window is reported too)."""
    poller = select.epoll()
    socks, requests, sent, got = {}, {}, {}, {}
    answer_len = 9 + 2 * READ_COUNT
    for i in range(clients):
        sock = _connect(port)
        fd = sock.fileno()
        socks[fd] = sock
        requests[fd] = _REQUEST.pack(i & 0xFFFF, 0, 6, unit, 4, 1000 * (1 + i % 64), READ_COUNT)
        got[fd] = 0
        poller.register(fd, select.EPOLLIN)
    latencies: list[float] = []
    record = latencies.append
    now = time.perf_counter()
    for fd, sock in socks.items():
        sent[fd] = time.perf_counter()
        sock.send(requests[fd])
    measure_from = now + warmup
    end = measure_from + seconds
    cpu0 = None
    perf = time.perf_counter
    while True:
        events = poller.poll(1.0)
        woke = perf()
        if woke >= end:
            break
        measuring = woke >= measure_from
        if measuring and cpu0 is None:
            cpu0, server0, t0 = _cpu(), _proc_cpu(server), woke
        for fd, _ in events:
            sock = socks[fd]
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the server closed a connection")
            n = got[fd] + len(data)
            if n < answer_len:
                got[fd] = n
                continue
            if data[7] != 4 and n == len(data):
                raise RuntimeError(f"exception answer {data[:9].hex()}")
            got[fd] = 0
            if measuring:
                record(woke - sent[fd])
            sent[fd] = perf()
            sock.send(requests[fd])
    cpu, server_cpu = _cpu() - cpu0, _proc_cpu(server) - server0
    for sock in socks.values():
        sock.close()
    return {"requests": len(latencies), "seconds": woke - t0, "latencies_us": [round(x * 1e6) for x in latencies],
            "cpu_s": cpu, "server_cpu_s": server_cpu}


WATCH_CONNECTIONS = 4
WATCH_IN_FLIGHT = 64  # requests outstanding per connection: the server's turns stay short


def _sweep_plan(port: int) -> tuple[list[list[tuple[bytes, list[tuple[int, int]]]]], int]:
    """The watcher's reads: per connection, a list of (request frame, [(meter index, byte
    offset of its value in the answer)]); and the number of meters."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_bridge import _topology

    from st2000r.bridge.regmap import build_map

    regmap, _ = build_map(_topology(), None)
    blocks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for index, (unit, base) in enumerate(regmap.meters.values()):
        blocks.setdefault((unit, base // 1000 * 1000), []).append((index, base))
    reads = []
    for (unit, block), meters in sorted(blocks.items()):
        last = max(base for _, base in meters) + 2
        for start in range(block, last, READ_COUNT):
            count = min(READ_COUNT, last - start)
            inside = [(i, 9 + 2 * (base - start)) for i, base in meters if start <= base < start + count]
            reads.append((unit, start, count, inside))
    plan: list[list[tuple[bytes, list[tuple[int, int]]]]] = [[] for _ in range(WATCH_CONNECTIONS)]
    for tid, (unit, start, count, inside) in enumerate(reads):
        plan[tid % WATCH_CONNECTIONS].append((_REQUEST.pack(tid, 0, 6, unit, 4, start, count), inside))
    return plan, len(regmap.meters)


class _Sweeper:
    """One connection of the watcher: its reads over and over, ``WATCH_IN_FLIGHT`` at a time."""

    def __init__(self, port: int, reads: list) -> None:
        self.sock = _connect(port)
        self.reads = reads
        self.sent = self.done = 0
        self.buf = bytearray()
        self.cycle_started = time.monotonic()

    def send(self, k: int) -> None:
        n = len(self.reads)
        self.sock.send(b"".join(self.reads[(self.sent + j) % n][0] for j in range(k)))
        self.sent += k


def watch(port: int, timeout: float) -> dict:
    plan, meters = _sweep_plan(port)
    poller = select.epoll()
    sweepers = {}
    for reads in plan:
        sweeper = _Sweeper(port, reads)
        sweepers[sweeper.sock.fileno()] = sweeper
        poller.register(sweeper.sock.fileno(), select.EPOLLIN)
    baseline: list[bytes | None] = [None] * meters
    seen: list[float | None] = [None] * meters
    left = meters
    sweeps: list[float] = []  # every connection's every pass over its reads, ms
    last: dict[tuple[int, int], bytes] = {}  # (connection, read) -> its last answer
    not_ready = len(sweepers)
    for sweeper in sweepers.values():
        sweeper.send(min(WATCH_IN_FLIGHT, len(sweeper.reads)))
    deadline = None
    while left:
        events = poller.poll(1.0)
        woke = time.monotonic()
        if deadline is not None and woke > deadline:
            break
        for fd, _ in events:
            sweeper = sweepers[fd]
            data = sweeper.sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed a connection")
            buf, reads, n = sweeper.buf, sweeper.reads, len(sweeper.reads)
            buf += data
            pos = answered = 0
            while len(buf) - pos >= 9 and len(buf) - pos >= 6 + (buf[pos + 4] << 8 | buf[pos + 5]):
                size = 6 + (buf[pos + 4] << 8 | buf[pos + 5])
                if buf[pos + 7] != 4:
                    raise RuntimeError(f"exception answer {bytes(buf[pos:pos + 9]).hex()}")
                answer = bytes(buf[pos + 9:pos + size])
                first_pass = sweeper.done < n
                key = (fd, sweeper.done % n)
                if answer != last.get(key):  # something changed since this read's last answer
                    last[key] = answer
                    for index, offset in reads[sweeper.done % n][1]:
                        value = answer[offset - 9:offset - 5]
                        if first_pass:
                            baseline[index] = value
                        elif seen[index] is None and value != baseline[index]:
                            seen[index] = woke
                            left -= 1
                pos += size
                answered += 1
                sweeper.done += 1
                if sweeper.done % n == 0:
                    if not first_pass:
                        sweeps.append((woke - sweeper.cycle_started) * 1000)
                    sweeper.cycle_started = woke
                    if first_pass:
                        not_ready -= 1
                        if not_ready == 0:
                            print("ready", flush=True)
                            deadline = woke + timeout
            del buf[:pos]
            if answered:
                sweeper.send(answered)
    return {"seen": seen, "sweeps_ms": sweeps}


def main() -> int:
    parser = argparse.ArgumentParser(description="client side of bench_bridge.py")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("load")
    p.add_argument("port", type=int)
    p.add_argument("clients", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("--warmup", type=float, default=0.3)
    p.add_argument("--server-pid", type=int, help="report this process's CPU time in the window")
    p = sub.add_parser("watch")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    result = load(args.port, args.clients, args.seconds, args.warmup, server=args.server_pid) if args.role == "load" else \
        watch(args.port, args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
