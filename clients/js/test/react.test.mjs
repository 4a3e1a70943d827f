// useTask (the ./react entry) rendered with react-test-renderer against a scripted fetch.
import { test } from "node:test";
import assert from "node:assert/strict";
import React from "react";
import TestRenderer from "react-test-renderer";
import { useTask } from "../dist/react.js";
import { scripted, frame, ready } from "../fixtures/fake-fetch.mjs";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;
const { act } = TestRenderer;
const fast = { baseMs: 1, capMs: 4, random: () => 0.5 };

function memoryStore(initial = null) {
  let value = initial;
  return { load: () => value, save: (t) => { value = { ...t }; }, clear: () => { value = null; }, get: () => value };
}

function mount(options) {
  const box = { current: null };
  function Probe() {
    box.current = useTask(options);
    return null;
  }
  let renderer;
  act(() => { renderer = TestRenderer.create(React.createElement(Probe)); });
  return { box, unmount: () => act(() => renderer.unmount()) };
}

test("start: key, progress events, result, status; the store is cleared at the end", async () => {
  const store = memoryStore();
  const { fetch, calls } = scripted([{ key: "K", chunks: [ready("K"), frame(1, "started", {}), frame(2, "tick", { i: 1 }), frame(3, "tick", { i: 2 }), frame(4, "completed", { result: { total: 2 } })] }]);
  const { box, unmount } = mount({ url: "/api/demo/count", tasksUrl: "/api/demo/tasks", store, streamOptions: { fetch, backoff: fast } });
  assert.equal(box.current.status, "idle");
  await act(async () => { await box.current.start({ to: 2 }); });
  const t = box.current;
  assert.equal(t.status, "completed");
  assert.equal(t.key, "K");
  assert.equal(t.lastSeq, 4);
  assert.deepEqual(t.events.map((e) => [e.event, e.data.i, e.seq]), [["tick", 1, 2], ["tick", 2, 3]]);
  assert.deepEqual(t.result, { total: 2 });
  assert.equal(t.error, null);
  assert.equal(store.get(), null);
  assert.equal(calls[0].method, "POST");
  unmount();
});

test("a failed task gives its message as error", async () => {
  const { fetch } = scripted([{ key: "K", chunks: [frame(1, "failed", { message: "request refused: no", attempt: 1, error: { kind: "permanent", message: "x" } })] }]);
  const { box, unmount } = mount({ url: "/r", tasksUrl: "/t", streamOptions: { fetch } });
  await act(async () => { await box.current.start({}); });
  assert.equal(box.current.status, "failed");
  assert.equal(box.current.error, "request refused: no");
  unmount();
});

test("on mount it re-attaches to the stored task after its last seq; actions call the task routes", async () => {
  const store = memoryStore({ key: "K", lastSeq: 2 });
  let release;
  const gate = new Promise((r) => { release = r; });
  const { fetch: streamFetch, calls } = scripted([{ key: "K", chunks: [frame(3, "tick", { i: 2 }), frame(4, "suspended", {})], hang: true }]);
  const routeCalls = [];
  const fetch = (url, init) => {
    if (url.endsWith("/events")) { release(); return streamFetch(url, init); }
    routeCalls.push([init.method, url]);
    return Promise.resolve(new Response('{"status":"pending"}', { status: 200 }));
  };
  const { box, unmount } = mount({ url: "/c", tasksUrl: "/t", store, streamOptions: { fetch, backoff: fast } });
  await gate;
  await act(async () => { while (box.current.status !== "suspended") await new Promise((r) => setTimeout(r, 5)); });
  assert.deepEqual([calls[0].method, calls[0].url, calls[0].headers["Last-Event-ID"]], ["GET", "/t/K/events", "2"]);
  assert.equal(box.current.key, "K");
  assert.deepEqual(box.current.events.map((e) => e.data.i), [2]);
  let answer;
  await act(async () => { answer = await box.current.resume(); });
  assert.equal(answer.status, "pending");
  assert.deepEqual(routeCalls, [["POST", "/t/K/resume"]]);
  act(() => box.current.reset());
  assert.equal(box.current.status, "idle");
  assert.equal(store.get(), null);
  unmount();
});
