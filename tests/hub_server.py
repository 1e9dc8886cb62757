"""A loopback Hub for the tests: olah (a real Hub mirror server) serves downloads of git repositories, and the
small upload server here receives what ``huggingface_hub`` sends when it creates repos and commits, writing
each commit into those git repositories.

The upload server implements the endpoints ``HfApi.create_repo`` and ``HfApi.upload_folder`` call:
``/api/repos/create``, ``/api/validate-yaml`` (checked with ``huggingface_hub``'s own card parser),
``/api/{type}s/{repo}/preupload/{revision}`` (as the real Hub: "lfs" for files above 10 MB, else "regular"),
the Git LFS batch API as the Hub speaks it (``/{prefix}{repo}.git/info/lfs/objects/batch``; a single PUT for
objects up to ``MULTIPART_ABOVE``, the Hub's multipart transfer above it: numbered part URLs in the action's
header, a ``chunk_size``, part ETags and a completion POST; then the verify call) and
``/api/{type}s/{repo}/commit/{revision}``, whose ``lfsFile`` lines become git-lfs pointer files.

LFS objects are stored where git-lfs keeps them, ``.git/lfs/objects/aa/bb/OID``, which is where olah reads the
content of a pointer file from: pulls of large files go through real LFS objects. An object appears there only
whole and with the sha256 it was announced with; it changes nothing in the repository until a commit points at
it. A commit lands whole or not at all: files are written to git only after the whole request has arrived.

The server offers LFS, not Xet: with ``hf_xet`` installed, ``huggingface_hub`` asks for a Xet write token
(``/api/{type}s/{repo}/xet-write-token/{revision}``), which this server refuses (recorded in ``requests``);
``HF_HUB_DISABLE_XET=1`` (``hub_env``) makes it take the LFS path.

``faults`` makes requests fail: a list of ``[kind, what, count]`` with kind "500" (answered with
``Retry-After: 0``, so ``huggingface_hub`` retries at once) or "drop" (half the body arrives, then the
connection goes), ``what`` one of "commit", "batch", "upload" (LFS PUTs, single or part).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
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


LFS_THRESHOLD = 10 * 1024 * 1024  # the real Hub's: larger files go through LFS
MULTIPART_ABOVE = 64 * 1024 * 1024  # objects larger than this are uploaded in parts of MULTIPART_CHUNK
MULTIPART_CHUNK = 32 * 1024 * 1024
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def lfs_object_path(repo: Path, oid: str) -> Path:
    """Where git-lfs (and olah) keep the object ``oid`` of the repository ``repo``."""
    return repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def published_bytes(repo: Path, path: str) -> bytes:
    """The content of ``path`` at the head of ``repo``: the LFS object where git holds a pointer to one."""
    blob = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=repo, capture_output=True, check=True).stdout
    if blob.startswith(b"version https://git-lfs.github.com/spec/v1"):
        oid = blob.split(b"oid sha256:")[1].split()[0].decode()
        return lfs_object_path(repo, oid).read_bytes()
    return blob


class LoopbackServer:
    """An HTTP server on 127.0.0.1 in a daemon thread; ``endpoint`` is its URL."""

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UploadHub(LoopbackServer):
    """The upload half of the loopback Hub; repositories live under ``mirrors/{type}s/{org}/{name}``."""

    def __init__(self, mirrors: Path) -> None:
        self.mirrors = mirrors
        self.faults: list[list] = []  # [kind, what, count]: see the module docstring
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.parts: dict[str, dict[int, Path]] = {}  # multipart uploads in progress: oid -> part -> file
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                hub.requests.append(f"POST {self.path}")
                hub.handle(self)

            def do_PUT(self):
                hub.requests.append(f"PUT {self.path}")
                hub.handle_put(self)

            def do_GET(self):  # the only GETs this server gets are hf_xet's token requests; pulls go to olah
                hub.requests.append(f"GET {self.path}")
                hub.reply(self, 501, {"error": "this Hub offers Git LFS transfers, not Xet"})

            def do_HEAD(self):  # HfApi.file_exists, as timm's push_to_hf_hub asks before writing a card
                hub.requests.append(f"HEAD {self.path}")
                hub.file_metadata(self)

        self.serve(Handler)

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

    def take_fault(self, what: str) -> str | None:
        """The fault the next request of kind ``what`` meets, if any (counted down)."""
        with self.lock:
            for fault in self.faults:
                if fault[1] == what and fault[2] > 0:
                    fault[2] -= 1
                    return fault[0]
        return None

    @staticmethod
    def drop(handler: BaseHTTPRequestHandler, length: int) -> None:
        """Half the body arrives, then the connection goes."""
        handler.rfile.read(length // 2)
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True

    def reply_500(self, handler: BaseHTTPRequestHandler, length: int) -> None:
        handler.rfile.read(length)
        self.reply(handler, 500, {"error": "Internal Error - We're working hard to fix this"}, {"Retry-After": "0"})

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        what = "batch" if path.endswith(".git/info/lfs/objects/batch") else "commit" if "/commit/" in path else None
        fault = self.take_fault(what) if what else None
        if fault == "drop":
            return self.drop(handler, length)
        if fault == "500":
            return self.reply_500(handler, length)
        if path.startswith("/lfs/"):  # /lfs/{verify|complete}/{type}/{org}/{name}/{oid}
            return self.lfs_post(handler, path, handler.rfile.read(length))
        body = handler.rfile.read(length)
        if what == "batch":
            return self.lfs_batch(handler, path, json.loads(body))
        if "/xet-write-token/" in path or "/xet-read-token/" in path:
            return self.reply(handler, 501, {"error": "this Hub offers Git LFS transfers, not Xet"})
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
                modes = [
                    dict(
                        path=f["path"], uploadMode="lfs" if f["size"] > LFS_THRESHOLD else "regular", shouldIgnore=False
                    )
                    for f in files
                ]
                return self.reply(handler, 200, {"files": modes})
            return self.commit(handler, repo, parts[2], f"{parts[3]}/{parts[4]}", body)
        return self.reply(handler, 404, {"error": f"no such endpoint {path}"})

    def file_metadata(self, handler: BaseHTTPRequestHandler) -> None:
        """``HEAD /{org}/{name}/resolve/{revision}/{file}`` of a model repository: its size, etag and commit."""
        parts = handler.path.split("?")[0].split("/")  # ['', org, name, 'resolve', revision, *file]
        repo = self.repo_path("models", "/".join(parts[1:3])) if len(parts) > 5 and parts[3] == "resolve" else None
        if repo is None or not repo.is_dir():
            handler.send_response(404)
            handler.send_header("X-Error-Code", "RepoNotFound")
            handler.send_header("Content-Length", "0")
            return handler.end_headers()
        name = "/".join(parts[5:])
        found = subprocess.run(["git", "rev-parse", f"{parts[4]}:{name}"], cwd=repo, capture_output=True, text=True)
        if found.returncode != 0:
            handler.send_response(404)
            handler.send_header("X-Error-Code", "EntryNotFound")
            handler.send_header("Content-Length", "0")
            return handler.end_headers()
        handler.send_response(200)
        handler.send_header("ETag", f'"{found.stdout.strip()}"')
        handler.send_header("X-Repo-Commit", git(repo, "rev-parse", parts[4]))
        handler.send_header("Content-Length", git(repo, "cat-file", "-s", f"{parts[4]}:{name}"))
        handler.end_headers()

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

    # -- Git LFS -----------------------------------------------------------------------------------------

    def lfs_batch(self, handler: BaseHTTPRequestHandler, path: str, payload: dict) -> None:
        """The LFS batch API: where to upload each object (nothing for objects already stored)."""
        match = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        repo_type = (match.group(1) or "models") if match else "models"
        repo = self.repo_path(repo_type, match.group(2)) if match else None
        if repo is None or not repo.is_dir():
            return self.reply(handler, 404, {"message": "Repository not found"})
        if payload.get("operation") != "upload" or payload.get("hash_algo", "sha256") != "sha256":
            return self.reply(handler, 422, {"message": "only sha256 uploads are supported"})
        multipart = "multipart" in payload.get("transfers", [])
        base = f"{self.endpoint}/lfs/%s/{repo_type}/{match.group(2)}/%s"
        objects = []
        for item in payload["objects"]:
            oid, size = item["oid"], int(item["size"])
            entry = dict(oid=oid, size=size, authenticated=True)
            stored = lfs_object_path(repo, oid)
            if not (stored.is_file() and stored.stat().st_size == size):
                upload = dict(href=base % ("upload", oid))
                if multipart and size > MULTIPART_ABOVE:
                    count = -(-size // MULTIPART_CHUNK)
                    header = {f"{n:05d}": base % ("part", f"{oid}/{n}") for n in range(1, count + 1)}
                    upload = dict(href=base % ("complete", oid), header=dict(header, chunk_size=str(MULTIPART_CHUNK)))
                entry["actions"] = dict(upload=upload, verify=dict(href=base % ("verify", oid)))
            objects.append(entry)
        transfer = "multipart" if multipart else "basic"
        return self.reply(handler, 200, {"transfer": transfer, "objects": objects, "hash_algo": "sha256"})

    def handle_put(self, handler: BaseHTTPRequestHandler) -> None:
        """An LFS object (``/lfs/upload/.../OID``) or one part of it (``/lfs/part/.../OID/N``), streamed to disk."""
        length = int(handler.headers.get("Content-Length") or 0)
        match = re.fullmatch(r"/lfs/(upload|part)/(\w+)/([^/]+/[^/]+)/([0-9a-f]{64})(?:/(\d+))?", handler.path)
        fault = self.take_fault("upload")
        if fault == "drop":
            return self.drop(handler, length)
        if fault == "500" or match is None:
            return self.reply_500(handler, length) if fault else self.reply(handler, 404, {"message": "no such URL"})
        kind, repo_type, repo_id, oid, part = match.groups()
        repo = self.repo_path(repo_type, repo_id)
        staging = repo / ".git" / "lfs" / "incomplete"
        staging.mkdir(parents=True, exist_ok=True)
        target = staging / f"{oid}.{part or 'whole'}.{threading.get_ident()}"
        digest = hashlib.sha256()
        with open(target, "wb") as out:
            remaining = length
            while remaining:
                chunk = handler.rfile.read(min(remaining, 1 << 20))
                if not chunk:  # the client went away: nothing is kept
                    out.close()
                    target.unlink()
                    return
                out.write(chunk)
                digest.update(chunk)
                remaining -= len(chunk)
        if kind == "part":
            with self.lock:
                self.parts.setdefault(oid, {})[int(part)] = target
            return self.reply(handler, 200, {}, {"ETag": f'"{digest.hexdigest()}"'})
        if digest.hexdigest() != oid:
            target.unlink()
            return self.reply(handler, 400, {"message": f"the content's sha256 is {digest.hexdigest()}, not {oid}"})
        self.store(repo, oid, target)
        return self.reply(handler, 200, {})

    @staticmethod
    def store(repo: Path, oid: str, source: Path) -> None:
        final = lfs_object_path(repo, oid)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, final)

    def lfs_post(self, handler: BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        """Multipart completion (the parts, in order, must make the object) and verification."""
        match = re.fullmatch(r"/lfs/(complete|verify)/(\w+)/([^/]+/[^/]+)/([0-9a-f]{64})", path)
        if match is None:
            return self.reply(handler, 404, {"message": "no such URL"})
        kind, repo_type, repo_id, oid = match.groups()
        repo = self.repo_path(repo_type, repo_id)
        payload = json.loads(body or b"{}")
        if kind == "verify":
            stored = lfs_object_path(repo, oid)
            if not stored.is_file() or stored.stat().st_size != int(payload.get("size", -1)):
                return self.reply(handler, 404, {"message": f"object {oid} was not stored whole"})
            return self.reply(handler, 200, {"message": "verified"})
        with self.lock:
            parts = self.parts.pop(oid, {})
        numbers = [p["partNumber"] for p in payload.get("parts", [])]
        if numbers != list(range(1, len(parts) + 1)) or sorted(parts) != numbers:
            return self.reply(handler, 400, {"message": f"parts {numbers} do not match the uploaded {sorted(parts)}"})
        assembled = repo / ".git" / "lfs" / "incomplete" / f"{oid}.assembled"
        digest = hashlib.sha256()
        with open(assembled, "wb") as out:
            for number in numbers:
                with open(parts[number], "rb") as piece:
                    while chunk := piece.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                parts[number].unlink()
        if digest.hexdigest() != oid:
            assembled.unlink()
            return self.reply(handler, 400, {"message": f"the parts' sha256 is {digest.hexdigest()}, not {oid}"})
        self.store(repo, oid, assembled)
        return self.reply(handler, 200, {"message": "completed"})

    # -- commits -------------------------------------------------------------------------------------------

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
                value = line["value"]
                stored = lfs_object_path(repo, value["oid"])
                if value.get("algo") != "sha256" or not stored.is_file() or stored.stat().st_size != value["size"]:
                    return self.reply(handler, 422, {"error": f"LFS object of {value['path']} was not uploaded"})
                files[value["path"]] = LFS_POINTER.format(oid=value["oid"], size=value["size"]).encode()
        deleted = tuple(line["value"]["path"] for line in lines if line["key"] in ("deletedFile", "deletedFolder"))
        with self.lock:
            oid = commit_files(repo, files, header.get("summary") or "upload", deleted)
        prefix = "" if repo_type == "models" else f"{repo_type}/"
        url = f"{self.endpoint}/{prefix}{repo_id}/commit/{oid}"
        return self.reply(handler, 200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})


class FaultyPull(LoopbackServer):
    """A pass-through proxy in front of olah whose GET responses for paths containing ``pattern`` break off
    at the middle of the file ``drops`` times (status and headers sent, the content up to the middle, then the
    connection goes), as a network fault during a download would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.pattern = ""
        self.drops = 0
        self.requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                proxy.forward(self, "HEAD")

            def do_GET(self):
                proxy.forward(self, "GET")

        self.serve(Handler)

    def forward(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        import http.client

        wanted = handler.headers.get("Range") or ""
        self.requests.append(f"{method} {handler.path} {wanted}".strip())
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection", "range")}
        connection.request(method, handler.path, headers=headers)
        response = connection.getresponse()
        body = response.read() if method == "GET" else b""
        connection.close()
        # olah answers a range request with the whole file; the Hub's file servers honour "bytes=START-", and
        # resuming a download depends on it, so this proxy does.
        start = int(wanted.removeprefix("bytes=").split("-")[0]) if method == "GET" and wanted else 0
        status = 206 if start and response.status == 200 else response.status
        handler.send_response(status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "content-range"):
                handler.send_header(key, value)
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        length = response.getheader("Content-Length") if method == "HEAD" else str(len(body) - start)
        if length is not None:
            handler.send_header("Content-Length", length)
        handler.end_headers()
        if method == "HEAD":
            return
        if self.pattern and self.pattern in handler.path and self.drops > 0:
            # The connection breaks at the file's middle: a transfer resumed past it gets no further.
            self.drops -= 1
            handler.wfile.write(body[start : max(start, len(body) // 2)])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        handler.wfile.write(body[start:])


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
    env["HF_HUB_DISABLE_XET"] = "1"  # this Hub offers Git LFS, not Xet
    return env
