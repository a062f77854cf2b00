// The TypeScript client in a real headless Chromium against a real `engram serve`
// (run by tests/browser.rs, which builds the client first):
//   1. 1,000 observations streamed, every ack received;
//   2. the server SIGKILLed and restarted mid-stream: the client reconnects and resends,
//      and nothing acknowledged is lost or stored twice;
//   3. the connection dropped mid-stream: the client resumes its session;
//   4. pause: acks are held while paused (the observations are durable meanwhile) and
//      arrive on resume;
//   5. a recall returns a streamed observation first;
//   6. observations sent as JSON messages instead of binary frames are acknowledged too.
// The server's own count (over QUIC, `engram spaces`) must equal what was acknowledged.
//
// ENGRAM_BIN: the server binary. CHROMIUM: the browser (/usr/bin/chromium by default).

import { spawn, execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";
import assert from "node:assert/strict";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const examples = path.join(root, "examples/streaming");
const require = createRequire(path.join(examples, "package.json"));
const { chromium } = require("playwright-core");

const bin = process.env.ENGRAM_BIN;
assert.ok(bin, "ENGRAM_BIN names the server binary");
const dataDir = mkdtempSync(path.join(tmpdir(), "engram-browser-"));
const HEARTBEAT_MS = 200;

/** Starts the server (on the given addresses, or free ports) and waits for it to be up. */
function startServer(quicAddr = "127.0.0.1:0", httpAddr = "127.0.0.1:0") {
  const child = spawn(
    bin,
    ["serve", "--data-dir", dataDir, "--quic-addr", quicAddr, "--http-addr", httpAddr,
      "--ws-heartbeat-ms", String(HEARTBEAT_MS)],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info" } },
  );
  const lines = readline.createInterface({ input: child.stderr });
  return new Promise((resolve, reject) => {
    const seen = [];
    lines.on("line", (line) => {
      seen.push(line);
      if (!line.includes("engram is up")) return;
      const quic = /quic_addr=(\S+)/.exec(line)[1];
      const http = /http_addr=(\S+)/.exec(line)[1];
      resolve({ child, quic, http });
    });
    child.on("exit", (code) => reject(new Error(`the server exited (${code}): ${seen.join("\n")}`)));
  });
}

function killServer(server) {
  return new Promise((resolve) => {
    server.child.removeAllListeners("exit");
    server.child.on("exit", () => resolve());
    server.child.kill("SIGKILL");
  });
}

/** What the server stores in `space`, asked over its native protocol. */
function storedCount(server, space) {
  const out = execFileSync(bin, ["spaces", "--json", "--addr", server.quic,
    "--cert", path.join(dataDir, "tls/cert.der")]);
  const listing = JSON.parse(out);
  const entry = listing.spaces.find((s) => s.space === space);
  return entry ? entry.count : 0;
}

/** Serves the page and the compiled client to the browser. */
function startPageServer() {
  const client = readFileSync(path.join(examples, "dist/typescript_client.js"));
  const page = `<!doctype html><meta charset="utf-8"><title>engram browser test</title>
<script type="module">import * as engram from "./typescript_client.js"; window.engram = engram; window.loaded = true;</script>`;
  const server = createServer((req, res) => {
    if (req.url === "/typescript_client.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(client);
    } else {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(page);
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

let server = await startServer();
const pages = await startPageServer();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log(`[browser] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[browser error] ${e}`));
  await page.exposeFunction("restartServer", async () => {
    await killServer(server);
    server = await startServer(server.quic, server.http);
  });
  await page.exposeFunction("storedCount", (space) => storedCount(server, space));
  await page.goto(`http://127.0.0.1:${pages.address().port}/`);
  await page.waitForFunction(() => window.loaded === true);

  const result = await page.evaluate(async ({ url }) => {
    const { EngramStream } = window.engram;
    const dim = 8;
    const embedding = (n) => Array.from({ length: dim }, (_, d) => Math.sin(n * 0.37 + d * 1.3) + (d === n % dim ? 2 : 0));
    const episode = (n) => ({ id: `b${n}`, when: 1_700_000_000_000 + n, what: `browser episode ${n}`, embedding: embedding(n), confidence: 0.5 });
    const stream = await EngramStream.connect({
      url, space: "browser", bufferSize: 256, backoff: { initialMs: 20, maxMs: 500, attemptsMax: 400 },
    });
    const acked = new Set();
    const streamRange = async (from, to, midway) => {
      const acks = [];
      for (let n = from; n <= to; n++) {
        await stream.ready();
        acks.push(stream.send(episode(n)).then(() => acked.add(n)));
        if (n === midway?.at) await midway.then();
      }
      await Promise.all(acks);
    };
    // 1. 1,000 observations, every ack.
    await streamRange(1, 1000);
    const first = acked.size;
    // 2. The server is SIGKILLed and restarted mid-stream.
    await streamRange(1001, 2000, { at: 1300, then: () => window.restartServer() });
    const connectsAfterRestart = stream.connects;
    // 3. The connection drops mid-stream; the session resumes.
    await streamRange(2001, 2500, { at: 2100, then: async () => stream.dropConnection() });
    // 4. Paused: durable, but no ack until resumed.
    let acksWhilePaused = 0;
    let beats = 0;
    let paused = true;
    stream.onMessage((m) => {
      if (!paused) return;
      if (m.type === "ack") acksWhilePaused++;
      if (m.type === "heartbeat") beats++;
    });
    stream.pause();
    const held = [];
    for (let n = 2501; n <= 2510; n++) held.push(stream.send(episode(n)).then(() => acked.add(n)));
    while ((await window.storedCount("browser")) < 2510) { /* polled: the condition decides */ }
    const beatsAtDurable = beats;
    while (beats < beatsAtDurable + 2) await new Promise((wake) => stream.onMessage(wake));
    const ackedBeforeResume = acked.size;
    paused = false;
    stream.resume();
    await Promise.all(held);
    // 5. Recall: a streamed observation's own embedding finds it first.
    const recalled = await stream.recall({ k: 3, embedding: embedding(1234) });
    await stream.close();
    // 6. The same through JSON messages instead of binary frames.
    const json = await EngramStream.connect({ url, space: "browser-json", encoding: "json" });
    const jsonAcks = [];
    for (let n = 1; n <= 100; n++) {
      await json.ready();
      jsonAcks.push(json.send(episode(n)));
    }
    const jsonAcked = (await Promise.all(jsonAcks)).length;
    await json.close();
    return { first, acked: acked.size, connectsAfterRestart, connects: stream.connects,
      acksWhilePaused, ackedBeforeResume, recalled, jsonAcked };
  }, { url: `ws://${server.http}/v1/stream` });

  console.log(JSON.stringify({ ...result, recalled: result.recalled.hits.map((h) => h.id) }));
  assert.equal(result.first, 1000, "every one of the first 1,000 acknowledged");
  assert.equal(result.acked, 2510, "every observation acknowledged");
  assert.ok(result.connectsAfterRestart >= 2, "reconnected after the restart");
  assert.ok(result.connects >= 3, "reconnected after the drop");
  assert.equal(result.acksWhilePaused, 0, "no ack while paused");
  assert.equal(result.ackedBeforeResume, 2500, "the paused ten were not acknowledged before resume");
  assert.equal(result.recalled.status, "ok");
  assert.equal(result.recalled.hits[0].id, "b1234", "recall finds the streamed observation first");
  assert.equal(result.recalled.hits[0].what, "browser episode 1234");
  assert.equal(result.recalled.hits[0].when, 1_700_000_000_000 + 1234, "the binary frame's time");
  assert.equal(result.jsonAcked, 100, "JSON messages are acknowledged too");
  assert.equal(storedCount(server, "browser-json"), 100);
  assert.equal(storedCount(server, "browser"), 2510, "stored exactly once each");
  console.log("browser test passed");
} finally {
  await browser.close();
  pages.close();
  await killServer(server);
  rmSync(dataDir, { recursive: true, force: true });
}
