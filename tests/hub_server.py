"""A loopback Hub for the tests: olah (a real Hub mirror server) serves downloads of git repositories, and the
small upload server here receives what ``huggingface_hub`` sends when it creates repos and commits, writing
each commit into those git repositories.

The upload server implements the endpoints ``HfApi.create_repo`` and ``HfApi.upload_folder`` call:
``/api/repos/create``, ``/api/validate-yaml`` (checked with ``huggingface_hub``'s own card parser),
``/api/{type}s/{repo}/preupload/{revision}`` (every file "regular", so no LFS or Xet transfer; the real Hub
asks for LFS above 10 MB) and ``/api/{type}s/{repo}/commit/{revision}``. A commit lands whole or not at all:
files are written to git only after the whole request has arrived. ``fault`` and ``fault_count`` make the next
commit requests fail (``huggingface_hub`` retries a failed commit five times).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Weights do not compress: storing them uncompressed keeps the commits fast.
GIT_IDENTITY = ["-c", "user.name=loopback-hub", "-c", "user.email=hub@127.0.0.1", "-c", "core.compression=0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit_files(repo: Path, files: dict[str, bytes], message: str, deleted: tuple[str, ...] = ()) -> str:
    """Write ``files`` into the git repository ``repo`` as one commit on main; returns its hash."""
    for path in deleted:
        target = repo / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for path, content in files.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class UploadHub:
    """The upload half of the loopback Hub; repositories live under ``mirrors/{type}s/{org}/{name}``."""

    def __init__(self, mirrors: Path) -> None:
        self.mirrors = mirrors
        self.fault: str | None = None  # "500" or "drop": what commit requests meet
        self.fault_count = 0  # how many commit requests meet it
        self.requests: list[str] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                hub.requests.append(self.path)
                hub.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo_path(self, repo_type: str, repo_id: str) -> Path:
        return self.mirrors / repo_type / repo_id

    # -- requests -------------------------------------------------------------------------------------------

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        fault = None
        if path.startswith("/api/") and "/commit/" in path and self.fault_count > 0:
            fault, self.fault_count = self.fault, self.fault_count - 1
        if fault == "drop":
            handler.rfile.read(length // 2)  # half the upload arrives, then the connection goes
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        body = handler.rfile.read(length)
        if path == "/api/repos/create":
            return self.create_repo(handler, json.loads(body))
        if path == "/api/validate-yaml":
            return self.validate_yaml(handler, json.loads(body))
        parts = path.split("/")  # ['', 'api', 'models', org, name, action, revision]
        if len(parts) >= 7 and parts[1] == "api" and parts[5] in ("preupload", "commit"):
            repo = self.repo_path(parts[2], f"{parts[3]}/{parts[4]}")
            if not repo.is_dir():
                return self.reply(handler, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if parts[5] == "preupload":
                files = json.loads(body)["files"]
                return self.reply(
                    handler,
                    200,
                    {"files": [dict(path=f["path"], uploadMode="regular", shouldIgnore=False) for f in files]},
                )
            if fault == "500":
                return self.reply(handler, 500, {"error": "Internal Error - We're working hard to fix this"})
            return self.commit(handler, repo, parts[2], f"{parts[3]}/{parts[4]}", body)
        return self.reply(handler, 404, {"error": f"no such endpoint {path}"})

    def create_repo(self, handler: BaseHTTPRequestHandler, payload: dict) -> None:
        repo_type = (payload.get("type") or "model") + "s"
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.endpoint}/{'' if repo_type == 'models' else repo_type + '/'}{repo_id}"
        repo = self.repo_path(repo_type, repo_id)
        if repo.exists():
            return self.reply(handler, 409, {"error": "You already created this repo", "url": url})
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        return self.reply(handler, 200, {"url": url, "name": repo_id})

    def validate_yaml(self, handler: BaseHTTPRequestHandler, payload: dict) -> None:
        from huggingface_hub import DatasetCard, ModelCard

        card_class = DatasetCard if payload.get("repoType") == "dataset" else ModelCard
        try:
            card = card_class(payload["content"], ignore_metadata_errors=False)
            if payload.get("repoType") != "dataset":
                card.data.to_dict()  # model-index must round-trip
        except Exception as error:
            return self.reply(handler, 400, {"errors": [{"message": f"{type(error).__name__}: {error}"}]})
        return self.reply(handler, 200, {"errors": [], "warnings": []})

    def commit(self, handler: BaseHTTPRequestHandler, repo: Path, repo_type: str, repo_id: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {}
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                if value.get("encoding") != "base64":
                    return self.reply(handler, 400, {"error": f"unsupported encoding {value.get('encoding')}"})
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                return self.reply(handler, 400, {"error": "this server takes regular uploads only"})
        deleted = tuple(line["value"]["path"] for line in lines if line["key"] in ("deletedFile", "deletedFolder"))
        with self.lock:
            oid = commit_files(repo, files, header.get("summary") or "upload", deleted)
        prefix = "" if repo_type == "models" else f"{repo_type}/"
        url = f"{self.endpoint}/{prefix}{repo_id}/commit/{oid}"
        return self.reply(handler, 200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})


class OlahMirror:
    """olah serving the git repositories under ``mirrors`` on 127.0.0.1, offline (it never asks huggingface.co)."""

    def __init__(self, root: Path, mirrors: Path) -> None:
        port = free_port()
        config = root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {port}\n'
            f'repos-path = "{root / "olah-cache"}"\n'
            f'mirrors-path = ["{mirrors}"]\n'
            "metadata-cache-ttl = 0\n"
            "[accessibility]\noffline = true\n"
        )
        olah = Path(sys.executable).with_name("olah-cli")
        self.log = open(root / "olah.log", "w")
        self.process = subprocess.Popen([str(olah), "-c", str(config)], cwd=root, stdout=self.log, stderr=self.log)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/api/whoami-v2", timeout=2)
                break
            except urllib.error.HTTPError:  # it answers: it is up
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"olah did not start: {(root / 'olah.log').read_text()[-2000:]}") from None
                time.sleep(0.3)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def hub_env(endpoint: str, cache: Path) -> dict[str, str]:
    """Environment for a process that talks to ``endpoint`` as the Hub, with its own cache."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(cache)}
    env.pop("HF_HUB_CACHE", None)
    env.update(OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="10")
    return env
