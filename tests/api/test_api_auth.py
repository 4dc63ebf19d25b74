"""Login, tokens and their expiry, logout, throttling of failed logins, the session log,
and ``st2000r operators hash`` — over real HTTP on a loopback port."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted

from support.apirig import ApiRig
from st2000r.supervisor.api.sessions import FAIL_LIMIT, FAIL_WINDOW_S, verify_password


@pytest.fixture
def rig():
    rig = ApiRig(ttl_s=600)
    rig.start()
    yield rig
    pytest_twisted.blockon(rig.stop())


def error(answer):
    return answer.json["error"]


@pytest_twisted.ensureDeferred
async def test_login_gives_an_expiring_token_that_opens_the_api(rig):
    a = await rig.call("POST", "login", {"name": "operator", "password": "operator"})
    assert a.status == 200
    body = a.json
    assert body["name"] == "operator" and body["role"] == "operator" and body["ttl_s"] == 600
    assert body["expires_at"].startswith("2026-05-28T") and len(body["token"]) >= 40
    me = await rig.call("GET", "me", token=body["token"])
    assert me.status == 200 and me.json == {"name": "operator", "role": "operator", "expires_at": body["expires_at"]}


@pytest_twisted.ensureDeferred
async def test_a_token_expires_by_the_clock(rig):
    token = await rig.token("viewer")
    rig.clock.advance(599)
    assert (await rig.call("GET", "me", token=token)).status == 200
    rig.clock.advance(1)
    a = await rig.call("GET", "me", token=token)
    assert a.status == 401 and error(a)["code"] == "unauthorized" and "expired" in error(a)["message"]
    assert a.header("WWW-Authenticate").startswith("Bearer")
    again = await rig.call("GET", "me", token=token)  # gone now: unknown, not expired
    assert again.status == 401 and "unknown token" in error(again)["message"]
    events = [r["event"] for r in (await rig.call("GET", "audit/sessions", as_="admin")).json["items"]]
    assert "expired" in events


@pytest_twisted.ensureDeferred
async def test_missing_malformed_and_unknown_tokens_are_401(rig):
    a = await rig.call("GET", "meters")
    assert a.status == 401 and "no token" in error(a)["message"]
    a = await rig.call("GET", "meters", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert a.status == 401 and "Bearer" in error(a)["message"]
    a = await rig.call("GET", "meters", token="not-a-token")
    assert a.status == 401 and "unknown token" in error(a)["message"]


@pytest_twisted.ensureDeferred
async def test_logout_ends_the_token(rig):
    token = await rig.token("viewer")
    a = await rig.call("POST", "logout", token=token)
    assert a.status == 204 and a.raw == b""
    assert (await rig.call("GET", "me", token=token)).status == 401


@pytest.mark.parametrize("name, password", [("operator", "wrong"), ("nobody", "x"), ("modbus", "modbus"),
                                            ("operator", "")])
@pytest_twisted.ensureDeferred
async def test_failed_logins_say_nothing_about_which_part_was_wrong(rig, name, password):
    a = await rig.call("POST", "login", {"name": name, "password": password})
    assert a.status == 401 and a.json == {"error": {"code": "bad_credentials", "message": "wrong name or password",
                                                    "field": None}}


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_throttled_per_address_and_audited(rig):
    for _ in range(FAIL_LIMIT):
        assert (await rig.call("POST", "login", {"name": "operator", "password": "guess"})).status == 401
    a = await rig.call("POST", "login", {"name": "operator", "password": "operator"})  # even the right one
    assert a.status == 429 and error(a)["code"] == "too_many_requests"
    assert 1 <= int(a.header("Retry-After")) <= FAIL_WINDOW_S
    rig.clock.advance(FAIL_WINDOW_S)
    assert (await rig.call("POST", "login", {"name": "operator", "password": "operator"})).status == 200
    log = (await rig.call("GET", "audit/sessions?limit=1000", as_="admin")).json["items"]
    events = [(r["event"], r["name"], r["peer"]) for r in reversed(log)]
    assert events[:FAIL_LIMIT + 2] == ([("failed", "operator", "127.0.0.1")] * FAIL_LIMIT
                                       + [("throttled", "operator", "127.0.0.1"), ("login", "operator", "127.0.0.1")])
    assert all(r["detail"] for r in log if r["event"] == "failed")


@pytest_twisted.ensureDeferred
async def test_an_account_holders_own_logins_do_not_forgive_guesses_from_the_address(rig):
    for _ in range(FAIL_LIMIT - 1):
        assert (await rig.call("POST", "login", {"name": "engineer", "password": "guess"})).status == 401
        assert (await rig.call("POST", "login", {"name": "viewer", "password": "viewer"})).status == 200
    assert (await rig.call("POST", "login", {"name": "engineer", "password": "guess"})).status == 401
    a = await rig.call("POST", "login", {"name": "viewer", "password": "viewer"})
    assert a.status == 429 and error(a)["code"] == "too_many_requests"


@pytest_twisted.ensureDeferred
async def test_the_failure_table_is_bounded(rig):
    sessions = rig.api.sessions
    sessions.max_peers = 3
    for i in range(10):
        sessions._fail(f"192.0.2.{i}", rig.clock.seconds())
    assert list(sessions._failures) == ["192.0.2.7", "192.0.2.8", "192.0.2.9"]


@pytest_twisted.ensureDeferred
async def test_the_token_table_is_bounded(rig):
    rig.api.sessions.max_tokens = 2
    first = (await rig.call("POST", "login", {"name": "viewer", "password": "viewer"})).json["token"]
    for _ in range(2):
        assert (await rig.call("POST", "login", {"name": "viewer", "password": "viewer"})).status == 200
    assert len(rig.api.sessions) == 2
    assert (await rig.call("GET", "me", token=first)).status == 401


@pytest.mark.parametrize("body, field", [
    ({"name": "operator"}, "password"),
    ({"password": "x"}, "name"),
    ({"name": 3, "password": "x"}, "name"),
    ({"name": "operator", "password": "x", "extra": 1}, "extra"),
    ([1, 2], None),
])
@pytest_twisted.ensureDeferred
async def test_bad_login_bodies_name_the_field(rig, body, field):
    a = await rig.call("POST", "login", body)
    assert a.status == 400 and error(a)["field"] == field and error(a)["code"] == "invalid"


def test_operators_hash_reads_standard_input_and_prints_a_verifiable_line():
    out = subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", "operators", "hash"], input="s3cret\n",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith('password_hash = "$argon2id$') and line.endswith('"')
    stored = line.split('"')[1]
    assert verify_password(stored, "s3cret") and not verify_password(stored, "s3cret\n")
    empty = subprocess.run([sys.executable, "-m", "st2000r.supervisor.cli", "operators", "hash"], input="",
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "empty password" in empty.stderr and empty.stdout == ""


def _pty_read_until(fd: int, want: bytes, timeout: float = 30.0) -> bytes:
    import os
    import select
    import time

    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {want!r} within {timeout} s; got {got!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
    return got


def test_operators_hash_on_a_terminal_asks_twice_without_echo():
    import fcntl
    import os
    import termios

    master, slave = os.openpty()

    def take_terminal():  # the child's controlling terminal is the pty, as in an ssh session
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "st2000r.supervisor.cli", "operators", "hash"], stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True, preexec_fn=take_terminal)
    os.close(slave)
    try:
        seen = _pty_read_until(master, b"password: ")
        os.write(master, b"s3cret\n")
        seen += _pty_read_until(master, b"again: ")
        os.write(master, b"s3cret\n")
        seen += _pty_read_until(master, b'"\r\n')
        assert proc.wait(timeout=30) == 0
        assert b"s3cret" not in seen  # never echoed
        stored = seen.split(b'password_hash = "')[1].split(b'"')[0].decode()
        assert verify_password(stored, "s3cret")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
