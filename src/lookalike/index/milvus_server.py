"""A Milvus standalone server on this machine, from the `milvus` package ("embedded Milvus", server 2.3.5).

For tests, benchmarks and trying the `milvus://` backend without a cluster:

    with EmbeddedMilvus("/tmp/milvus-data") as server:       # ~20 s to start on 2 cores
        collection = Collection.open("photos.lookalike", index=server.kind("photos"))

The package starts the real server binary (`milvus run standalone`, with its embedded etcd and RocksMQ)
in a folder of our choosing. Its own defaults listen on fixed ports (19530, 2379/2380 for etcd, 9091 for
health), so a second server on the same machine fails; here every port is a free one picked at start,
etcd included (through an etcd config file), and several servers can run side by side (a test session
beside a benchmark, or two developers' test runs). Its components talk to each other on 127.0.0.1 only.

`stop` ends the server through the package's own API (terminate, then kill after a second); `start`
again on the same folder brings the same data back on the same ports, as a restarted server would.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

#: seconds to wait for a server to answer its health check after start
START_TIMEOUT = 180.0
#: starts tried on newly picked ports when a port was taken between picking and binding it
PORT_ATTEMPTS = 3
#: the components of a standalone server, each listening on its own port
ROLES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedMilvus:
    """One Milvus standalone server with its data in `base_dir`, on free ports of 127.0.0.1."""

    def __init__(self, base_dir: str | os.PathLike[str], *, start_timeout: float = START_TIMEOUT):
        try:
            from milvus import MilvusServer, MilvusServerConfig
        except ImportError:
            raise RuntimeError("the embedded Milvus server needs the `milvus` package: pip install milvus") from None

        class _Config(MilvusServerConfig):
            def try_bind_port(self, port: int) -> socket.socket | None:
                # The package probes each port by binding it; without SO_REUSEADDR a port its own server
                # just closed (TIME_WAIT) looks busy for a minute, so a restart could not reuse it.
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                    sock.listen()
                except OSError:
                    sock.close()
                    return None
                return sock

        self.base_dir = Path(base_dir).resolve()
        self.start_timeout = start_timeout
        config = _Config()
        self._ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
        self._server: Any = MilvusServer(config, wait_for_started=False, **self._ports)
        self._started_once = False
        self._server.set_base_dir(str(self.base_dir))
        # Each component registers an address the others dial; left unset that is the machine's first
        # network address, so keep all of the server's traffic on loopback.
        for role in ROLES:
            config.set(f"{role}.ip", "127.0.0.1")
        self._server.webservice_port = free_port()  # health and metrics; the package scans up from there
        self.etcd_peer_port = free_port()
        self.version = self._server_version()

    @staticmethod
    def _server_version() -> str:
        import milvus

        return str(milvus.__version__)

    # --- facts ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The gRPC port clients connect to."""
        return self._ports["proxy_port"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kind(self, name: str = "lookalike", **knobs: object) -> str:
        """A `milvus://` index kind on this server: remote collections named NAME_EMBEDDER."""
        query = "&".join(f"{k}={v}" for k, v in knobs.items())
        return f"milvus://{self.address}/{name}" + (f"?{query}" if query else "")

    @property
    def running(self) -> bool:
        process = self._server.server_proc
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        process = self._server.server_proc
        return None if process is None else int(process.pid)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's stderr (where it reports why it did not start)."""
        path = self.base_dir / "logs" / "milvus-stderr.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- starting and stopping -------------------------------------------------------------------

    def start(self) -> EmbeddedMilvus:
        """Start the server and wait until it answers its health check (RuntimeError if it does not).

        The ports were free when picked, but another process may take one before the server binds it (an
        outgoing connection's ephemeral port, say): at the first start, new ones are picked and the start
        tried again, up to PORT_ATTEMPTS times; a restart keeps its ports, which its clients know.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_on_ports()
                break
            except RuntimeError as exc:
                if self._started_once or "bind failed" not in str(exc) or attempt == PORT_ATTEMPTS:
                    raise
                self._ports = {key: free_port() for key in self._ports}
                self._server.config.update(**self._ports)
                self.etcd_peer_port = free_port()
        self._started_once = True
        self._wait_healthy()
        return self

    def _start_on_ports(self) -> None:
        etcd_port = self._ports["etcd_port"]
        etcd_config = self.base_dir / "configs" / "embed-etcd.yaml"
        etcd_config.parent.mkdir(parents=True, exist_ok=True)
        client, peer = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{self.etcd_peer_port}"
        etcd_config.write_text(
            f"name: default\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\ninitial-cluster: default={peer}\n"
        )
        # The server reads ETCD_CONFIG_PATH from its environment, which the package copies from ours.
        before = os.environ.get("ETCD_CONFIG_PATH")
        os.environ["ETCD_CONFIG_PATH"] = str(etcd_config)
        try:
            self._server.start()
        finally:
            if before is None:
                os.environ.pop("ETCD_CONFIG_PATH", None)
            else:
                os.environ["ETCD_CONFIG_PATH"] = before

    def _wait_healthy(self) -> None:
        url = f"http://127.0.0.1:{self._server.webservice_port}/healthz"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running:
                self.stop()
                raise RuntimeError(f"the Milvus server in {self.base_dir} exited while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if b"OK" in response.read():
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Milvus server in {self.base_dir} did not start in {self.start_timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server through the package's API (it terminates, then kills, the process it started)."""
        self._server.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedMilvus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["EmbeddedMilvus", "free_port"]
