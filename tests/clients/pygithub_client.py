#!/usr/bin/env python3
"""PyGithub (+ requests) through the mirror, over TLS with a test CA.

Run by `cargo test --test clients pygithub -- --include-ignored` (tests/clients.rs), which starts
the GHES simulator and the mirror, writes the fixture named by $FIXTURE and
runs this script with cwd tests/clients. Unmodified PyGithub, configured the
way a user would point it at the mirror:

    Github(base_url="https://MIRROR/api/v3", auth=Auth.Token(TOKEN),
           verify="/path/to/ca.pem", per_page=2)

Checks, each printed as it passes; any mismatch exits 1 naming it:
  1. get_repo("owner/repo") (GET /repos/{owner}/{repo}, forwarded): id,
     full_name, and its `url` on the mirror's base (PyGithub builds every
     later repository URL from it).
  2. repo.get_artifacts() over every page at per_page=2: PyGithub follows
     `Link` rel="next" and asserts each next URL keeps the base's host, port
     and path prefix; the ids, in order, equal the fixture's all_artifact_ids
     and total_count matches.
  3. The run's own list (GET …/actions/runs/{run_id}/artifacts), paginated.
  4. get_artifact(id) for each run artifact: name, size, URLs on the mirror,
     X-Cache MISS, then REVALIDATED on a second get.
  5. archive_download_url downloaded with requests (token, verify=CA,
     redirects followed): one 302 to the mirror's /_mirror/blobs/{id}, a 200
     application/zip of size_in_bytes whose sha256 is zip_sha256; a second
     download is X-Cache HIT with the same bytes.
  6. zipfile: entry names, sizes and sha256 equal the fixture's files.
"""

import hashlib
import io
import json
import os
import sys
import traceback
import urllib.parse
import zipfile
from importlib.metadata import version

try:
    import requests
    import github
    from github import Auth, Github
    from github.Artifact import Artifact
    from github.PaginatedList import PaginatedList
except ImportError as e:  # pragma: no cover - environment problem
    print(f"FAIL: cannot import PyGithub/requests ({e}); "
          "run: pip install -r tests/clients/requirements.txt", file=sys.stderr)
    sys.exit(1)

PER_PAGE = 2
CHECKS = 0
FAILURES = []


class Mismatch(Exception):
    pass


def ok(what):
    global CHECKS
    CHECKS += 1
    print(f"ok  {what}", flush=True)


def expect(cond, what, detail=""):
    if not cond:
        raise Mismatch(f"{what}{': ' + detail if detail else ''}")
    ok(what)


def expect_eq(actual, expected, what):
    if actual != expected:
        raise Mismatch(f"{what}: expected {expected!r}, got {actual!r}")
    ok(f"{what} = {short(actual)}")


def short(v):
    s = repr(v)
    return s if len(s) <= 100 else s[:97] + "..."


def header(headers, name):
    """Case-insensitive lookup in a plain dict or a requests CaseInsensitiveDict."""
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def on_mirror(url, api_base):
    return isinstance(url, str) and url.startswith(api_base + "/")


def main():
    with open(os.environ["FIXTURE"], encoding="utf-8") as f:
        fx = json.load(f)
    api_base = fx["api_base"].rstrip("/")
    ca_file = fx["ca_file"]
    token = fx["reader_token"]
    owner, repo_name = fx["owner"], fx["repo"]
    full_name = f"{owner}/{repo_name}"
    mirror = urllib.parse.urlsplit(api_base)
    print(f"PyGithub {version('PyGithub')}, "
          f"requests {requests.__version__}, base_url={api_base}, verify={ca_file}, "
          f"per_page={PER_PAGE}", flush=True)

    gh = Github(base_url=api_base, auth=Auth.Token(token), verify=ca_file,
                per_page=PER_PAGE, retry=None)

    # 1. The repository (forwarded route; PyGithub completes it at once).
    repo = gh.get_repo(full_name)
    expect_eq(repo.id, fx["repository_id"], "get_repo: id")
    expect_eq(repo.full_name, full_name, "get_repo: full_name")
    try:
        expect(on_mirror(repo.url, api_base), "get_repo: url is on the mirror's base",
               f"url={repo.url!r} is not under {api_base}/ (the mirror forwarded "
               "GET /repos/{owner}/{repo} without rewriting upstream URLs; PyGithub "
               "builds get_artifacts()/get_artifact() URLs from it and then refuses "
               "them with AssertionError, or leaves the mirror)")
    except Mismatch as e:
        FAILURES.append(str(e))
        print(f"FAIL {e}\n     continuing with Github(lazy=True).get_repo(), whose url "
              "stays the relative /repos/{owner}/{repo}, to check the rest", flush=True)
        repo = Github(base_url=api_base, auth=Auth.Token(token), verify=ca_file,
                      per_page=PER_PAGE, retry=None, lazy=True).get_repo(full_name)

    # 2. Every page of the repository's artifacts.
    artifacts = repo.get_artifacts()
    ids = [a.id for a in artifacts]
    expect_eq(ids, fx["all_artifact_ids"],
              f"get_artifacts(): ids over {-(-len(ids) // PER_PAGE)} pages of {PER_PAGE}")
    expect_eq(artifacts.totalCount, len(fx["all_artifact_ids"]), "get_artifacts(): totalCount")
    listed = {a.id: a for a in artifacts}
    for a in listed.values():
        if not (on_mirror(a.url, api_base) and on_mirror(a.archive_download_url, api_base)):
            raise Mismatch(f"listed artifact {a.id}: url/archive_download_url not on the "
                           f"mirror: {a.url!r}, {a.archive_download_url!r}")
    ok(f"get_artifacts(): all {len(listed)} url/archive_download_url on the mirror")

    # 3. The run's list, paginated the same way (PyGithub's own PaginatedList
    #    over the run route; WorkflowRun would first need GET …/runs/{id}).
    run_ids = {a["id"] for a in fx["run_artifacts"]}
    run_list = PaginatedList(Artifact, repo.requester,
                             f"{repo.url}/actions/runs/{fx['run_id']}/artifacts",
                             None, list_item="artifacts")
    expect_eq([a.id for a in run_list],
              [i for i in fx["all_artifact_ids"] if i in run_ids],
              f"run {fx['run_id']} artifacts: ids (newest first)")

    session = requests.Session()
    for want in fx["run_artifacts"]:
        aid = want["id"]
        tag = f"artifact {aid} ({want['name']})"

        # 4. get_artifact, twice.
        art = repo.get_artifact(aid)
        expect_eq((art.id, art.name, art.size_in_bytes, art.expired),
                  (aid, want["name"], want["size_in_bytes"], False),
                  f"{tag}: get_artifact (id, name, size_in_bytes, expired)")
        expect(on_mirror(art.url, api_base) and on_mirror(art.archive_download_url, api_base),
               f"{tag}: url and archive_download_url on the mirror",
               f"{art.url!r}, {art.archive_download_url!r}")
        expect_eq(art.archive_download_url, f"{api_base}/repos/{full_name}/actions/artifacts/{aid}/zip",
                  f"{tag}: archive_download_url")
        expect_eq(header(art.raw_headers, "x-cache"), "MISS", f"{tag}: first get X-Cache")
        again = repo.get_artifact(aid)
        expect_eq(header(again.raw_headers, "x-cache"), "REVALIDATED", f"{tag}: second get X-Cache")
        expect_eq(again.raw_data, art.raw_data, f"{tag}: second get same body")

        # 5. Download with requests, as a user would: token, CA, redirects.
        def download(expect_cache):
            r = session.get(art.archive_download_url,
                            headers={"Authorization": f"token {token}",
                                     "Accept": "application/vnd.github+json"},
                            verify=ca_file, allow_redirects=True, timeout=60)
            if r.status_code != 200:
                raise Mismatch(f"{tag}: download ended in HTTP {r.status_code}: {r.text[:300]!r}")
            hops = [(h.status_code, h.headers.get("Location")) for h in r.history]
            if len(r.history) != 1 or r.history[0].status_code != 302:
                raise Mismatch(f"{tag}: expected one 302 before the zip, got {hops}")
            loc = urllib.parse.urlsplit(r.url)
            expect((loc.scheme, loc.netloc, loc.path) ==
                   (mirror.scheme, mirror.netloc, f"/_mirror/blobs/{aid}"),
                   f"{tag}: 302 to the mirror's /_mirror/blobs/{aid}", f"went to {r.url}")
            expect_eq(r.history[0].headers.get("X-Cache"), expect_cache,
                      f"{tag}: download 302 X-Cache")
            expect_eq(r.headers.get("Content-Type"), "application/zip", f"{tag}: blob Content-Type")
            expect_eq(len(r.content), want["size_in_bytes"], f"{tag}: zip length = size_in_bytes")
            expect_eq(r.headers.get("Content-Length"), str(want["size_in_bytes"]),
                      f"{tag}: blob Content-Length")
            expect_eq(hashlib.sha256(r.content).hexdigest(), want["zip_sha256"], f"{tag}: zip sha256")
            return r.content

        body = download("MISS")
        second = download("HIT")
        expect(second == body, f"{tag}: second download same bytes")

        # 6. The files inside.
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            expect_eq(z.testzip(), None, f"{tag}: zipfile CRCs")
            got = []
            for info in z.infolist():
                data = z.read(info)
                got.append({"name": info.filename, "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        expect_eq(got, want["files"], f"{tag}: zip entries (name, size, sha256)")

    if FAILURES:
        raise Mismatch(f"{len(FAILURES)} check(s) failed: " + "; ".join(FAILURES))
    print(f"PASS: {CHECKS} checks", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Mismatch as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # PyGithub's AssertionError, GithubException, TLS…
        traceback.print_exc()
        print(f"FAIL: {type(e).__name__}: {e} (after {CHECKS} checks passed)", file=sys.stderr)
        sys.exit(1)
