// Drives the dev-playground page (which uses clients/js, served as /appkit-client.js) in
// headless Chromium against the real binary:
//   1. start a count, see progress, screenshot mid-run, reload mid-run: the page re-attaches
//      with Last-Event-ID and every tick is shown exactly once;
//   2. the server is SIGKILLed and restarted mid-run while the page stays open: the client
//      reconnects by itself and the task completes with every tick exactly once;
//   3. stop suspends (the stream stays open), resume continues on it, cancel ends the task;
//   4. a failed task shows its message.
// Usage: node page.mjs <base-url> <screenshot>. Prints one `ok - …` line per check and exits
// non-zero on the first failure. For step 2 it prints `@kill-server` and waits for a
// `restarted` line on stdin (tests/web_page.rs kills and restarts the server on the same port).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [base, screenshot] = process.argv.slice(2);
const deadline = 30_000;
const stdin = createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();

function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

// Ticks in the page's log (which it keeps across reloads in sessionStorage).
const ticksIn = (text) => [...text.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));
function exactlyOnce(seen, n) {
  const want = Array.from({ length: n }, (_, i) => i + 1);
  return seen.length === n && [...seen].sort((a, b) => a - b).every((t, i) => t === want[i]);
}
const status = (page) => page.textContent("#status");
const waitStatus = (page, s, timeout = deadline) =>
  page.waitForFunction((want) => document.getElementById("status").textContent === want, s, { timeout });
const seqAtLeast = (page, n) => page.waitForFunction((n) => Number(document.getElementById("seq").textContent) >= n, n);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let page;
const ticks = async () => ticksIn(await page.textContent("#log"));
try {
  page = await browser.newPage();
  page.setDefaultTimeout(deadline);
  page.on("pageerror", (e) => console.log("page error: " + e.message));
  await page.goto(base + "/");
  check((await page.title()) === "appkit dev-playground", "page served at /");
  const count = await page.evaluate(() => window.__CONFIG__ && window.__CONFIG__.endpoints.demo.count);
  check(count === "/api/demo/count", "window.__CONFIG__ gives the demo's endpoints");
  check(await page.evaluate(() => [...document.scripts].some((s) => s.type === "module")), "page loads the client module");

  // 1. POST + progress, screenshot, reload mid-run.
  await page.fill("#to", "8");
  await page.fill("#delay", "250");
  await page.click("#start");
  await seqAtLeast(page, 4);
  check((await ticks()).length >= 1, `progress shown: ticks ${await ticks()}`);
  check((await page.$eval("#bar", (b) => b.value)) > 0, "progress bar moved");
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log("screenshot (mid-run): " + screenshot);
  }
  const seqBefore = Number(await page.textContent("#seq"));
  await page.reload();
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("re-attaching after seq"));
  check(true, "re-attach after reload");
  await waitStatus(page, "completed");
  check(Number(await page.textContent("#seq")) > seqBefore, "seq advanced after re-attach");
  const t1 = await ticks();
  check(exactlyOnce(t1, 8), `every tick once across the reload, no tick repeated or lost (${t1})`);
  check(Math.max(...t1) === 8, "last tick is 8");
  check((await page.$eval("#bar", (b) => b.value)) === 1, "progress bar full at completion");

  // 2. Server SIGKILLed and restarted mid-run; the page stays open.
  await page.fill("#to", "16");
  await page.fill("#delay", "200");
  await page.click("#start");
  await seqAtLeast(page, 5);
  console.log("@kill-server");
  const reply = await stdinLines.next();
  check(!reply.done && reply.value.trim() === "restarted", "server killed and restarted by the test");
  await waitStatus(page, "completed", 60_000);
  const log2 = await page.textContent("#log");
  check(log2.includes("reconnecting in"), "client noticed the lost connection and backed off");
  check(log2.includes("reconnected"), "client reconnected by itself");
  check(!log2.includes("re-attaching after seq"), "no page reload involved");
  const t2 = await ticks();
  check(exactlyOnce(t2, 16), `every tick once across the server restart (${t2})`);

  // 3. Stop, resume and cancel a long count, all on one open stream.
  await page.fill("#to", "200");
  await page.fill("#delay", "100");
  await page.click("#start");
  await seqAtLeast(page, 3);
  await page.click("#stop");
  await waitStatus(page, "suspended");
  check(true, "stop suspends the task");
  const seqSuspended = Number(await page.textContent("#seq"));
  await page.click("#resume");
  await page.waitForFunction((s) => Number(document.getElementById("seq").textContent) > s + 2, seqSuspended);
  check(["running", "resumed"].includes(await status(page)), "resume continues the stream");
  check(!(await page.textContent("#log")).includes("reconnect"), "the stream stayed open while suspended");
  await page.click("#cancel");
  await waitStatus(page, "cancelled");
  check(true, "cancel ends the task");
  const t3 = await ticks();
  check(new Set(t3).size === t3.length, "no tick repeated across stop / resume");

  // 4. A failed task shows its message.
  await page.fill("#reason", "no budget left");
  await page.click("#refuse");
  await waitStatus(page, "failed");
  const message = await page.textContent("#message");
  check(message === "request refused: no budget left", `failed task shows its message (${JSON.stringify(message)})`);
} catch (e) {
  if (page) console.log("page log at failure:\n" + (await page.textContent("#log").catch(() => "?")));
  throw e;
} finally {
  stdin.close();
  await browser.close();
}
