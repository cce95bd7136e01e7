//! A Python HTTP worker for tests that need a server with a twist.

/// A Python HTTP worker on fd 3 (standard library only), for tests that need a server with a
/// twist: `on_get` is a Python statement run first on every GET, `status` a Python expression
/// for its status code (`self.path`, `SLOT` and `os` in scope). Answers `slot=N pid=P` like the
/// built-in worker, closes each connection after its reply, and on SIGTERM stops after the
/// request in hand.
pub fn python_worker(on_get: &str, status: &str) -> String {
    format!(
        r#"
import http.server, os, signal, socket, threading
SLOT = os.environ["BALANCER_SLOT"]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        {on_get}
        body = f"slot={{SLOT}} pid={{os.getpid()}}\n".encode()
        self.send_response({status})
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    def server_bind(self): pass
    def server_activate(self): pass
s = S(("", 0), H, bind_and_activate=False)
s.socket = socket.socket(fileno=3)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=s.shutdown).start())
s.serve_forever()
"#
    )
}
