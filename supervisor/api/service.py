"""The API's service in the supervisor's tree: builds the sessions, the event stream and
the site, and listens on ``[api] listen`` (HTTPS with ``tls``).

It is a child of the supervisor's ``MultiService``, built after the command dispatcher,
so it starts when everything it reads exists and stops before the point database.  On
stop it stops listening, closes every event stream and the history reader.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from st2000r.config.model import ApiSettings, Topology
from st2000r.supervisor.api.app import ApiApp
from st2000r.supervisor.api.resource import IDLE_TIMEOUT_S, ApiResource, ApiSite, LimitedFactory
from st2000r.supervisor.api.sessions import Sessions, verify_in_thread
from st2000r.supervisor.api.stream import EventStream

__all__ = ["ApiService"]

log = Logger()


class ApiService(Service):
    """The HTTP API of ``supervisor`` (a ``SupervisorService`` or any object with ``bus``,
    ``points``, ``alarms``, ``commands``, ``historian``, ``pollers``, ``gprs_server``).
    ``clock``: token expiry and heartbeats (default ``reactor``).  ``settings``: default
    ``topology.api``.  After start, ``port`` is the port actually bound.  Session records
    go to ``supervisor.audit`` (else the dispatcher's audit log); a throttle trip to
    ``supervisor.alarms.on_api_login_event``."""

    name = "api"

    def __init__(self, topology: Topology, reactor: Any, supervisor: Any, *, clock: Any = None,
                 settings: ApiSettings | None = None, verify: Any = None, buffer_size: int = 4096) -> None:
        self.topology = topology
        self.reactor = reactor
        self.settings = settings or topology.api
        if self.settings is None:
            raise ValueError("the topology has no [api] section")
        clock = clock or reactor
        operators = {o.name: o for o in topology.operators}
        audit = getattr(supervisor, "audit", None) or getattr(supervisor.commands, "audit", None)
        self.sessions = Sessions(operators, clock, ttl_s=self.settings.token_ttl_s,
                                 verify=verify or verify_in_thread(reactor), audit=audit,
                                 observer=getattr(supervisor.alarms, "on_api_login_event", None))
        self.stream = EventStream(supervisor.bus, clock, buffer_size=buffer_size,
                                  max_clients=self.settings.max_sse_clients)
        self.app = ApiApp(topology, clock, bus=supervisor.bus, points=supervisor.points, alarms=supervisor.alarms,
                          commands=supervisor.commands, sessions=self.sessions, stream=self.stream,
                          historian=getattr(supervisor, "historian", None), reactor=reactor,
                          pollers=getattr(supervisor, "pollers", None),
                          gprs_server=getattr(supervisor, "gprs_server", None))
        self.site = ApiSite(ApiResource(self.app), timeout=IDLE_TIMEOUT_S, reactor=clock)
        self.factory = LimitedFactory(self.site, self.settings.max_clients)
        self._listener: Any = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        host, _ = self.settings.listen
        scheme = "https" if self.settings.tls else "http"
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{self.port}"

    def startService(self) -> None:
        super().startService()
        self.stream.start()
        host, port = self.settings.listen
        from twisted.internet.error import CannotListenError

        try:
            if self.settings.tls is not None:
                self._listener = self.reactor.listenSSL(port, self.factory, self._tls_options(), interface=host)
            else:
                self._listener = self.reactor.listenTCP(port, self.factory, interface=host)
        except CannotListenError as exc:
            self.stream.stop()
            raise RuntimeError(f"HTTP API ([api] listen = \"{host}:{port}\"): {exc.socketError}") from None
        self.port = self._listener.getHost().port
        log.info("HTTP API on {url}/api/v1", url=self.url)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self.stream.stop()
        self.app.close()
        if self.app.history is not None:
            self.app.history.close()
        listener, self._listener = self._listener, None
        if listener is None:
            return defer.succeed(None)
        d = defer.maybeDeferred(listener.stopListening)
        for proto in list(self.factory.protocols):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.loseConnection()
        return d

    def _tls_options(self) -> Any:
        """TLS 1.2 or newer with ``[api] tls``: the certificate file's first certificate is the
        server's, the ones after it its chain.  Raises ``RuntimeError`` naming the file."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from twisted.internet import ssl

        cert_path, key_path = (self._path(p) for p in self.settings.tls)
        try:
            with open(cert_path, "rb") as f:
                blocks = f.read().split(b"-----END CERTIFICATE-----")[:-1]
            with open(key_path, "rb") as f:
                key = load_pem_private_key(f.read(), None)
            certs = [x509.load_pem_x509_certificate(b + b"-----END CERTIFICATE-----\n") for b in blocks]
            if not certs:
                raise ValueError("no PEM certificate in it")
            return ssl.CertificateOptions(privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
                                          raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        except Exception as exc:  # OpenSSL raises its own errors for a bad file
            raise RuntimeError(f"[api] tls: cannot use certificate {cert_path} / key {key_path}: {exc}") from None

    def _path(self, path: str) -> str:
        source = self.topology.source
        base = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else ""
        return os.path.join(base, os.path.expanduser(path))
