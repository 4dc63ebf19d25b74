"""The console over HTTPS (``[api] tls``): with ``--ca`` naming the CA that signed the
supervisor's certificate it logs in; without it the certificate is refused and the
console says why instead of talking to an unverified server."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import pytest_twisted
from support.apirig import ApiRig
from support.console import drive, screen_text, until

from st2000r.tui.app import ConsoleApp


def self_signed(folder):
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, made by openssl."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("openssl is missing (Makefile SYSTEM_PACKAGES installs it)")
        pytest.skip("openssl is not installed")
    cert, key = folder / "api.crt", folder / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def tls_rig(tmp_path):
    """The API test rig serving HTTPS with a self-signed certificate (what ``--ca`` is given)."""
    cert, key = self_signed(tmp_path)
    rig = ApiRig(tls=(str(cert), str(key)))
    rig.start()
    yield rig, cert
    pytest_twisted.blockon(rig.stop())


async def log_in(pilot) -> None:
    await until(pilot, lambda: pilot.app.screen.query("#name"))
    pilot.app.screen.query_one("#name").value = "operator"
    pilot.app.screen.query_one("#password").value = "operator"
    pilot.app.screen.query_one("#password").focus()
    await pilot.press("enter")


@pytest_twisted.ensureDeferred
async def test_https_with_the_ca_logs_in_and_without_it_is_refused_with_the_reason(tls_rig):
    rig, ca = tls_rig
    url = f"https://127.0.0.1:{rig.api.port}"

    async def trusted(pilot):
        await log_in(pilot)
        await until(pilot, lambda: pilot.app.session is not None and pilot.app.connected, what="login over HTTPS")

    await drive(ConsoleApp(url, language="en", ca_file=str(ca)), trusted)

    async def untrusted(pilot):
        await log_in(pilot)
        await until(pilot, lambda: "Supervisor unreachable" in screen_text(pilot.app), what="the refusal")
        assert "CERTIFICATE_VERIFY_FAILED" in "".join(screen_text(pilot.app).split())
        assert pilot.app.session is None

    await drive(ConsoleApp(url, language="en"), untrusted)


@pytest_twisted.ensureDeferred
async def test_an_untrusted_https_server_is_named_as_a_tls_failure(tmp_path):
    """Against a TLS server whose certificate nobody vouches for, the console says the TLS
    handshake failed (not "connection refused"), and never logs in."""
    import asyncio
    import ssl

    from twisted.internet.defer import Deferred

    from st2000r.tui.client import ApiClient, Unreachable

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))

    async def scenario() -> str:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        try:
            await ApiClient(f"https://127.0.0.1:{port}").login("a", "b")
        except Unreachable as exc:
            return exc.reason
        finally:
            server.close()
        return "logged in"

    reason = await Deferred.fromFuture(asyncio.ensure_future(scenario()))
    assert reason.startswith("TLS handshake failed") and "CERTIFICATE_VERIFY_FAILED" in reason
