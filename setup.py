"""Packaging for the ST2000R supervisor.

The folders stay on disk as the user laid them out, but install under one import root,
``st2000r``: installed bare, ``supervisor`` and ``config`` would overwrite other packages
(the process manager Supervisor is imported as ``supervisor``).  ``st2000r`` itself is an
implicit namespace package; every room is a regular package below it.
"""

from setuptools import setup

ROOMS = {
    "st2000r.supervisor": "supervisor",
    "st2000r.supervisor.api": "supervisor/api",
    "st2000r.drivers": "drivers",
    "st2000r.drivers.st2000r": "drivers/st2000r",
    "st2000r.bridge": "bridge",
    "st2000r.tui": "tui",
    "st2000r.historian": "historian",
    "st2000r.historian.migrations": "historian/migrations",
    "st2000r.config": "config",
    "st2000r.simulation": "simulation",
}

setup(
    name="st2000r",
    version="0.1.0",
    description="Supervisor for ST2000R residential remote meter reading networks",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=list(ROOMS),
    package_dir=ROOMS,
    package_data={
        "st2000r.config": ["examples/*.toml"],
        "st2000r.tui": ["*.tcss"],
        "st2000r.simulation": ["scenarios/*.toml"],
        "st2000r.historian.migrations": ["script.py.mako", "versions/*.py"],
    },
    install_requires=[
        "twisted[tls]>=24.7",  # tls: pyOpenSSL and service_identity for HTTPS of the API ([api] tls) and
        # Modbus/TCP Security; once pyOpenSSL is there, twisted.internet.ssl needs service_identity
        "pymodbus==3.16.*",
        "pyserial>=3.5",
        "SQLAlchemy==2.1.*",
        "alembic==1.20.*",
        "textual==8.2.*",  # the console's snapshot tests depend on its rendering
        "httpx==0.28.*",  # the console's HTTP client
        "textual-plotext==1.0.*",  # the console's consumption chart
        "argon2-cffi>=23.1",  # operators' password hashes (the HTTP API's login, st2000r operators hash)
        "cryptography>=42",  # the API checks its TLS certificate and key at start (also needed by pyOpenSSL)
        "tzdata",  # zone data for [historian] aggregate_timezone where the system has none (zoneinfo's fallback)
    ],
    extras_require={
        # database drivers of the historian: a plain install (SQLite) needs neither
        "postgresql": ["psycopg[binary]==3.3.*"],
        "mssql": ["pyodbc>=5.0,<6"],  # needs the system's unixODBC (libodbc.so.2) and an ODBC driver
        "test": [
            "psycopg[binary]==3.3.*",
            "pyodbc>=5.0,<6",  # the SQL Server dialect is compiled offline in tests
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "schemathesis==4.*",  # fuzzes the HTTP API from its served OpenAPI document
        ],
    },
    entry_points={
        "console_scripts": ["st2000r = st2000r.supervisor.cli:main"],
        # the subcommands of `st2000r`, each in the room that owns it (module with main(argv) -> int);
        # the dispatcher reads this table, so it names no room's module itself
        "st2000r.commands": [
            "config = st2000r.config.cli",
            "frame = st2000r.drivers.st2000r.cli",
            "run = st2000r.supervisor.run",
            "db = st2000r.historian.cli",
            "history = st2000r.historian.history_cli",
            "operators = st2000r.supervisor.api.operators_cli",
            "scan = st2000r.supervisor.scan",
            "registers = st2000r.bridge.cli",
            "console = st2000r.tui.cli",
            "simulate = st2000r.simulation.cli",
            "simulate-ctl = st2000r.simulation.ctl",
            "simulate-demo = st2000r.simulation.demo",
            "demo = st2000r.supervisor.demo",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: Twisted",
        "Topic :: System :: Hardware",
    ],
)
