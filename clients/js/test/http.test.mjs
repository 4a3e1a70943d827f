// executeTask against a real node:http server with node's own fetch: the connection is cut
// mid-stream, the client reconnects to the task's events with Last-Event-ID, and a
// 1.2 MiB event (above AppKit's 1 MiB client buffer) arrives whole.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { executeTask } from "../dist/index.js";

test("real fetch: cut connection, reconnect with Last-Event-ID, a 1.2 MiB event", async (t) => {
  const requests = [];
  const big = "x".repeat(1200 * 1024);
  const server = createServer((req, res) => {
    requests.push([req.method, req.url, req.headers["last-event-id"] ?? null, req.headers.accept]);
    res.writeHead(200, { "content-type": "text/event-stream", "x-appkit-task-idempotency-key": "K" });
    res.write('event: ready\ndata: {"idempotencyKey":"K"}\n\n');
    if (req.method === "POST") {
      res.write('id: 1\nevent: tick\ndata: {"i":1}\n\n: hb\n\n');
      res.write(`id: 2\nevent: big\ndata: {"blob":"${big}"}\n\n`);
      setTimeout(() => res.socket.destroy(), 20); // the server dies mid-task
    } else {
      res.write('id: 3\nevent: tick\ndata: {"i":2}\n\n');
      res.end('id: 4\nevent: completed\ndata: {"result":{"total":2}}\n\n');
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const base = `http://127.0.0.1:${server.address().port}`;
  const seen = [];
  const out = await executeTask(`${base}/api/demo/count`, { to: 2 }, {
    onEvent: { tick: (d) => seen.push(`tick ${d.i}`), big: (d) => seen.push(`big ${d.blob.length}`) },
  }, { tasksUrl: `${base}/api/demo/tasks`, backoff: { baseMs: 5, capMs: 20 } });
  assert.equal(out.state, "completed");
  assert.deepEqual(seen, ["tick 1", `big ${big.length}`, "tick 2"]);
  assert.deepEqual(requests, [
    ["POST", "/api/demo/count", null, "text/event-stream"],
    ["GET", "/api/demo/tasks/K/events", "2", "text/event-stream"],
  ]);
});
