// @actions/artifact (DefaultArtifactClient), unmodified, through the mirror
// over TLS, the way actions/download-artifact uses it with `github-token`
// and `run-id` (the "findBy" public-API path).
//
// Run by `cargo test --test clients actions_artifact -- --include-ignored` (tests/clients.rs)
// with cwd tests/clients, FIXTURE naming the fixture JSON and
// NODE_EXTRA_CA_CERTS the test CA. Prints one line per check; exits 1 on the
// first mismatch.
//
// How the package calls the API (lib/internal/**, read in node_modules):
// - Base URL: `GITHUB_API_URL`, read ONCE when @actions/github's utils module
//   is first imported (its `defaults.baseUrl`), so it must be set before the
//   package is imported: hence the dynamic import below.
// - It refuses everything (GHESNotSupportedError) when `GITHUB_SERVER_URL`
//   names a host other than github.com, *.ghe.com or *.localhost. On a GHES
//   runner that variable is set to the GHES host, so a job there must unset it
//   (or set it to https://github.com) for the client to reach the mirror at
//   all; this script removes it from its own environment.
// - listArtifacts: GET /repos/{o}/{r}/actions/runs/{run}/artifacts
//   ?per_page=100&page=N, the page count computed from `total_count`
//   (`Link` is never read); plugin-retry with 5 retries.
// - getArtifact: the same list route with `?name=<name>` (no per_page/page),
//   newest id wins when several match.
// - downloadArtifact: GET /repos/{o}/{r}/actions/artifacts/{id}/zip with
//   `redirect: "manual"`; anything but a 302 with `Location` is an error.
//   The Location is then fetched with @actions/http-client (node:https, so
//   NODE_EXTRA_CA_CERTS applies) WITHOUT Authorization; it needs 200, and
//   unzips only when `Content-Type` is application/zip (or the URL path ends
//   in .zip) — otherwise it saves the body raw under the Content-Disposition
//   filename. A failed blob fetch is retried 4 more times, 5 s apart, with the
//   SAME Location (so a blob URL TTL shorter than ~25 s could expire
//   mid-retry). `expectedHash` is compared with the sha256 of the zip bytes.
//   workflowRunId is ignored by downloadArtifact.

import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { check, checks, equal, fail, fixture, ok, sha256 } from "./checks.mjs";

const { api_base: apiBase, reader_token: token, owner, repo, run_id: runId, work_dir: workDir } = fixture;

async function main() {
  // Before the import: @actions/github reads GITHUB_API_URL at module load.
  process.env.GITHUB_API_URL = apiBase;
  delete process.env.GITHUB_SERVER_URL;
  const { DefaultArtifactClient } = await import("@actions/artifact");
  const client = new DefaultArtifactClient();
  const findBy = { token, workflowRunId: runId, repositoryOwner: owner, repositoryName: repo };

  const byId = (x, y) => x.id - y.id;
  const expected = [...fixture.run_artifacts].sort(byId);
  const summary = (a) => ({ id: a.id, name: a.name, size: a.size });
  const want = expected.map((a) => ({ id: a.id, name: a.name, size: a.size_in_bytes }));

  // listArtifacts, all and latest-per-name (names are distinct here).
  const { artifacts } = await client.listArtifacts({ findBy });
  equal(artifacts.map(summary).sort(byId), want, `listArtifacts(run ${runId}): ids, names, sizes`);
  const { artifacts: latest } = await client.listArtifacts({ latest: true, findBy });
  equal(latest.map(summary).sort(byId), want, `listArtifacts(run ${runId}, latest): ids, names, sizes`);
  for (const a of artifacts) {
    const fx = expected.find((e) => e.id === a.id);
    if (a.digest) {
      equal(a.digest, `sha256:${fx.zip_sha256}`, `listArtifacts: ${a.name} digest`);
    }
    check(a.createdAt instanceof Date && !Number.isNaN(a.createdAt.getTime()), `listArtifacts: ${a.name} createdAt is a date`);
  }

  for (const fx of expected) {
    // downloadArtifact: 302 from the mirror, then the mirror's blob URL
    // without Authorization, unzipped into path.
    const path = join(workDir, fx.name);
    const result = await client.downloadArtifact(fx.id, {
      path,
      findBy,
      expectedHash: `sha256:${fx.zip_sha256}`,
    });
    equal(result.downloadPath, path, `downloadArtifact(${fx.id}): downloadPath`);
    equal(result.digestMismatch, false, `downloadArtifact(${fx.id}): sha256 of the zip equals the fixture's (expectedHash)`);
    equal(readdirSync(path).sort(), fx.files.map((f) => f.name).sort(), `downloadArtifact(${fx.id}): extracted files`);
    for (const file of fx.files) {
      const bytes = readFileSync(join(path, file.name));
      equal(
        { size: bytes.length, sha256: sha256(bytes) },
        { size: file.size, sha256: file.sha256 },
        `downloadArtifact(${fx.id}): ${file.name}`,
      );
    }
  }

  // getArtifact by name: the run list with `?name=` (GHES 3.19's
  // `artifact-name` parameter), newest match wins. Last, so that a failure
  // here still leaves the download checks above reported.
  for (const fx of expected) {
    const { artifact } = await client.getArtifact(fx.name, { findBy });
    equal(summary(artifact), { id: fx.id, name: fx.name, size: fx.size_in_bytes }, `getArtifact("${fx.name}")`);
  }

  console.log(`actions-artifact: all ${checks()} checks passed`);
}

main().catch((error) => {
  console.error(`actions-artifact: FAILED after ${checks()} checks: ${error?.stack ?? error}`);
  process.exit(1);
});
