"""A small HTTP server that stands in for get.rke2.io and RKE2's GitHub releases, for the ``script`` install method.

The real ``script`` method downloads the install script from ``https://get.rke2.io``; the script then downloads
``rke2.linux-<arch>.tar.gz`` and ``sha256sum-<arch>.txt`` of ``INSTALL_RKE2_VERSION`` from
``INSTALL_RKE2_ARTIFACT_URL`` (default ``https://github.com/rancher/rke2/releases/download``), one folder per
version, ``+`` written ``%2B``. This server serves a folder laid out the same way::

    <root>/install.sh                                               the stand-in's install.sh
    <root>/rancher/rke2/releases/download/<version>/                a stand-in release (build_bundle)
    <root>/<mirror>/<version>/                                      other mirrors (e.g. a tampered one)

    with ReleaseServer(root, "10.213.16.1") as server:
        server.publish("v1.31.4+rke2r1")
        server.script_url        # http://10.213.16.1:<port>/install.sh
        server.artifact_url      # http://10.213.16.1:<port>/rancher/rke2/releases/download

Bind it to the test network's gateway address: the test hosts reach that address and nothing else. Every request
is recorded (client address, path as requested, status) so that tests can check who downloaded what.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .build import BUNDLE_DIR, build_bundle

__all__ = ["RELEASES_PATH", "ReleaseServer", "Request", "closed_port_url"]

RELEASES_PATH = "rancher/rke2/releases/download"


@dataclass(frozen=True)
class Request:
    client: str
    method: str
    path: str  # unquoted, without the query
    status: int
    user_agent: str


class _Handler(http.server.SimpleHTTPRequestHandler):
    server_version = "rke2-standin-releases/1"
    protocol_version = "HTTP/1.1"

    def __init__(self, *args, record, **kwargs):
        self._record = record
        super().__init__(*args, **kwargs)

    def list_directory(self, path):
        self.send_error(404, "Not Found")
        return None

    def log_request(self, code="-", size="-"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        status = int(code) if str(code).isdigit() else 0
        self._record(Request(self.client_address[0], self.command, path, status, self.headers.get("User-Agent", "")))

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class ReleaseServer:
    """Serves ``root`` over HTTP on ``address`` (``port`` 0: a free one), in a background thread."""

    def __init__(self, root: Path, address: str, port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.address = address
        self._port = port
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        shutil.copyfile(BUNDLE_DIR / "install.sh", self.root / "install.sh")

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> ReleaseServer:
        handler = functools.partial(_Handler, directory=str(self.root), record=self._record)
        self._server = http.server.ThreadingHTTPServer((self.address, self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="release-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ReleaseServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the release server is not running")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def script_url(self) -> str:
        return f"{self.base_url}/install.sh"

    @property
    def artifact_url(self) -> str:
        return self.mirror_url(RELEASES_PATH)

    def mirror_url(self, mirror: str) -> str:
        return f"{self.base_url}/{mirror.strip('/')}"

    # -- content --------------------------------------------------------------------------------------------

    def release_dir(self, version: str, mirror: str = RELEASES_PATH) -> Path:
        return self.root / mirror.strip("/") / version

    def publish(self, version: str, *, mirror: str = RELEASES_PATH, **knobs: float) -> Path:
        """Build the stand-in release ``version`` into the mirror's folder (knobs as for ``build_bundle``)."""
        folder = build_bundle(self.release_dir(version, mirror), version, **knobs)
        (folder / "install.sh").unlink()  # the script is served from the root, as get.rke2.io serves it
        return folder

    def publish_tampered(self, version: str, mirror: str) -> str:
        """Copy release ``version`` into ``mirror`` with one byte of its tarball changed (its sha256sum file
        unchanged); returns the mirror's URL."""
        source = self.release_dir(version)
        target = self.release_dir(version, mirror)
        shutil.copytree(source, target, dirs_exist_ok=True)
        tarball = next(target.glob("rke2.linux-*.tar.gz"))
        data = bytearray(tarball.read_bytes())
        data[len(data) // 2] ^= 0xFF
        tarball.write_bytes(bytes(data))
        return self.mirror_url(mirror)

    # -- what was asked -------------------------------------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def downloads(self, *, status: int = 200) -> dict[str, list[str]]:
        """``{client address: [path, ...]}`` of the GET requests answered with ``status``, in order."""
        found: dict[str, list[str]] = {}
        for request in self.requests:
            if request.method == "GET" and request.status == status:
                found.setdefault(request.client, []).append(request.path)
        return found


def closed_port_url(address: str, path: str = "/install.sh") -> str:
    """An http URL on ``address`` where nothing listens (a port just bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    return f"http://{address}:{port}{path}"
