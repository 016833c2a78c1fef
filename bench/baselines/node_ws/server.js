// Baseline: Node.js with the `ws` package, the server a team would otherwise deploy for this.
// Each line on stdin goes to every open client, as in the ws README's broadcast example.
// Usage: node server.js PORT
"use strict";

const readline = require("node:readline");
const { WebSocket, WebSocketServer } = require("ws");

const port = Number(process.argv[2]);
// No compression (none of the bench's servers compress); no pings (the load clients ignore them).
const wss = new WebSocketServer({ host: "127.0.0.1", port, backlog: 1024, perMessageDeflate: false });
wss.on("listening", () => console.log(`listening on ${port}`));

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) {
      client.send(line);
    }
  }
});
lines.on("close", () => process.exit(0));
