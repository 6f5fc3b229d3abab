"""A private mosquitto broker on a free loopback port: the local stand-in for AWS IoT Core."""

from __future__ import annotations

import getpass
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """Starts ``mosquitto`` with a generated config (MQTT5, anonymous, loopback only). Sessions and queued QoS1
    messages are persisted across ``restart()``, as AWS IoT Core keeps them across its own outages.

    Use as a context manager; ``url`` is ``mqtt://127.0.0.1:PORT``. Stops the process it started, by its own PID.
    """

    def __init__(self, *, port: int | None = None, start_timeout: float = 10.0) -> None:
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> MosquittoBroker:
        exe = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
        )
        if exe is None:
            raise BrokerError("mosquitto is not installed: run `make demo` (it installs it) or `apt-get install mosquitto`")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="voicebot-broker-")
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            f"user {getpass.getuser()}\n"  # started as root, mosquitto would switch to a user that cannot write here
            "persistence true\n"  # written when mosquitto stops; read back by restart()
            f"persistence_location {self._dir.name}/\n"
            "autosave_interval 0\n"
            "max_packet_size 1048576\n"
            "set_tcp_nodelay true\n"  # no Nagle delays on small MQTT packets (latency is the product)
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace").strip()
                raise BrokerError(f"mosquitto exited at start (code {self._proc.returncode}): {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.debug("mosquitto %d listening on %s", self._proc.pid, self.url)
                    return self
            except OSError:
                time.sleep(0.02)  # poll the port until mosquitto accepts (bounded by start_timeout)
        self.stop()
        raise BrokerError(f"mosquitto did not accept connections on port {self.port} within {self.start_timeout} s")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop mosquitto (it saves its sessions), stay down ``down_s`` seconds (an outage), start it on the same port."""
        self._stop_process()
        time.sleep(down_s)  # the outage being simulated
        self.start()

    def stop(self) -> None:
        self._stop_process()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc is not None and proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
