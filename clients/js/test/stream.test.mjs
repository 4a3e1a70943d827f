// executeTask / attachTask against a scripted fetch: dispatch, ordering, reconnects (node --test).
import { test } from "node:test";
import assert from "node:assert/strict";
import { executeTask, attachTask, taskRoutes, failureMessage } from "../dist/index.js";

import { scripted, frame, ready } from "../fixtures/fake-fetch.mjs";

const fast = { baseMs: 1, capMs: 4, random: () => 0.5 };

test("POST: key from the header, ready once, progress in order, completed with the result", async () => {
  const { fetch, calls } = scripted([{ key: "K", chunks: [ready("K"), frame(1, "started", {}), frame(2, "tick", { i: 1 }), ": hb\n\n", frame(3, "tick", { i: 2 }), frame(4, "completed", { result: { total: 2 } })] }]);
  const seen = [];
  const out = await executeTask("/api/demo/count", { to: 2 }, {
    onReady: (k) => seen.push(`ready ${k}`),
    onStatus: (s) => seen.push(`status ${s}`),
    onEvent: { tick: (d, f) => seen.push(`tick ${d.i}@${f.seq}`) },
    onCompleted: (r) => seen.push(`completed ${r.total}`),
  }, { fetch, backoff: fast });
  assert.deepEqual(out, { state: "completed", key: "K", lastSeq: 4, result: { total: 2 } });
  assert.deepEqual(seen, ["status connecting", "ready K", "status ready", "status connected", "status started", "tick 1@2", "tick 2@3", "status completed", "completed 2"]);
  assert.equal(calls[0].method, "POST");
  assert.equal(calls[0].headers.Accept, "text/event-stream");
  assert.equal(calls[0].body, '{"to":2}');
});

test("key from the ready frame when the header is absent", async () => {
  const { fetch } = scripted([{ chunks: [ready("R"), frame(1, "completed", { result: 1 })] }]);
  let key = null;
  const out = await executeTask("/x", {}, { onReady: (k) => { key = k; } }, { fetch });
  assert.equal(key, "R");
  assert.equal(out.key, "R");
});

test("handlers are awaited in order: a slow handler holds back the next event", async () => {
  const { fetch } = scripted([{ key: "K", chunks: [frame(1, "tick", { i: 1 }) + frame(2, "tick", { i: 2 }) + frame(3, "completed", { result: null })] }]);
  const log = [];
  await executeTask("/x", {}, {
    onEvent: { tick: async (d) => { log.push(`begin ${d.i}`); await new Promise((r) => setTimeout(r, d.i === 1 ? 30 : 0)); log.push(`end ${d.i}`); } },
    onCompleted: () => log.push("completed"),
  }, { fetch });
  assert.deepEqual(log, ["begin 1", "end 1", "begin 2", "end 2", "completed"]);
});

test("failed: top-level message, else error.message", async () => {
  assert.equal(failureMessage({ message: "top", error: { message: "inner" } }), "top");
  assert.equal(failureMessage({ attempt: 1, error: { kind: "permanent", message: "inner" } }), "inner");
  const { fetch } = scripted([{ key: "K", chunks: [frame(1, "failed", { attempt: 1, error: { kind: "permanent", message: "request refused: no" } })] }]);
  let got = null;
  const out = await executeTask("/x", {}, { onFailed: (m, p) => { got = [m, p.error.kind]; } }, { fetch });
  assert.deepEqual(got, ["request refused: no", "permanent"]);
  assert.equal(out.state, "failed");
});

test("suspended keeps the stream open: resumed events and completion follow on it", async () => {
  const { fetch, calls } = scripted([{ key: "K", chunks: [frame(1, "tick", { i: 1 }), frame(2, "suspended", {}), frame(3, "resumed", {}), frame(4, "tick", { i: 2 }), frame(5, "cancelled", { reason: "user" })] }]);
  const log = [];
  const out = await executeTask("/x", {}, {
    onSuspended: () => log.push("suspended"),
    onStatus: (s) => { if (s === "resumed") log.push("resumed"); },
    onEvent: { tick: (d) => log.push(`tick ${d.i}`) },
    onCancelled: () => log.push("cancelled"),
  }, { fetch });
  assert.deepEqual(log, ["tick 1", "suspended", "resumed", "tick 2", "cancelled"]);
  assert.equal(out.state, "cancelled");
  assert.equal(calls.length, 1);
});

test("network error and 5xx: reconnects to the task's events with Last-Event-ID; ready is not repeated", async () => {
  const { fetch, calls } = scripted([
    { key: "K", chunks: [ready("K"), frame(1, "tick", { i: 1 }), frame(2, "tick", { i: 2 })], fail: true },
    new TypeError("connection refused"),
    { status: 503, type: "application/json", chunks: ['{"error":"down"}'] },
    { key: "K", chunks: [ready("K"), frame(3, "tick", { i: 3 }), frame(4, "completed", { result: 3 })] },
  ]);
  const ticks = [];
  let readies = 0;
  const reconnects = [];
  const out = await executeTask("/api/demo/count", { to: 3 }, {
    onReady: () => readies++,
    onEvent: { tick: (d) => ticks.push(d.i) },
    onStatus: (s, p) => { if (s === "reconnecting") reconnects.push(p.attempt); },
  }, { fetch, tasksUrl: "/api/demo/tasks", backoff: fast });
  assert.equal(out.state, "completed");
  assert.deepEqual(ticks, [1, 2, 3]);
  assert.equal(readies, 1);
  assert.deepEqual(reconnects, [1, 2, 3]);
  assert.deepEqual(calls.map((c) => [c.method, c.url, c.headers["Last-Event-ID"]]), [
    ["POST", "/api/demo/count", undefined],
    ["GET", "/api/demo/tasks/K/events", "2"],
    ["GET", "/api/demo/tasks/K/events", "2"],
    ["GET", "/api/demo/tasks/K/events", "2"],
  ]);
});

test("without tasksUrl a reconnect re-sends the POST with Last-Event-ID", async () => {
  const { fetch, calls } = scripted([
    { key: "K", chunks: [frame(1, "tick", { i: 1 })] }, // ends without a terminal frame
    { key: "K", chunks: [frame(2, "completed", { result: 1 })] },
  ]);
  await executeTask("/api/demo/count", { to: 1 }, {}, { fetch, backoff: fast });
  assert.deepEqual(calls.map((c) => [c.method, c.url, c.body, c.headers["Last-Event-ID"]]), [
    ["POST", "/api/demo/count", '{"to":1}', undefined],
    ["POST", "/api/demo/count", '{"to":1}', "1"],
  ]);
});

test("the attempt counter resets after a frame arrives, and backoff grows exponentially with jitter", async () => {
  // Each connection delivers a frame and dies: attempts never accumulate past 1, so
  // maxAttempts 1 is enough for 5 drops in a row.
  const entries = [];
  for (let i = 1; i <= 5; i++) entries.push({ key: "K", chunks: [frame(i, "tick", { i })], fail: true });
  entries.push({ key: "K", chunks: [frame(6, "completed", { result: 5 })] });
  const { fetch } = scripted(entries);
  const attempts = [];
  const out = await attachTask("/api/demo/tasks/K/events", { onStatus: (s, p) => { if (s === "reconnecting") attempts.push(p.attempt); } },
    { fetch, tasksUrl: "/api/demo/tasks", backoff: { ...fast, maxAttempts: 1 } });
  assert.equal(out.state, "completed");
  assert.deepEqual(attempts, [1, 1, 1, 1, 1]);

  // Without frames the attempts add up, the delays double up to the cap, then it gives up.
  const down = scripted(Array.from({ length: 6 }, () => new TypeError("refused")));
  const delays = [];
  let failed = null;
  const gaveUp = await attachTask("/e", { onStatus: (s, p) => { if (s === "reconnecting") delays.push(p.delayMs); }, onFailed: (m) => { failed = m; } },
    { fetch: down.fetch, backoff: { baseMs: 2, capMs: 8, maxAttempts: 4, random: () => 0.999 } });
  assert.equal(gaveUp.state, "failed");
  assert.match(failed, /connection lost/);
  assert.deepEqual(delays, [2, 4, 8, 8]);
  assert.equal(down.calls.length, 5);
});

test("a 4xx is final: no reconnect, the server's error text reaches onFailed", async () => {
  const { fetch, calls } = scripted([{ status: 404, type: "application/json", chunks: ['{"error":"task not found","code":"not_found"}'] }]);
  let got = null;
  const out = await attachTask("/api/demo/tasks/K/events", { onFailed: (m, p) => { got = [m, p.status, p.code]; } }, { fetch, backoff: fast, lastEventId: 5 });
  assert.deepEqual(got, ["task not found", 404, "not_found"]);
  assert.equal(out.state, "failed");
  assert.equal(calls.length, 1);
  assert.equal(calls[0].headers["Last-Event-ID"], "5");
});

test("an in-band error frame: server_shutting_down reconnects, any other fails", async () => {
  const { fetch, calls } = scripted([
    { key: "K", chunks: [frame(1, "tick", { i: 1 }), 'event: error\ndata: {"message":"server_shutting_down"}\n\n'] },
    { key: "K", chunks: [frame(2, "tick", { i: 2 }), 'event: error\ndata: {"message":"boom"}\n\n'] },
  ]);
  let failed = null;
  const out = await executeTask("/x", {}, { onFailed: (m) => { failed = m; } }, { fetch, tasksUrl: "/t", backoff: fast });
  assert.equal(failed, "boom");
  assert.equal(out.state, "failed");
  assert.equal(calls[1].headers["Last-Event-ID"], "1");
});

test("AbortSignal stops the stream and any pending reconnect cleanly", async () => {
  const c = new AbortController();
  const { fetch } = scripted([{ key: "K", chunks: [frame(1, "tick", { i: 1 })], hang: true }]);
  const p = executeTask("/x", {}, { onEvent: { tick: () => c.abort() } }, { fetch, signal: c.signal });
  assert.deepEqual(await p, { state: "aborted", key: "K", lastSeq: 1 });

  const c2 = new AbortController();
  const down = scripted([new TypeError("refused"), new TypeError("refused")]);
  const p2 = attachTask("/e", { onStatus: (s) => { if (s === "reconnecting") c2.abort(); } }, { fetch: down.fetch, signal: c2.signal, backoff: { baseMs: 60_000 } });
  assert.equal((await p2).state, "aborted");
  assert.equal(down.calls.length, 1);
});

test("a store keeps {key, lastSeq, meta} while running and is cleared at the end", async () => {
  const saved = [];
  let cleared = 0;
  const store = { load: () => null, save: (t) => saved.push(structuredClone(t)), clear: () => cleared++ };
  const { fetch } = scripted([{ key: "K", chunks: [frame(1, "tick", { i: 1 }), frame(2, "completed", { result: 1 })] }]);
  await executeTask("/x", {}, {}, { fetch, store, meta: { to: 1 } });
  assert.deepEqual(saved, [{ key: "K", lastSeq: 0, meta: { to: 1 } }, { key: "K", lastSeq: 1, meta: { to: 1 } }]);
  assert.equal(cleared, 1);
});

test("task route helpers: URLs, methods, errors", async () => {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push([init.method, url]);
    return url.endsWith("/cancel")
      ? new Response('{"error":"task not found","code":"not_found"}', { status: 404 })
      : new Response('{"status":"suspended"}', { status: 200 });
  };
  const r = taskRoutes("/api/demo/tasks/", { fetch });
  assert.equal(r.eventsUrl("a/b"), "/api/demo/tasks/a%2Fb/events");
  assert.equal((await r.status("k")).status, "suspended");
  await r.stop("k");
  await r.resume("k");
  await assert.rejects(r.cancel("k"), (e) => e.status === 404 && e.code === "not_found" && e.message === "task not found");
  assert.deepEqual(calls, [["GET", "/api/demo/tasks/k"], ["POST", "/api/demo/tasks/k/stop"], ["POST", "/api/demo/tasks/k/resume"], ["POST", "/api/demo/tasks/k/cancel"]]);
});

test("a handler that throws rejects with its own error and never triggers a reconnect", async () => {
  const boom = new Error("handler bug");
  for (const handlers of [{ onReady: () => { throw boom; } }, { onEvent: { tick: async () => { throw boom; } } }]) {
    const { fetch, calls } = scripted([{ key: "K", chunks: [frame(1, "tick", { i: 1 })] }, { key: "K", chunks: [] }]);
    await assert.rejects(executeTask("/x", {}, handlers, { fetch, backoff: fast }), (e) => e === boom);
    assert.equal(calls.length, 1);
  }
});

test("a 200 that is not an event stream fails at once (a login page, a wrong route)", async () => {
  const { fetch, calls } = scripted([{ type: "text/html", chunks: ["<html></html>"] }]);
  let failed = null;
  const out = await attachTask("/e", { onFailed: (m) => { failed = m; } }, { fetch, backoff: fast });
  assert.equal(out.state, "failed");
  assert.match(failed, /expected text\/event-stream, got text\/html/);
  assert.equal(calls.length, 1);
});
