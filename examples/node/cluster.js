// The same demo server under Node's own cluster module, for comparison with `balancer run`:
// the primary process accepts every connection and hands it to a worker in turn
// (cluster.SCHED_RR, Node's default on Linux).
//
//   PORT=8080 WORKERS=4 node examples/node/cluster.js
"use strict";
const cluster = require("cluster");
const http = require("http");

const port = Number(process.env.PORT || 8080);
const workers = Number(process.env.WORKERS || require("os").cpus().length);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork({ SLOT: String(i) });
  cluster.on("exit", (w, code, signal) => {
    console.error(`worker ${w.process.pid} died (${signal || code})`);
  });
  process.on("SIGTERM", () => {
    for (const id in cluster.workers) cluster.workers[id].kill("SIGTERM");
    process.exit(0);
  });
} else {
  const slot = process.env.SLOT;
  // Never notified: Atomics.wait on it blocks the thread for its timeout (`&sleep=1`).
  const held = new Int32Array(new SharedArrayBuffer(4));
  http
    .createServer((req, res) => {
      const url = new URL(req.url, "http://worker");
      let body = `slot=${slot} pid=${process.pid}\n`;
      if (url.pathname === "/block") {
        const ms = Math.min(Number(url.searchParams.get("ms")) || 0, 60000);
        if (url.searchParams.get("sleep") === "1") {
          Atomics.wait(held, 0, 0, ms);
        } else {
          const end = Date.now() + ms;
          while (Date.now() < end) {
            // Busy: the event loop is held.
          }
        }
      }
      res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
      res.end(body);
    })
    .listen(port, "127.0.0.1");
}
