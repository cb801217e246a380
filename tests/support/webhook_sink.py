"""A webhook sink for the bridge's end-to-end tests: a real HTTP server (the standard library's)
that checks each delivery with code we did not write — the Standard Webhooks signature with
the `standardwebhooks` package, the body with the Python CloudEvents SDK — and answers as its
plan says. One JSON line per request goes to OUT:
{"path", "at", "status", "webhook_id", "event_id", "type", "signature" | "bearer", "cloudevent"}.

    python3 webhook_sink.py CONFIG OUT

CONFIG is a JSON file: {"port_file": PATH, "paths": {"/a": {"secrets": ["whsec_…", …]} |
{"bearer": TOKEN}, "plan": [[STATUS, RETRY_AFTER or null, COUNT], …]}}. A path answers each
plan entry's status COUNT times, in order, then 204 for ever. "signature" is one of
"ok" (every listed secret verifies), "refused: …"; "bearer" is "ok" or "refused".
Prints "sink.ready" once listening; stops on SIGTERM.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.formats.json import JSONFormat
from standardwebhooks import Webhook


def main() -> None:
    config_path, out = sys.argv[1:]
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    lock = threading.Lock()
    sink = open(out, "a", encoding="utf-8")
    plans = {path: [list(step) for step in spec.get("plan", [])] for path, spec in config["paths"].items()}
    parse = JSONFormat()

    def answer_for(path):
        with lock:
            plan = plans.get(path)
            if plan is None:
                return 404, None
            while plan and plan[0][2] <= 0:
                plan.pop(0)
            if not plan:
                return 204, None
            plan[0][2] -= 1
            return plan[0][0], plan[0][1]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the records are the log
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            spec = config["paths"].get(self.path, {})
            record = {"path": self.path, "at": time.time(), "webhook_id": self.headers.get("webhook-id")}
            headers = {k: v for k, v in self.headers.items()}
            if "secrets" in spec:
                try:
                    for secret in spec["secrets"]:
                        Webhook(secret).verify(body, headers)
                    record["signature"] = "ok"
                except Exception as error:
                    record["signature"] = f"refused: {error}"
            if "bearer" in spec:
                ok = self.headers.get("authorization") == f"Bearer {spec['bearer']}"
                record["bearer"] = "ok" if ok else "refused"
            try:
                event = parse.read(None, body)
                record.update(cloudevent="ok", event_id=event.get_id(), type=event.get_type())
            except Exception as error:
                record["cloudevent"] = f"refused: {type(error).__name__}: {error}"
            record["content_type"] = self.headers.get("content-type")
            status, retry_after = answer_for(self.path)
            record["status"] = status
            with lock:
                sink.write(json.dumps(record) + "\n")
                sink.flush()
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(config["port_file"] + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(config["port_file"] + ".tmp", config["port_file"])
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("sink.ready", file=sys.stderr, flush=True)
    server.serve_forever()
    sink.close()


main()
