// Checks a `persona audit export` against a signed checkpoint, written from the README's four steps only
// (steps 1-3: an export of a log that was not pruned). Usage: node export_check.mjs EXPORT CHECKPOINT VKEY
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

const [exportPath, checkpointPath, vkey] = process.argv.slice(2);
const fail = (why) => { console.error(`FAIL: ${why}`); process.exit(1); };
const sha = (...parts) => createHash("sha256").update(Buffer.concat(parts.map((p) => Buffer.from(p)))).digest();

// 1. The signed note: the verifier key, the key id, the Ed25519 signature over the lines before the blank one.
const note = readFileSync(checkpointPath, "utf8");
const cut = note.indexOf("\n\n");
const body = note.slice(0, cut + 1);
const [name, keyIdHex, ...rest] = vkey.trim().split("+"); // the base64 key may hold "+" itself
const keyB64 = rest.join("+");
const key = Buffer.from(keyB64, "base64"); // 0x01 || 32-byte Ed25519 public key
const keyId = sha(`${name}\n`, key).subarray(0, 4);
if (key[0] !== 1 || keyId.toString("hex") !== keyIdHex) fail("the verifier key's id does not match its key");
const line = note.slice(cut + 2).split("\n").find((l) => l.startsWith(`\u2014 ${name} `));
if (!line) fail(`no signature by ${name}`);
const sig = Buffer.from(line.split(" ")[2], "base64");
const spki = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), key.subarray(1)]);
const pub = createPublicKey({ key: spki, format: "der", type: "spki" });
if (!sig.subarray(0, 4).equals(keyId) || !verify(null, Buffer.from(body), pub, sig.subarray(4))) fail("bad signature");
const [, sizeText, rootB64] = body.split("\n");
const size = Number(sizeText);

// 2. The chain: line n is record n, its hash covers the line without its "hash" member, prev_hash links.
const records = readFileSync(exportPath, "utf8").split("\n").filter((l) => l !== "");
let prev = "0".repeat(64);
const leaves = records.map((text, i) => {
  const record = JSON.parse(text);
  if (record.seq !== i + 1) fail(`record ${i + 1} is missing`);
  if (sha(text.replace(`,"hash":"${record.hash}"`, "")).toString("hex") !== record.hash) fail(`record ${i + 1} changed`);
  if (record.prev_hash !== prev) fail(`record ${i + 1} is not chained to record ${i}`);
  prev = record.hash;
  return sha([0], Buffer.from(record.hash, "hex")); // 3. RFC 6962 leaves
});

// 3. The tree: split at the largest power of two below its size; the first `size` leaves give the root.
const mth = (l) => l.length === 0 ? sha("") : l.length === 1 ? l[0]
  : ((k) => sha([1], mth(l.slice(0, k)), mth(l.slice(k))))(2 ** Math.floor(Math.log2(l.length - 1)));
if (leaves.length < size) fail(`the export has ${leaves.length} records, the checkpoint signed ${size}`);
if (!mth(leaves.slice(0, size)).equals(Buffer.from(rootB64, "base64"))) fail("the root does not match");
console.log(`ok: ${leaves.length} records chained; the first ${size} are the ones ${name} signed`);
