"""A Python worker (standard library only) that reads its message channel.

    balancer run --listen :8080 --workers 4 -- python3 examples/python/config.py
    balancer send --keep '{"cmd":"updateConfig","data":{"greeting":"hi"}}'
    curl localhost:8080/        -> slot=2 pid=4242 greeting=hi

The channel is a Unix stream socket on the fd named by BALANCER_CHANNEL_FD: one JSON value per
line, both ways. This worker applies each `updateConfig`, answers it on the channel (`balancer
messages` shows the answers), and says "ready" once it serves.
"""

import http.server
import json
import os
import signal
import socket
import threading

SLOT = os.environ.get("BALANCER_SLOT", "-")
config = {"greeting": "hello"}
channel = socket.socket(fileno=int(os.environ["BALANCER_CHANNEL_FD"]))
send_lock = threading.Lock()


def send(value):
    with send_lock:
        channel.sendall(json.dumps(value).encode() + b"\n")


def read_channel():
    for line in channel.makefile("rb"):
        msg = json.loads(line)
        if isinstance(msg, dict) and msg.get("cmd") == "updateConfig":
            config.update(msg.get("data", {}))
            send({"cmd": "configUpdated", **config})


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"slot={SLOT} pid={os.getpid()} greeting={config['greeting']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        pass  # the socket on fd 3 is already bound and listening

    def server_activate(self):
        pass


server = Server(("", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
threading.Thread(target=read_channel, daemon=True).start()
send("ready")
server.serve_forever()
