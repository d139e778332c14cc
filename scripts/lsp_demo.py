#!/usr/bin/env python3
"""Drives `tessera lsp` as an editor does: initialize, open a document, ask for an inline
completion at the cursor over JSON-RPC on a pipe, print what comes back, shut down.

    python3 scripts/lsp_demo.py [path/to/tessera]
"""
import json
import subprocess
import sys
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/tessera"
DOC = "def is_even(n):\n    return \n"
URI = "file:///tmp/tessera-demo/even.py"


def main() -> int:
    proc = subprocess.Popen([BIN, "lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    next_id = [0]

    def send(msg):
        body = json.dumps(msg).encode()
        proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        proc.stdin.flush()

    def read():
        length = None
        while True:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("tessera lsp closed its output")
            line = line.strip()
            if not line:
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return json.loads(proc.stdout.read(length))

    def request(method, params, on_message=None):
        next_id[0] += 1
        rid = next_id[0]
        send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            msg = read()
            if "method" in msg and "id" in msg:  # a server request: acknowledge
                send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            elif "method" in msg:
                if on_message:
                    on_message(msg)
            elif msg.get("id") == rid:
                return msg

    def notify(method, params):
        send({"jsonrpc": "2.0", "method": method, "params": params})

    request("initialize", {"processId": None, "rootUri": None,
                           "capabilities": {"window": {"workDoneProgress": True}}})
    notify("initialized", {})
    notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1, "text": DOC}})
    t0 = time.time()
    resp = request("textDocument/inlineCompletion",
                   {"textDocument": {"uri": URI}, "position": {"line": 1, "character": 11},
                    "context": {"triggerKind": 1}},
                   on_message=lambda m: m["method"] == "$/progress" and print("progress:", m["params"]["value"].get("message", m["params"]["value"]["kind"])))
    ms = (time.time() - t0) * 1e3
    items = resp.get("result", {}).get("items", [])
    print(f"document:\n{DOC}cursor at 2:12; {len(items)} completion(s) in {ms:.0f} ms (model load included):")
    for item in items:
        print("  ", repr(item["insertText"]))
    request("shutdown", None)
    notify("exit", None)
    proc.wait(timeout=10)
    return 0 if items else 1


if __name__ == "__main__":
    sys.exit(main())
