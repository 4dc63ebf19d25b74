"""GPRS DTU registration, heartbeat and acknowledgement packets (sans-I/O: no Twisted, no clock).

A GPRS DTU dials *in* to the supervisor and must say who it is before the bus bytes it
carries mean anything.  The packets are those of common DTUs, and exactly those the field
simulator's DTU (``simulation/dtu.py``) sends::

    format  registration (DTU -> server, once per connection)   heartbeat (every heartbeat_s)
    plain   <ID>                        (ASCII, no framing)     <ID>        (or a configured packet)
    usr     <ID> CR LF                                          <ID> CR LF  (or a configured packet)
    ddp     7B 01 00 16 <ID 11> <IP 4> <port 2> 7B              7B 02 00 10 <ID 11> 7B
            server acknowledges: 7B 81 00 10 <ID 11> 7B

The DDP ID is 1..11 ASCII bytes padded with 00h; IP and port are the DTU's local address,
big-endian; the 2-byte length counts the whole packet.

Server-side rules (what :class:`RegistrationDecoder` and :class:`HeartbeatFilter` implement):

- **Identification.**  The first bytes of a connection must be a registration.  A first
  byte 7Bh means DDP.  Otherwise the text is matched against the *known* identities (those
  of configured links): the longest known ID the stream starts with wins; for a ``usr``
  link it must be followed by CR LF.  A stream that cannot become any known registration is
  refused with :class:`UnknownDtu` (the text it sent is in ``dtu_id``); a DTU whose packet
  format differs from its link's configured format is refused with
  :class:`RegistrationError`.  Bytes after the registration are bus bytes.
- **Heartbeats** are removed by *exact packet match anywhere in the stream*: a DTU does not
  know where bus frames end, so a heartbeat may fall between two replies or inside one.
  A stream tail that could be the start of a heartbeat is held back until the next bytes
  decide it (or :meth:`HeartbeatFilter.flush` releases it -- the server does after a short
  hold time).  Bus frames end in 16h and heartbeats of ASCII identities never contain it,
  so a complete reply is never held back.  Should a reply contain the exact heartbeat
  bytes, cutting them breaks the frame's length/checksum: the master sees junk and retries;
  a corrupted reply is never accepted.  For DDP a repeated registration packet (a DTU that
  missed the acknowledgement) is removed the same way and reported as :class:`Registered`
  so the server acknowledges again.

**Proof of identity** (``GprsEndpoint.auth``; what :class:`CredentialCheck` checks after
the registration named a configured DTU)::

    auth       DTU -> server                                  server -> DTU
    challenge  registration as above, then                    after the registration:
               7B 03 00 25 <proof 32> 7B  (response)          7B 83 00 15 <nonce 16> 7B  (challenge)
               proof = HMAC-SHA256(secret, nonce || id)       (DDP: acknowledged after the proof)
    password   plain: <ID> 20h <secret>                       --
               usr:   <ID> 20h <secret> CR LF
    none       the registration alone                         --

The challenge is sent only after the registration named a DTU configured for it, so a DTU
that cannot answer one never receives bytes it would pass on to its RS485 bus.  Before its
response a challenged DTU may still send heartbeats (and, DDP, repeat its registration):
they are skipped; any other byte fails the proof.  Proofs and passwords are compared with
``hmac.compare_digest``.  A password travels in clear: anyone who reads one registration
can replay it (docs/security.md); a challenge proof is useless a second time.  Error
messages never contain a secret, a received password or a received proof.

Names shared with the simulator's ``simulation/dtu.py`` (``DtuFormat``, ``ddp_*``, ``parse_ddp``,
``DdpPacket``, ``Registered``, ``Heartbeat``, ``Data``, ``UplinkDecoder``,
``DownlinkDecoder``, ``DtuFormatError``) have the same behaviour, so the simulator can
import them from here instead of keeping its own copy.

Modules: this one holds the registration engine (:class:`RegistrationDecoder`,
:class:`HeartbeatFilter`, the single-format decoders and their events); the packet codecs
are ``registration_ddp.py`` (DDP) and ``registration_formats.py`` (:class:`DtuFormat`:
plain, usr, ddp), the proof of identity ``registration_auth.py``, the errors
``registration_errors.py``.  Every name is importable from here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

# the packet codecs per family and the proof of identity live in their own modules; every
# name is importable from here as before
from st2000r.drivers.st2000r.registration_auth import (
    AUTH_CHALLENGE,  # noqa: F401 (re-exported)
    AUTH_CHALLENGE_LEN,  # noqa: F401 (re-exported)
    AUTH_MODES,
    AUTH_RESPONSE,  # noqa: F401 (re-exported)
    AUTH_RESPONSE_LEN,  # noqa: F401 (re-exported)
    NONCE_LEN,
    PROOF_LEN,
    CredentialCheck,
    auth_challenge,
    auth_response,
    challenge_proof,
    parse_challenge,
)
from st2000r.drivers.st2000r.registration_ddp import (
    DDP_ACK,  # noqa: F401 (re-exported)
    DDP_FLAG,
    DDP_HEARTBEAT,  # noqa: F401 (re-exported)
    DDP_ID_LEN,
    DDP_REGISTER,
    DDP_REGISTER_LEN,  # noqa: F401 (re-exported)
    DDP_SHORT_LEN,  # noqa: F401 (re-exported)
    DdpPacket,
    ddp_ack,
    ddp_heartbeat,
    ddp_register,
    parse_ddp,
)
from st2000r.drivers.st2000r.registration_errors import AuthFailed, DtuFormatError, RegistrationError, UnknownDtu
from st2000r.drivers.st2000r.registration_formats import FORMATS, MAX_TEXT_REGISTRATION, PASSWORD_SEP, DtuFormat

__all__ = [
    "FORMATS",
    "DDP_ID_LEN",
    "RegistrationError",
    "DtuFormatError",
    "UnknownDtu",
    "AuthFailed",
    "AUTH_MODES",
    "NONCE_LEN",
    "PROOF_LEN",
    "PASSWORD_SEP",
    "auth_challenge",
    "auth_response",
    "parse_challenge",
    "challenge_proof",
    "CredentialCheck",
    "DtuFormat",
    "DdpPacket",
    "Registered",
    "Heartbeat",
    "Data",
    "ddp_register",
    "ddp_heartbeat",
    "ddp_ack",
    "parse_ddp",
    "RegistrationDecoder",
    "HeartbeatFilter",
    "UplinkDecoder",
    "DownlinkDecoder",
]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Registered:
    """A DTU identified itself.  ``ip``/``port``: as reported in a DDP registration.
    ``format``: the packet format it used (None where the caller fixed it)."""

    dtu_id: str
    ip: str | None = None
    port: int | None = None
    format: str | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One heartbeat packet of ``dtu_id`` was removed from the stream."""

    dtu_id: str


@dataclass(frozen=True, slots=True)
class Data:
    """Bus bytes (frames) carried by the DTU, heartbeats removed."""

    data: bytes


# --------------------------------------------------------------------------- server side


class RegistrationDecoder:
    """Identify a DTU from the first bytes of its connection (the rules in the module
    docstring).

    ``known``: dtu_id -> configured format (``"plain"``, ``"usr"``, ``"ddp"``).
    ``formats``: formats accepted at all (a registration in another format is refused).
    ``passwords``: ids of plain/usr DTUs in password mode: their registration is the id and
    a space (:attr:`rest` then starts with the password, for :class:`CredentialCheck`); the
    id alone raises :class:`AuthFailed`.

    :meth:`feed` returns a :class:`Registered` (``format`` set) once the registration is
    complete -- :attr:`rest` then holds the bytes that followed it -- or None when more
    bytes are needed.  It raises :class:`UnknownDtu` for an identity not in ``known`` and
    :class:`RegistrationError` for a malformed packet, a refused format or a format that
    differs from the identity's configured one.  After a result or an error it must not be
    fed again.
    """

    def __init__(self, known: Mapping[str, str], formats: Sequence[str] = FORMATS, passwords: Collection[str] = ()) -> None:
        for fmt in formats:
            if fmt not in FORMATS:
                raise RegistrationError(f"registration format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.known = dict(known)
        self.formats = tuple(formats)
        self.rest = b""
        self._head = b""
        # text candidates: (packet bytes, dtu_id, format, password expected), longest first;
        # a password DTU's id alone is a candidate too, refused when matched
        text: list[tuple[bytes, str, str, bool | None]] = []
        for i, f in known.items():
            if f not in ("plain", "usr"):
                continue
            bare = DtuFormat(f, i).registration_packet()
            if i in passwords:
                text.append((i.encode("utf-8") + PASSWORD_SEP, i, f, True))
                text.append((bare, i, f, None))
            else:
                text.append((bare, i, f, False))
        self._text = sorted(text, key=lambda c: len(c[0]), reverse=True)

    def feed(self, data: bytes) -> Registered | None:
        self._head += data
        head = self._head
        if not head:
            return None
        if head[0] == DDP_FLAG:
            return self._ddp(head)
        return self._text_registration(head, final=False)

    def finish(self) -> Registered:
        """No more bytes will come soon (registration timeout): accept a complete plain
        registration that was waiting because a longer known identity was still possible;
        otherwise raise RegistrationError saying what was received."""
        head = self._head
        if head and head[0] != DDP_FLAG:
            reg = self._text_registration(head, final=True)
            if reg is not None:
                return reg
        if not head:
            raise RegistrationError("no registration received")
        raise RegistrationError(f"incomplete registration {head[:40]!r}")

    def _ddp(self, head: bytes) -> Registered | None:
        if "ddp" not in self.formats:
            raise RegistrationError("DDP registration refused: format not accepted by this server")
        parsed = parse_ddp(head)
        if parsed is None:
            return None
        packet, used = parsed
        if packet.kind != DDP_REGISTER:
            raise RegistrationError(f"expected a DDP registration (01h), got packet type {packet.kind:02X}h")
        self._check(packet.dtu_id, "ddp")
        self.rest = head[used:]
        return Registered(packet.dtu_id, packet.ip, packet.port, "ddp")

    def _text_registration(self, head: bytes, *, final: bool) -> Registered | None:
        waiting = False
        for packet, dtu_id, fmt, password in self._text:
            if head.startswith(packet):
                if waiting and not final:
                    return None  # a longer identity is still possible
                self._check(dtu_id, fmt)
                if password is None:
                    raise AuthFailed(dtu_id, "registration without a password")
                self.rest = head[len(packet) :]
                return Registered(dtu_id, format=fmt)
            if packet.startswith(head):
                waiting = True
        if waiting and not final:
            return None
        # no known identity: say what it claimed (never what followed a space: a password)
        end = head.find(b"\r\n")
        if end >= 0:
            claimed, fmt = head[:end], "usr"
        elif len(head) < MAX_TEXT_REGISTRATION and not final and b"\r" in head[-1:]:
            return None
        else:
            claimed, fmt = head[:40], "plain"
        claimed = claimed.split(PASSWORD_SEP, 1)[0]
        if fmt not in self.formats:
            raise RegistrationError(f"{fmt} registration refused: format not accepted by this server")
        raise UnknownDtu(claimed.decode("utf-8", "replace"), fmt)

    def _check(self, dtu_id: str, fmt: str) -> None:
        configured = self.known.get(dtu_id)
        if configured is None:
            raise UnknownDtu(dtu_id, fmt)
        if fmt not in self.formats:
            raise RegistrationError(f"DTU {dtu_id!r}: {fmt} registration refused: format not accepted by this server")
        if configured != fmt:
            raise RegistrationError(f"DTU {dtu_id!r} registered with {fmt}, but its link is configured for {configured}")


class HeartbeatFilter:
    """Cuts exact occurrences of ``packets`` out of a byte stream (the heartbeat rule in the
    module docstring), holding back a tail that could be the start of one.

    :meth:`feed` returns ``[(packet | None, bytes)]`` in stream order: ``None`` marks bus
    data, otherwise the packet that matched.  :attr:`pending` is the number of bytes held
    back; :meth:`flush` returns them as bus data and forgets them.
    """

    def __init__(self, packets: Sequence[bytes]) -> None:
        self.packets = tuple(p for p in packets if p)
        self._buf = b""

    @property
    def pending(self) -> int:
        return len(self._buf)

    def flush(self) -> bytes:
        buf, self._buf = self._buf, b""
        return buf

    def feed(self, data: bytes) -> list[tuple[bytes | None, bytes]]:
        buf = self._buf + data
        out: list[tuple[bytes | None, bytes]] = []
        while buf:
            best: tuple[int, bytes] | None = None
            for p in self.packets:
                i = buf.find(p)
                if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(p) > len(best[1]))):
                    best = (i, p)
            if best is None:
                break
            i, p = best
            if i:
                out.append((None, buf[:i]))
            out.append((p, p))
            buf = buf[i + len(p) :]
        keep = 0
        for p in self.packets:
            for n in range(min(len(p) - 1, len(buf)), keep, -1):
                if buf.endswith(p[:n]):
                    keep = n
                    break
        if len(buf) > keep:
            out.append((None, buf[: len(buf) - keep]))
        self._buf = buf[len(buf) - keep :] if keep else b""
        return out


# --------------------------------------------------------------------------- single-format decoders


class UplinkDecoder:
    """Server side of one DTU connection in one format (the simulator's API).

    ``fmt``: the format expected.  ``known_ids``: identities accepted; for ``plain`` (which
    has no terminator) the registration is the longest known ID the stream starts with, or
    -- without ``known_ids`` -- every byte of the first chunk fed; for ``usr`` and ``ddp``
    an empty ``known_ids`` accepts any identity.  ``heartbeat``: the plain/usr heartbeat
    bytes if not the format's default.

    :meth:`feed` returns a list of :class:`Registered`, :class:`Heartbeat` and :class:`Data`
    events; it raises RegistrationError when the first bytes are not a registration of
    ``fmt`` (or, with ``known_ids``, :class:`UnknownDtu`).
    """

    def __init__(self, fmt: str, *, known_ids: Sequence[str] = (), heartbeat: bytes | None = None) -> None:
        if fmt not in FORMATS:
            raise RegistrationError(f"registration format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.known_ids = tuple(known_ids)
        self.heartbeat = heartbeat
        self.dtu_id: str | None = None
        self._head = b""
        self._filter: HeartbeatFilter | None = None

    def feed(self, data: bytes) -> list[Registered | Heartbeat | Data]:
        events: list[Registered | Heartbeat | Data] = []
        if self.dtu_id is None:
            self._head += data
            reg = self._registration()
            if reg is None:
                return events
            event, used = reg
            events.append(event)
            self.dtu_id = event.dtu_id
            self._filter = HeartbeatFilter([DtuFormat(self.fmt, event.dtu_id, self.heartbeat).heartbeat_packet()])
            data, self._head = self._head[used:], b""
        assert self._filter is not None
        for packet, chunk in self._filter.feed(data):
            events.append(Data(chunk) if packet is None else Heartbeat(self.dtu_id))
        return events

    def _registration(self) -> tuple[Registered, int] | None:
        head = self._head
        if self.fmt == "ddp":
            parsed = parse_ddp(head)
            if parsed is None:
                return None
            packet, used = parsed
            if packet.kind != DDP_REGISTER:
                raise RegistrationError(f"expected a DDP registration (01h), got packet type {packet.kind:02X}h")
            if self.known_ids and packet.dtu_id not in self.known_ids:
                raise UnknownDtu(packet.dtu_id, "ddp")
            return Registered(packet.dtu_id, packet.ip, packet.port), used
        if self.fmt == "usr":
            end = head.find(b"\r\n")
            if end < 0:
                if len(head) > MAX_TEXT_REGISTRATION:
                    raise RegistrationError(f"USR registration: no CR LF within {MAX_TEXT_REGISTRATION} bytes")
                return None
            dtu_id = head[:end].decode("utf-8", "replace")
            if self.known_ids and dtu_id not in self.known_ids:
                raise UnknownDtu(dtu_id, "usr")
            return Registered(dtu_id), end + 2
        for ident in sorted(self.known_ids, key=len, reverse=True):
            raw = ident.encode("utf-8")
            if head.startswith(raw):
                return Registered(ident), len(raw)
            if raw.startswith(head):
                return None
        if self.known_ids:
            raise UnknownDtu(head[:40].decode("utf-8", "replace"), "plain")
        return Registered(head.decode("utf-8", "replace")), len(head)


class DownlinkDecoder:
    """DTU side: bytes from the server in; ``feed`` returns ``(acknowledged, bus_bytes)``.

    For DDP, acknowledgement packets for this DTU are removed from the stream and set
    ``acknowledged``; for plain and usr every byte is bus data and ``acknowledged`` is
    always True."""

    def __init__(self, fmt: DtuFormat) -> None:
        self.fmt = fmt
        self._filter = HeartbeatFilter([ddp_ack(fmt.dtu_id)]) if fmt.registration == "ddp" else None

    def feed(self, data: bytes) -> tuple[bool, bytes]:
        if self._filter is None:
            return True, data
        acked = False
        bus = bytearray()
        for packet, chunk in self._filter.feed(data):
            if packet is None:
                bus += chunk
            else:
                acked = True
        return acked, bytes(bus)
