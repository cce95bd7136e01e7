// A worker told of configuration changes the way the cluster module's guides tell theirs
// ("notify them of a configuration reload"), with no cluster module and no primary:
// `balancer send` plays `cluster.workers[id].send(...)`.
//
//   balancer run --listen :8080 --workers 4 -- node examples/node/config.js
//   balancer send --keep '{"cmd":"updateConfig","data":{"greeting":"hi"}}'
//   curl localhost:8080/            -> slot=2 pid=4242 greeting=hi
//   balancer messages               -> slot 2 pid 4242: {"cmd":"configUpdated","greeting":"hi"}
//
// `--keep` also hands the message to every worker started later (a crash restart, a reload,
// a scale-up), before anything else. `process.send('ready')` tells the balancer this worker
// serves (PM2's wait_ready convention), like READY=1 on NOTIFY_SOCKET.
"use strict";
const http = require("http");

let config = { greeting: "hello" };

// The guides' worker code, unchanged: the balancer names the channel in NODE_CHANNEL_FD.
process.on("message", (msg) => {
  if (msg.cmd === "updateConfig") {
    config = { ...config, ...msg.data };
    process.send({ cmd: "configUpdated", ...config });
  }
});

const server = http.createServer((req, res) => {
  const body = `slot=${process.env.BALANCER_SLOT} pid=${process.pid} greeting=${config.greeting}\n`;
  res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
});
server.listen({ fd: 3 }, () => process.send("ready"));

// Graceful stop: no process.exit needed. The balancer closes its end of the channel as it sends
// SIGTERM, so the open channel does not keep the event loop alive once the server has closed.
process.on("SIGTERM", () => server.close());
