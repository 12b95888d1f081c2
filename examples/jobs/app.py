#!/usr/bin/env python3
"""A small web app for queue-consumer's JOB_URL, standard library only.

The worker POSTs each message body to JOB_URL (e.g. http://localhost:8000/jobs, this app in the
container beside it) with the headers X-Message-Id, X-Receive-Count, X-Group-Id (FIFO queues),
X-Attribute-<name> for each message attribute, and Content-Type from the message's Content-Type
attribute (text/plain; charset=utf-8 without one). It answers:

* 2xx: done, the message is deleted;
* 429 or 503 with Retry-After: N (seconds, or an HTTP date): not now, the message comes back after
  N seconds (this app says so while it is paused, see below);
* anything else, or no answer within the timeout: a failure, retried with back-off.

HTTP/1.1 keeps the connection open, so the worker sends every job over the same one.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Touch this file to make the app answer 503 + Retry-After (e.g. during a migration).
PAUSE_FILE = os.environ.get("PAUSE_FILE", "/tmp/jobs-paused")


class Jobs(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection for many jobs

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/jobs":
            return self.answer(404, "no such endpoint")
        if os.path.exists(PAUSE_FILE):
            return self.answer(503, "paused", {"Retry-After": "30"})
        message_id = self.headers["X-Message-Id"]
        attempt = self.headers["X-Receive-Count"]
        try:
            text = json.loads(body)["text"]
        except (ValueError, KeyError, TypeError) as e:
            # A failure: the message comes back after a back-off, then goes to the dead-letter queue.
            return self.answer(400, f"not a job: {e!r}")
        words = len(text.split())
        print(f"{message_id}: {words} words (attempt {attempt})", flush=True)
        self.answer(200, json.dumps({"words": words}), {"Content-Type": "application/json"})

    def do_GET(self):
        # The container's health check.
        self.answer(200 if self.path == "/healthz" else 404, "ok")

    def answer(self, status, text, headers=None):
        data = text.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass  # one line a job is printed above


def main():
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Jobs)
    print(f"listening on http://127.0.0.1:{server.server_port}/jobs", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
