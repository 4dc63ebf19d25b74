"""HTTPS with ``[api] tls``: a client that trusts the certificate logs in; plain HTTP to the
HTTPS port gets nothing; an unreadable certificate stops the start with a clear reason."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import threads

from support.apirig import ApiRig


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "api.key"), "-out", str(d / "api.crt")], check=True, capture_output=True,
                   timeout=60)
    return str(d / "api.crt"), str(d / "api.key")


def _login(port: int, cafile: str, alpn: list[str] | None = None) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=cafile)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    req = urllib.request.Request(f"https://127.0.0.1:{port}/api/v1/login", method="POST",
                                 data=json.dumps({"name": "viewer", "password": "viewer"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=context, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest_twisted.ensureDeferred
async def test_https_serves_the_api_and_plain_http_gets_nothing(cert):
    rig = ApiRig(tls=cert)
    rig.start()
    try:
        assert rig.api.url.startswith("https://127.0.0.1:")
        status, body = await threads.deferToThread(_login, rig.api.port, cert[0])
        assert status == 200 and body["role"] == "viewer"
        # as curl, httpx and browsers do: offer ALPN (h2 first); the API settles on http/1.1
        status, body = await threads.deferToThread(_login, rig.api.port, cert[0], ["h2", "http/1.1"])
        assert status == 200 and body["role"] == "viewer"
        plain = None
        try:
            plain = await rig.call("GET", "health")
        except Exception:  # noqa: BLE001 -- the TLS side drops a plain request: what we want
            pass
        assert plain is None or plain.status != 200
    finally:
        await rig.stop()


def test_a_missing_certificate_stops_the_start_naming_it(tmp_path):
    rig = ApiRig(tls=(str(tmp_path / "none.crt"), str(tmp_path / "none.key")))
    with pytest.raises(RuntimeError, match=r"\[api\] tls: cannot use certificate .*none\.crt"):
        rig.start()
