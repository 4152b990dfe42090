// Drives the browser peer: serves peer.html on 127.0.0.1, opens it in
// headless Chromium (playwright-core), prints progress lines for the test:
//   READY                  the page registered its ID with the signaling server
//   CALLS {json}           what its calls to the Rust node returned
//   SERVED n               how many RPCs it answered, printed at the end
// It leaves when a line arrives on standard input.
//
// Usage: node run.mjs NODE_MODULES SIGNAL_URL BROWSER_ID RUST_ID
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

const [nodeModules, signalUrl, browserId, rustId] = process.argv.slice(2);
const require = createRequire(path.join(nodeModules, "noop.js"));
const { chromium } = require("playwright-core");
const here = path.dirname(new URL(import.meta.url).pathname);
const files = {
  "/peer.html": [path.join(here, "peer.html"), "text/html"],
  "/peer.js": [path.join(here, "peer.js"), "text/javascript"],
  "/autobahn.min.js": [require.resolve("autobahn-browser/autobahn.min.js"), "text/javascript"],
};

const server = http.createServer((req, res) => {
  const file = files[new URL(req.url, "http://x").pathname];
  if (!file) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": file[1] });
  fs.createReadStream(file[0]).pipe(res);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--allow-loopback-in-peer-connection", "--use-fake-ui-for-media-stream",
  ],
});
const context = await browser.newContext();
// With these permissions Chromium shows real host candidates, not mDNS names.
await context.grantPermissions(["microphone", "camera"], { origin });
const page = await context.newPage();
page.on("console", (message) => console.error("PAGE " + message.text()));
page.on("pageerror", (error) => console.error("PAGE ERROR " + error));
const query = new URLSearchParams({ signal: signalUrl, id: browserId, target: rustId });
await page.goto(`${origin}/peer.html?${query}`);

await page.waitForFunction(() => window.babble.ready || window.babble.errors.length > 0, null, { timeout: 30000 });
const errors = await page.evaluate(() => window.babble.errors);
if (errors.length) { console.log("FAILED " + JSON.stringify(errors)); process.exit(1); }
console.log("READY");
await page.waitForFunction(() => window.babble.calls || window.babble.errors.length > 0, null, { timeout: 60000 });
console.log("CALLS " + JSON.stringify(await page.evaluate(() => window.babble.calls || window.babble.errors)));

const lines = readline.createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once("line", resolve));
console.log("SERVED " + (await page.evaluate(() => window.babble.served)));
await browser.close();
server.close();
process.exit(0);
