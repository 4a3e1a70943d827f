// SseParser: framing rules and chunk boundaries (node --test).
import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser, SseFrameTooLarge } from "../dist/index.js";

const enc = new TextEncoder();
const all = (parser, chunks) => chunks.flatMap((c) => parser.push(c));

test("ready, ids, comments, default event name", () => {
  const p = new SseParser();
  const frames = all(p, [
    'event: ready\ndata: {"idempotencyKey":"k"}\n\n',
    ": hb\n\n",
    "id: 1\nevent: tick\ndata: {\"i\":1}\n\n",
    "data: plain\n\n",
  ]);
  assert.deepEqual(frames, [
    { id: null, event: "ready", data: '{"idempotencyKey":"k"}' },
    { id: "1", event: "tick", data: '{"i":1}' },
    { id: null, event: "message", data: "plain" },
  ]);
  assert.equal(p.takeComment(), true);
  assert.equal(p.takeComment(), false);
});

test("CR, LF and CRLF line ends, CRLF split across chunks, multi-line data, no space after colon", () => {
  const p = new SseParser();
  const frames = all(p, ["id:7\r", "\nevent:x\rdata:a\r\ndata: b\n", "\r", "\n", "id: 8\n\n"]);
  assert.deepEqual(frames, [
    { id: "7", event: "x", data: "a\nb" },
    { id: "8", event: "message", data: "" },
  ]);
});

test("every split point of a frame gives the same frames, bytes split inside a UTF-8 code point", () => {
  const wire = enc.encode('id: 3\nevent: note\ndata: {"text":"h\u00e9llo \u{1F600}"}\n\n: hb\n\nid: 4\nevent: completed\ndata: {"result":1}\n\n');
  const want = new SseParser().push(wire);
  assert.equal(want.length, 2);
  for (let i = 0; i <= wire.length; i++) {
    const p = new SseParser();
    assert.deepEqual(all(p, [wire.slice(0, i), wire.slice(i)]), want, `split at ${i}`);
  }
});

test("a 2 MiB event in 1 KiB chunks is one frame (no 1 MiB limit), parsed in linear time", () => {
  const payload = JSON.stringify({ blob: "x".repeat(2 * 1024 * 1024) });
  const wire = enc.encode(`id: 9\nevent: big\ndata: ${payload}\n\n`);
  const p = new SseParser();
  const started = Date.now();
  const frames = [];
  for (let i = 0; i < wire.length; i += 1024) frames.push(...p.push(wire.subarray(i, i + 1024)));
  assert.equal(frames.length, 1);
  assert.equal(frames[0].data, payload);
  assert.ok(Date.now() - started < 5000, "no quadratic rescans");
});

test("a frame above maxFrameChars throws", () => {
  const p = new SseParser({ maxFrameChars: 100 });
  assert.throws(() => p.push("data: " + "y".repeat(200)), SseFrameTooLarge);
});
