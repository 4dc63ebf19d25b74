"""``st2000r run`` with ``[api]`` on a port that is taken stops at once, saying so."""

from __future__ import annotations

import socket
import subprocess

from support.process import ST2000R
from st2000r.config import example_path


def test_a_taken_port_stops_the_start_naming_the_api(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "site.toml"
        config.write_text(example_path("small.toml").read_text(encoding="utf-8")
                          + f'\n[supervisor]\nstate_dir = "{tmp_path}"\n\n[api]\nlisten = "127.0.0.1:{port}"\n',
                          encoding="utf-8")
        out = subprocess.run([ST2000R, "run", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (f'st2000r run: cannot start: HTTP API ([api] listen = '
                                                   f'"127.0.0.1:{port}"): [Errno 98] Address already in use')
