// A babble-net peer in a browser: the Go Babble framing over an
// RTCDataChannel, signaling through a WAMP router with autobahn-browser.
//
// It answers RPCs the way `rpcbench serve` does (BENCH.md), and calls a
// Rust node with every RPC, checking its answers. Results go to
// window.babble for the driver (run.mjs) to read.
"use strict";

const CHUNK = 16 * 1024;
const RPC = { join: 0, sync: 1, eager: 2, fastforward: 3 };
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const params = new URLSearchParams(location.search);
const log = (...args) => console.log("[peer]", ...args);
window.babble = { ready: false, calls: null, served: 0, errors: [] };

// ---- frames ---------------------------------------------------------------

// Index just past the JSON value starting at or after `from`, or -1 while
// incomplete (no reliance on the trailing newline).
function valueEnd(bytes, from) {
  let i = from;
  while (i < bytes.length && (bytes[i] === 32 || bytes[i] === 9 || bytes[i] === 10 || bytes[i] === 13)) i++;
  if (i >= bytes.length) return -1;
  let depth = 0, inString = false, escaped = false;
  const first = bytes[i];
  if (first !== 123 && first !== 91 && first !== 34) {
    // null, true, false or a number
    let j = i;
    while (j < bytes.length && /[a-zA-Z0-9.+-]/.test(String.fromCharCode(bytes[j]))) j++;
    return j < bytes.length ? j : -1;
  }
  for (; i < bytes.length; i++) {
    const b = bytes[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (b === 92) escaped = true;
      else if (b === 34) { inString = false; if (depth === 0) return i + 1; }
    } else if (b === 34) inString = true;
    else if (b === 123 || b === 91) depth++;
    else if (b === 125 || b === 93) { depth--; if (depth === 0) return i + 1; }
  }
  return -1;
}

class FrameReader {
  constructor() { this.buf = new Uint8Array(0); this.waiters = []; }
  push(chunk) {
    const next = new Uint8Array(this.buf.length + chunk.length);
    next.set(this.buf); next.set(chunk, this.buf.length);
    this.buf = next;
  }
  skipBlank() {
    let i = 0;
    while (i < this.buf.length && [9, 10, 13, 32].includes(this.buf[i])) i++;
    this.buf = this.buf.subarray(i);
  }
  // {type, body} of the next complete request, or null.
  request() {
    this.skipBlank();
    if (this.buf.length < 2) return null;
    const end = valueEnd(this.buf, 1);
    if (end < 0) return null;
    const frame = { type: this.buf[0], body: JSON.parse(decoder.decode(this.buf.subarray(1, end))) };
    this.buf = this.buf.subarray(end);
    return frame;
  }
  // {error, response} of the next complete reply, or null.
  reply() {
    this.skipBlank();
    const errorEnd = valueEnd(this.buf, 0);
    if (errorEnd < 0) return null;
    const end = valueEnd(this.buf, errorEnd);
    if (end < 0) return null;
    const frame = {
      error: JSON.parse(decoder.decode(this.buf.subarray(0, errorEnd))),
      response: JSON.parse(decoder.decode(this.buf.subarray(errorEnd, end))),
    };
    this.buf = this.buf.subarray(end);
    return frame;
  }
}

function sendChunked(channel, bytes) {
  for (let at = 0; at < bytes.length; at += CHUNK) channel.send(bytes.subarray(at, at + CHUNK));
}

function frame(prefix, text) {
  const body = encoder.encode(text);
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix); out.set(body, prefix.length);
  return out;
}

// ---- the BENCH.md workload ------------------------------------------------

function base64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function event(i) {
  const transactions = [];
  for (let t = 0; t < 4; t++) {
    const tx = new Uint8Array(100);
    for (let j = 0; j < 100; j++) tx[j] = (i + t + j) % 251;
    transactions.push(base64(tx));
  }
  const hex = i.toString(16);
  return {
    Body: {
      Transactions: transactions, InternalTransactions: null, BlockSignatures: null,
      CreatorID: i % 4, OtherParentCreatorID: (i + 1) % 4, Index: i,
      SelfParentIndex: i - 1, OtherParentIndex: i - 2, Timestamp: 1700000000 + i,
    },
    Signature: hex.repeat(Math.ceil(64 / hex.length)).slice(0, 64),
  };
}

function events(n) {
  if (n <= 0) return null;
  return Array.from({ length: n }, (_, i) => event(i));
}

let snapshotText = null;
function snapshot() {
  if (snapshotText === null) {
    const bytes = new Uint8Array(1 << 20);
    for (let j = 0; j < bytes.length; j++) bytes[j] = j % 251;
    snapshotText = base64(bytes);
  }
  return snapshotText;
}

function answer(type, body) {
  switch (type) {
    case RPC.sync: return { FromID: 1, Events: events(body.SyncLimit), Known: body.Known };
    case RPC.eager: return { FromID: 1, Success: true };
    case RPC.fastforward: return {
      FromID: 1,
      Block: { Body: { Index: 0, RoundReceived: 0, Timestamp: 0, StateHash: null, FrameHash: null, PeersHash: null,
        Transactions: null, InternalTransactions: null, InternalTransactionReceipts: null }, Signatures: null },
      Frame: { Round: 0, Peers: null, Roots: null, Events: null, PeerSets: null, Timestamp: 0 },
      Snapshot: snapshot(),
    };
    case RPC.join: return { FromID: 1, Accepted: true, AcceptedRound: 5, Peers: [body.InternalTransaction.Body.Peer] };
    default: return null;
  }
}

function serveChannel(channel) {
  channel.binaryType = "arraybuffer";
  const reader = new FrameReader();
  channel.onmessage = (message) => {
    reader.push(new Uint8Array(message.data));
    for (let request = reader.request(); request; request = reader.request()) {
      const response = answer(request.type, request.body);
      if (response === null) { channel.close(); return; } // unknown RPC type: close, as Go does
      window.babble.served++;
      sendChunked(channel, frame(encoder.encode('""\n'), JSON.stringify(response) + "\n"));
    }
  };
}

// ---- WebRTC ---------------------------------------------------------------

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

const inbound = [];
async function answerOffer(from, offerJson) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  inbound.push(pc);
  pc.ondatachannel = (e) => serveChannel(e.channel);
  await pc.setRemoteDescription(JSON.parse(offerJson));
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered(pc);
  log("answered an offer from", from);
  return JSON.stringify(pc.localDescription);
}

async function dial(session, me, target) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const channel = pc.createDataChannel("babble-browser");
  channel.binaryType = "arraybuffer";
  const opened = new Promise((resolve, reject) => { channel.onopen = resolve; channel.onerror = reject; });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const answerJson = await session.call(target, [me, JSON.stringify(pc.localDescription)]);
  await pc.setRemoteDescription(JSON.parse(typeof answerJson === "string" ? answerJson : JSON.stringify(answerJson)));
  await opened;
  const reader = new FrameReader();
  let waiting = null;
  channel.onmessage = (message) => {
    reader.push(new Uint8Array(message.data));
    const reply = reader.reply();
    if (reply && waiting) { const w = waiting; waiting = null; w(reply); }
  };
  return {
    call(type, body) {
      return new Promise((resolve) => {
        waiting = resolve;
        sendChunked(channel, frame(new Uint8Array([type]), JSON.stringify(body) + "\n"));
      });
    },
    close() { pc.close(); },
  };
}

// Calls `target` (a `rpcbench serve`) with every RPC and checks the answers.
async function callRust(session, me, target) {
  const started = performance.now();
  const link = await dial(session, me, target);
  const connectMs = performance.now() - started;
  const known = { "0": 1, "1": 2, "2": 3 };
  const results = { connect_ms: Math.round(connectMs) };
  const check = (name, ok, detail) => { results[name] = ok ? "ok" : "wrong: " + JSON.stringify(detail).slice(0, 200); };

  let t = performance.now();
  let reply = await link.call(RPC.sync, { FromID: 0, Known: known, SyncLimit: 3 });
  results.sync_ms = +(performance.now() - t).toFixed(2);
  const ev = reply.response && reply.response.Events;
  check("sync", reply.error === "" && ev && ev.length === 3 && ev[2].Signature === "2".repeat(64)
    && JSON.stringify(ev[1]) === JSON.stringify(event(1)), reply);

  reply = await link.call(RPC.eager, { FromID: 0, Events: events(2) });
  check("eager", reply.error === "" && reply.response.Success === true, reply);

  const peer = { NetAddr: "browser", PubKeyHex: "0X04" + "AB".repeat(64), Moniker: "chromium" };
  reply = await link.call(RPC.join, { InternalTransaction: { Body: { Type: 0, Peer: peer }, Signature: "" } });
  check("join", reply.error === "" && reply.response.Accepted === true
    && JSON.stringify(reply.response.Peers) === JSON.stringify([peer]), reply);

  reply = await link.call(RPC.fastforward, { FromID: 0 });
  check("fastforward", reply.error === "" && reply.response.Snapshot === snapshot(), { error: reply.error });

  t = performance.now();
  for (let i = 0; i < 100; i++) await link.call(RPC.sync, { FromID: 0, Known: known, SyncLimit: 0 });
  results.ping_avg_ms = +((performance.now() - t) / 100).toFixed(3);
  link.close();
  return results;
}

function main() {
  const me = params.get("id");
  const connection = new autobahn.Connection({ url: params.get("signal"), realm: params.get("realm") || "main" });
  connection.onopen = async (session) => {
    try {
      await session.register(me, async (args) => {
        try {
          return await answerOffer(args[0], args[1]);
        } catch (e) {
          throw new autobahn.Error("io.babble.processing_offer", [String(e)]);
        }
      });
      window.babble.ready = true;
      log("registered as", me);
      window.babble.calls = await callRust(session, me, params.get("target"));
      log("calls done", JSON.stringify(window.babble.calls));
    } catch (e) {
      window.babble.errors.push(String(e && e.stack || e));
      log("error", String(e));
    }
  };
  connection.onclose = (reason, details) => { log("signaling closed", reason, JSON.stringify(details)); return false; };
  connection.open();
}

main();
