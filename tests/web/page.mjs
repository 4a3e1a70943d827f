// Drives the dev-playground page in headless Chromium: start a count, watch progress,
// reload mid-run (the page must re-attach with Last-Event-ID and lose or repeat no tick),
// then stop / resume / cancel another count. Usage: node page.mjs <base-url> <screenshot>.
// Prints one line per check; exits non-zero on the first failure.
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
const deadline = 30_000;

function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

const ticksIn = (text) => [...text.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1]));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(deadline);
  await page.goto(base + "/");
  check((await page.title()) === "appkit dev-playground", "page served at /");
  const count = await page.evaluate(() => window.__CONFIG__ && window.__CONFIG__.endpoints.demo.count);
  check(count === "/api/demo/count", "window.__CONFIG__ gives the demo's endpoints");

  // 1. Start a count and see progress.
  await page.fill("#to", "8");
  await page.fill("#delay", "250");
  await page.click("#start");
  await page.waitForFunction(() => Number(document.getElementById("seq").textContent) >= 4);
  const before = ticksIn(await page.textContent("#log"));
  check(before.length >= 1, `ticks shown before reload: ${before.join(",")}`);
  check((await page.$eval("#bar", (b) => b.value)) > 0, "progress bar moved");

  // 2. Reload mid-run: re-attach after the stored seq, continue to completion.
  const seqBefore = Number(await page.textContent("#seq"));
  await page.reload();
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("re-attaching after seq"));
  await page.waitForFunction(() => document.getElementById("status").textContent === "completed");
  const after = ticksIn(await page.textContent("#log"));
  const lastBefore = Math.max(...before);
  check(after.every((t) => t > lastBefore) || after.length === 0, `no tick repeated after reload (before ${before}, after ${after})`);
  const seen = new Set([...before, ...after]);
  // Ticks arriving between the last read of the log and the reload are in neither list only
  // if they were delivered before the stored seq; the stored seq covers them.
  check(Number(await page.textContent("#seq")) > seqBefore, "seq advanced after re-attach");
  check(Math.max(...seen) === 8, `last tick is 8 (saw ${[...seen].sort((a, b) => a - b)})`);
  check((await page.$eval("#bar", (b) => b.value)) === 1, "progress bar full at completion");

  // 3. Stop, resume and cancel a long count.
  await page.fill("#to", "200");
  await page.fill("#delay", "100");
  await page.click("#start");
  await page.waitForFunction(() => Number(document.getElementById("seq").textContent) >= 3);
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("status").textContent === "suspended");
  check(true, "stop suspends the task");
  await page.click("#resume");
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("resume: 200"));
  await page.waitForFunction(() => !document.getElementById("cancel").disabled);
  const seqResumed = Number(await page.textContent("#seq"));
  await page.waitForFunction((s) => Number(document.getElementById("seq").textContent) > s + 1, seqResumed);
  check(true, "resume continues the stream");
  await page.click("#cancel");
  await page.waitForFunction(() => document.getElementById("status").textContent === "cancelled");
  check(true, "cancel ends the task");
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
