"""A single-threaded Python HTTP server (standard library only) as a balancer worker.

    balancer run --listen :8080 --workers 4 -- python3 examples/python/server.py

It serves on the listening socket the supervisor passes as fd 3 (LISTEN_FDS=1), one request at
a time, like a sync WSGI worker. GET / answers which worker it is; GET /block?ms=N holds it.
"""

import http.server
import os
import signal
import socket
import sys
import time
import urllib.parse

if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("server.py: expected a listening socket on fd 3 (run me with `balancer run`)")

SLOT = os.environ.get("BALANCER_SLOT", "-")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, with Content-Length on every reply

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        body = f"slot={SLOT} pid={os.getpid()}\n"
        if url.path == "/block":
            ms = min(int(urllib.parse.parse_qs(url.query).get("ms", ["0"])[0]), 60000)
            time.sleep(ms / 1000)
            body = f"slot={SLOT} pid={os.getpid()} blocked={ms}ms\n"
        elif url.path != "/":
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Server(http.server.HTTPServer):
    def server_bind(self):
        pass  # the socket is already bound and listening

    def server_activate(self):
        pass


server = Server(("", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server.serve_forever()
