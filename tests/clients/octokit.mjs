// @octokit/rest, unmodified, through the mirror over TLS.
//
// Run by `cargo test --test clients octokit -- --include-ignored` (tests/clients.rs) with cwd
// tests/clients, FIXTURE naming the fixture JSON and NODE_EXTRA_CA_CERTS the
// test CA. Prints one line per check; exits 1 on the first mismatch.
//
// What it checks:
// - octokit.paginate over listArtifactsForRepo (per_page=2) follows the
//   mirror's rewritten `Link` `next` URLs verbatim and finds every artifact
//   of the repository, newest first; every page was requested from the mirror;
// - listArtifactsForRepo with `name` gives only that artifact, twice (the
//   filter is forwarded and part of the cache key);
// - listWorkflowRunArtifacts gives exactly the run's artifacts;
// - getArtifact for each, with `url` and `archive_download_url` on the mirror;
// - downloadArtifact following the redirect (octokit's default fetch) gives
//   the zip's bytes;
// - downloadArtifact with `request.redirect = "manual"` gives a 302 to the
//   mirror's `/_mirror/blobs/…`, which fetched WITHOUT Authorization gives the
//   same bytes, `Content-Type: application/zip`, and a zip holding the
//   expected file (name, size, sha256, CRC-32);
// - getArtifact with `If-None-Match: <its ETag>` makes octokit throw its
//   RequestError with status 304.

import { inflateRawSync } from "node:zlib";
import { Octokit } from "@octokit/rest";
import { check, checks, equal, fail, fixture, ok, sha256 } from "./checks.mjs";

const { api_base: apiBase, reader_token: token, owner, repo, run_id: runId } = fixture;
const mirrorOrigin = new URL(apiBase).origin;

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Every entry of a zip, read through its central directory: STORE and
 *  DEFLATE; no zip64, no encryption (neither occurs in artifact zips of
 *  this size). */
function unzip(buf) {
  const eocdSig = 0x06054b50;
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (buf.readUInt32LE(i) === eocdSig) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) fail("zip: no end of central directory record");
  const count = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  const entries = [];
  for (let n = 0; n < count; n++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) fail(`zip: bad central directory header at ${p}`);
    const method = buf.readUInt16LE(p + 10);
    const crc = buf.readUInt32LE(p + 16);
    const compressed = buf.readUInt32LE(p + 20);
    const size = buf.readUInt32LE(p + 24);
    const nameLen = buf.readUInt16LE(p + 28);
    const extraLen = buf.readUInt16LE(p + 30);
    const commentLen = buf.readUInt16LE(p + 32);
    const local = buf.readUInt32LE(p + 42);
    const name = buf.subarray(p + 46, p + 46 + nameLen).toString("utf8");
    p += 46 + nameLen + extraLen + commentLen;
    if (buf.readUInt32LE(local) !== 0x04034b50) fail(`zip: bad local header for ${name}`);
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const raw = buf.subarray(start, start + compressed);
    let data;
    if (method === 0) data = raw;
    else if (method === 8) data = inflateRawSync(raw);
    else fail(`zip: ${name} uses compression method ${method}`);
    if (data.length !== size) fail(`zip: ${name} is ${data.length} bytes, its header says ${size}`);
    if (crc32(data) !== crc) fail(`zip: ${name} fails its CRC-32`);
    entries.push({ name, method, data });
  }
  return entries;
}

/** The zip matches the fixture: its sha256, and each expected file. */
function checkZip(bytes, expected, how) {
  equal(sha256(bytes), expected.zip_sha256, `${expected.name}: ${how}: zip sha256`);
  const entries = unzip(bytes);
  equal(
    entries.map((e) => e.name).sort(),
    expected.files.map((f) => f.name).sort(),
    `${expected.name}: ${how}: zip entries`,
  );
  for (const file of expected.files) {
    const entry = entries.find((e) => e.name === file.name);
    equal(
      { size: entry.data.length, sha256: sha256(entry.data) },
      { size: file.size, sha256: file.sha256 },
      `${expected.name}: ${how}: ${file.name} (method ${entry.method}, CRC-32 ok)`,
    );
  }
}

async function main() {
  const requested = [];
  const octokit = new Octokit({
    baseUrl: apiBase,
    auth: token,
    userAgent: "artifact-mirror-client-tests",
    log: { debug() {}, info() {}, warn: console.warn, error: console.error },
  });
  octokit.hook.after("request", (response) => {
    requested.push({ url: response.url, status: response.status, xCache: response.headers["x-cache"] });
  });
  octokit.hook.error("request", (error) => {
    requested.push({ url: error.response?.url ?? error.request?.url, status: error.status, xCache: error.response?.headers?.["x-cache"] });
    throw error;
  });

  // 1. paginate through the mirror's Link headers.
  const listed = await octokit.paginate(octokit.rest.actions.listArtifactsForRepo, {
    owner,
    repo,
    per_page: 2,
  });
  const pages = requested.splice(0);
  equal(listed.map((a) => a.id), fixture.all_artifact_ids, "paginate(listArtifactsForRepo, per_page=2): ids, newest first");
  equal(pages.length, Math.ceil(fixture.all_artifact_ids.length / 2), "paginate: number of pages requested");
  for (const page of pages) {
    check(page.url.startsWith(`${apiBase}/`), `paginate: page requested from the mirror: ${page.url} (x-cache ${page.xCache})`, page);
  }
  check(
    pages.slice(1).every((p) => new URL(p.url).pathname.startsWith(`${new URL(apiBase).pathname}/repositories/`)),
    "paginate: pages after the first use the Link's /repositories/{id}/ form verbatim",
    pages.map((p) => p.url),
  );
  for (const a of listed) {
    check(a.url.startsWith(`${apiBase}/`) && a.archive_download_url.startsWith(`${apiBase}/`), `list: artifact ${a.id} URLs on the mirror`, a);
  }

  const byId = (x, y) => x.id - y.id;
  const expected = [...fixture.run_artifacts].sort(byId);

  // 1b. the `name` filter reaches upstream and gets a cache entry of its own
  // (each name asked twice: the second answer comes from the mirror's entry).
  for (const want of expected) {
    for (const round of [1, 2]) {
      const { data, headers } = await octokit.rest.actions.listArtifactsForRepo({ owner, repo, name: want.name });
      equal(
        data.artifacts.map((a) => a.id),
        [want.id],
        `listArtifactsForRepo(name=${want.name}) #${round} (x-cache ${headers["x-cache"]})`,
      );
    }
  }
  requested.splice(0);

  // 2. the run's artifacts.
  const { data: run } = await octokit.rest.actions.listWorkflowRunArtifacts({ owner, repo, run_id: runId });
  requested.splice(0);
  equal(run.total_count, expected.length, `listWorkflowRunArtifacts(run ${runId}): total_count`);
  equal(
    run.artifacts.map(({ id, name, size_in_bytes }) => ({ id, name, size_in_bytes })).sort(byId),
    expected.map(({ id, name, size_in_bytes }) => ({ id, name, size_in_bytes })),
    "listWorkflowRunArtifacts: ids, names, sizes",
  );

  for (const want of expected) {
    // 3. get.
    const got = await octokit.rest.actions.getArtifact({ owner, repo, artifact_id: want.id });
    requested.splice(0);
    equal(
      { id: got.data.id, name: got.data.name, size_in_bytes: got.data.size_in_bytes },
      { id: want.id, name: want.name, size_in_bytes: want.size_in_bytes },
      `getArtifact(${want.id})`,
    );
    equal(got.data.url, `${apiBase}/repos/${owner}/${repo}/actions/artifacts/${want.id}`, `getArtifact(${want.id}): url on the mirror`);
    equal(
      got.data.archive_download_url,
      `${apiBase}/repos/${owner}/${repo}/actions/artifacts/${want.id}/zip`,
      `getArtifact(${want.id}): archive_download_url on the mirror`,
    );
    const etag = got.headers.etag;
    check(typeof etag === "string" && etag.length > 0, `getArtifact(${want.id}): has an ETag (${etag})`);

    // 4a. download, redirect followed by octokit's fetch.
    const followed = await octokit.rest.actions.downloadArtifact({
      owner,
      repo,
      artifact_id: want.id,
      archive_format: "zip",
    });
    requested.splice(0);
    equal(followed.status, 200, `downloadArtifact(${want.id}) following the redirect: status`);
    check(
      followed.url.startsWith(`${mirrorOrigin}/_mirror/blobs/${want.id}?`),
      `downloadArtifact(${want.id}) following the redirect: ended on the mirror's blob URL`,
      followed.url,
    );
    check(followed.data instanceof ArrayBuffer, `downloadArtifact(${want.id}): octokit returned the body as an ArrayBuffer`, typeof followed.data);
    checkZip(Buffer.from(followed.data), want, "followed redirect");

    // 4b. download, redirect not followed.
    const manual = await octokit.rest.actions.downloadArtifact({
      owner,
      repo,
      artifact_id: want.id,
      archive_format: "zip",
      request: { redirect: "manual" },
    });
    requested.splice(0);
    equal(manual.status, 302, `downloadArtifact(${want.id}, redirect: manual): status`);
    const location = manual.headers.location;
    check(
      typeof location === "string" &&
        new URL(location).origin === mirrorOrigin &&
        new URL(location).pathname === `/_mirror/blobs/${want.id}`,
      `downloadArtifact(${want.id}, redirect: manual): location is the mirror's /_mirror/blobs/${want.id} (x-cache ${manual.headers["x-cache"]})`,
      location,
    );
    const blob = await fetch(location, { redirect: "error" }); // no Authorization
    equal(blob.status, 200, `GET location without Authorization: status`);
    equal(blob.headers.get("content-type"), "application/zip", `GET location: content-type`);
    const bytes = Buffer.from(await blob.arrayBuffer());
    equal(Number(blob.headers.get("content-length")), bytes.length, `GET location: content-length matches the body`);
    checkZip(bytes, want, "location without Authorization");

    // 5. conditional get: octokit turns the 304 into a RequestError.
    let thrown;
    try {
      const again = await octokit.rest.actions.getArtifact({
        owner,
        repo,
        artifact_id: want.id,
        headers: { "if-none-match": etag },
      });
      fail(`getArtifact(${want.id}) with If-None-Match ${etag}: expected a 304, got ${again.status}`);
    } catch (error) {
      thrown = error;
    }
    requested.splice(0);
    check(
      thrown.name === "HttpError" && thrown.status === 304,
      `getArtifact(${want.id}) with If-None-Match: octokit threw RequestError 304 (x-cache ${thrown.response?.headers?.["x-cache"]})`,
      `${thrown.name}: ${thrown.message} (status ${thrown.status})`,
    );
  }

  console.log(`octokit: all ${checks()} checks passed`);
}

main().catch((error) => {
  console.error(`octokit: FAILED after ${checks()} checks: ${error?.stack ?? error}`);
  process.exit(1);
});
