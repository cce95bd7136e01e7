// The Node.js cluster-module demo, as a balancer worker: no cluster, no primary. `balancer run`
// starts one copy per slot and hands each its own listening socket on fd 3, and with
// `--overflow on` the shared overflow queue on fd 4.
//
//   balancer run --listen :8080 --workers 4 --overflow on -- node examples/node/server.js
//
// GET /            -> which worker answered
// GET /block?ms=N  -> blocks this worker's event loop for N ms, like the classic
//                     `for (let i = 0; i < 1e7; i++)` handler: every other request on this
//                     worker waits, which is what the balancer steers around.
// GET /block?ms=N&sleep=1 -> the same hold without burning CPU (a synchronous wait, like a
//                     sync file or child-process call), so that more workers than cores can be
//                     held at once.
"use strict";
const http = require("http");

const fds = process.env.LISTEN_FDS;
if ((fds !== "1" && fds !== "2") || process.env.LISTEN_PID !== String(process.pid)) {
  console.error("server.js: expected a listening socket on fd 3 (run me with `balancer run`)");
  process.exit(1);
}
const overflow = fds === "2" && (process.env.LISTEN_FDNAMES || "").split(":")[1] === "overflow";

const slot = process.env.BALANCER_SLOT || "-";
// Never notified: Atomics.wait on it blocks the thread for its timeout.
const held = new Int32Array(new SharedArrayBuffer(4));

function handle(req, res) {
  const url = new URL(req.url, "http://worker");
  let body = `slot=${slot} pid=${process.pid}\n`;
  if (url.pathname === "/block") {
    const ms = Math.min(Number(url.searchParams.get("ms")) || 0, 60000);
    if (url.searchParams.get("sleep") === "1") {
      Atomics.wait(held, 0, 0, ms);
    } else {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        // Busy: the event loop is held, as a CPU-heavy synchronous handler would.
      }
    }
    body = `slot=${slot} pid=${process.pid} blocked=${ms}ms\n`;
  } else if (url.pathname !== "/") {
    res.writeHead(404, { "Content-Length": 10 });
    res.end("not found\n");
    return;
  }
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

// One connection per accept: libuv otherwise takes every connection waiting in a queue at once,
// and those taken from the shared queue would then wait behind each other in this worker
// instead of going to the next worker that frees up. Read by libuv when a server starts.
process.env.UV_TCP_SINGLE_ACCEPT = "1";

const servers = [http.createServer(handle).listen({ fd: 3 })];
// The shared overflow queue: the same handler on fd 4. This event loop accepts from it only
// while it runs, that is while no synchronous handler holds it, which is "when free" for a
// worker whose slow requests are CPU-bound.
// When the balancer stops it closes this queue for every worker (its connections move to the
// workers' own queues): the accept error that follows is expected.
if (overflow) {
  servers.push(http.createServer(handle).on("error", () => {}).listen({ fd: 4 }));
}
console.error(`worker ${process.pid} (slot ${slot}) serving on fd 3${overflow ? " and 4" : ""}`);

// Graceful stop: finish in-flight requests, then exit.
process.on("SIGTERM", () => {
  let open = servers.length;
  for (const s of servers) {
    s.close(() => {
      if (--open === 0) process.exit(0);
    });
  }
});
