"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on a free loopback port.

initdb refuses to run as root, so when the tests run as root the cluster is created
and run as the unprivileged ``nobody`` user, in a temp dir that user owns; the socket
lives in that dir too. ``start()`` returns None with a reason when no server can be
started (binaries missing, no unprivileged user), so fixtures can skip cleanly.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PGServer:
    url: str
    root: Path
    pg_ctl: str
    user: str | None

    def stop(self) -> None:
        _run([self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"], self.user, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _find(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{binary}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess:
    kwargs = {"user": user} if user else {}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check, cwd="/", **kwargs)


def start() -> tuple[PGServer | None, str]:
    initdb, pg_ctl = _find("initdb"), _find("pg_ctl")
    if not initdb or not pg_ctl:
        return None, "PostgreSQL binaries (initdb, pg_ctl) not found; install postgresql to run these tests"
    user = None
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("nobody")
        except KeyError:
            return None, "running as root and no unprivileged 'nobody' user for initdb"
        user = "nobody"
    root = Path(tempfile.mkdtemp(prefix="localfm-pg-"))
    try:
        if user:
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o700)
        data = root / "data"
        _run([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C"], user)
        port = _free_port()
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
        _run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"], user)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log = root / "log"
        if log.exists():
            detail += " " + log.read_text(errors="replace")[-500:]
        shutil.rmtree(root, ignore_errors=True)
        return None, f"could not start a PostgreSQL server: {' '.join(detail.split())[:300]}"
    return PGServer(url=f"postgresql://postgres@127.0.0.1:{port}/postgres", root=root, pg_ctl=pg_ctl, user=user), ""
