"""A small local stand-in for the Hugging Face Hub on 127.0.0.1: just the endpoints huggingface_hub's
create_repo, create_branch and create_commit call. It stores what it receives, so tests can assert exactly
which files arrived with which bytes and which token."""

import base64
import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

TOKEN = "hf_TestTokenThatMustNeverBePrinted"
MAX_REQUESTS = 50


class FakeHub(ThreadingHTTPServer):
    """The Hub endpoints create_repo, create_branch and create_commit call; every file is answered "regular"
    upload mode, so files arrive base64-encoded inside the commit's NDJSON payload (no LFS)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[dict] = []  # method, path, authorization and JSON body of each request
        self.commits: list[dict] = []  # repo, revision, summary and {path: bytes} of each commit
        self.fail_with: tuple[int, dict, dict] | None = None  # status, headers, body answered to every request


class HubHandler(BaseHTTPRequestHandler):
    timeout = 10  # seconds a connection may stall before the server drops it

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.answer()

    def answer(self):
        hub, path = self.server, unquote(urlsplit(self.path).path)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        is_json = self.headers.get("Content-Type") == "application/json"
        hub.requests.append({"method": self.command, "path": path, "authorization": self.headers.get("Authorization"),
                             "json": json.loads(body) if is_json else None})
        if len(hub.requests) > MAX_REQUESTS:
            return self.reply(400, {"error": "too many requests in one test"})
        if hub.fail_with:
            return self.reply(*hub.fail_with)
        parts = path.strip("/").split("/")  # api, models, namespace, name, action, revision
        if self.command == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            return self.reply(200, {}, {"url": f"{hub.endpoint}/{payload['organization']}/{payload['name']}"})
        if self.command == "POST" and path == "/api/validate-yaml":
            return self.reply(200, {}, {})
        if self.command == "POST" and parts[:2] == ["api", "models"] and len(parts) == 6:
            repo, action, revision = "/".join(parts[2:4]), parts[4], parts[5]
            if action == "branch":
                return self.reply(200, {}, {})
            if action == "preupload":
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                         for f in json.loads(body)["files"]]
                return self.reply(200, {}, {"files": files})
            if action == "commit":
                return self.commit(repo, revision, [json.loads(line) for line in body.splitlines() if line])
        self.reply(404, {}, {"error": f"no such endpoint: {self.command} {path}"})

    def commit(self, repo: str, revision: str, items: list[dict]):
        header, operations = items[0], items[1:]
        if header["key"] != "header" or any(item["key"] != "file" for item in operations):
            return self.reply(422, {}, {"error": f"unexpected commit operations: {[i['key'] for i in items]}"})
        files = {item["value"]["path"]: base64.b64decode(item["value"]["content"]) for item in operations}
        self.server.commits.append({"repo": repo, "revision": revision, "summary": header["value"]["summary"],
                                    "files": files})
        oid = f"{len(self.server.commits):040x}"
        self.reply(200, {}, {"commitUrl": f"{self.server.endpoint}/{repo}/commit/{oid}", "commitOid": oid})

    def reply(self, status: int, headers: dict, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass



@contextmanager
def serve():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def hub_env(endpoint: str, home: Path, token: str | None = TOKEN) -> dict:
    """The environment of a process that pushes: this endpoint and token only (no saved login, no proxy)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and "proxy" not in k.lower()}
    env.update(HF_HOME=str(home), HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1")
    if token:
        env["HF_TOKEN"] = token
    return env
