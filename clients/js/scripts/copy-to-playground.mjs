// Copies the built client (dist/index.js, one dependency-free ES module) to the
// dev-playground's static directory, where its page imports it as /appkit-client.js.
// The copy is committed so the page loads without node; .ci/run checks it is current.
import { copyFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const from = fileURLToPath(new URL("../dist/index.js", import.meta.url));
const to = fileURLToPath(new URL("../../../apps/dev-playground/static/appkit-client.js", import.meta.url));
copyFileSync(from, to);
console.log(`copied ${from} -> ${to}`);
