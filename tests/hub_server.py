"""A local stand-in for the Hugging Face hub (tests only): serves one folder as a model repo.

Implements what ``huggingface_hub.snapshot_download`` asks for: repository info, the file
tree of a commit, and each file (HEAD and GET); records the files it served.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


class HubServer:
    """``with HubServer(repo_id, folder) as url:`` -> the endpoint to put in ``HF_ENDPOINT``;
    ``served`` lists the files downloaded (GET) from it."""

    def __init__(self, repo_id: str, folder: Path):
        self.repo_id, self.folder = repo_id, Path(folder)
        self.served: list[str] = []

    def _files(self) -> dict[str, Path]:
        return {p.name: p for p in sorted(self.folder.iterdir()) if p.is_file()}

    def __enter__(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _route(self, head: bool):
                path = unquote(urlparse(self.path).path)
                files = hub._files()
                api = f"/api/models/{hub.repo_id}/"
                if path.startswith(api + "revision/"):
                    info = {"id": hub.repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                if path.startswith(api + "tree/"):
                    tree = [{"type": "file", "path": f, "size": p.stat().st_size,
                             "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for f, p in files.items()]
                    return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
                prefix = f"/{hub.repo_id}/resolve/"
                if path.startswith(prefix):
                    name = path[len(prefix):].split("/", 1)[1]
                    if name in files:
                        body = files[name].read_bytes()
                        if not head:
                            hub.served.append(name)
                        return self._send(200, body, {"X-Repo-Commit": COMMIT,
                                                      "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}, head)
                return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
