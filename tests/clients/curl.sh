#!/usr/bin/env bash
# curl through the mirror, over TLS with a test CA: what a shell script in CI
# would do. Run by `cargo test --test clients curl -- --include-ignored` (tests/clients.rs), which
# starts the GHES simulator and the mirror, writes the fixture named by
# $FIXTURE and runs this with cwd tests/clients and MIRROR_CA_FILE set.
#
# Checks (each printed as it passes; any mismatch exits 1 naming it):
#   1. list ?per_page=2: 200, X-Cache MISS, then every `Link` rel="next"
#      followed verbatim (each on the mirror's base) to the last page; the ids
#      equal all_artifact_ids, total_count matches.
#   2. the same first page again: X-Cache REVALIDATED, same body.
#   3. If-None-Match with the list's ETag, and with a get's ETag: 304, empty
#      body, same ETag.
#   4. for each run artifact: get (name, size, archive_download_url on the
#      mirror); without -L the download is a 302 to the mirror's
#      /_mirror/blobs/{id} (X-Cache MISS, then HIT/COALESCED); with -L and the
#      token the zip's sha256 is zip_sha256, its length size_in_bytes, and its
#      files' names, sizes and sha256 are the fixture's; a Range request on
#      the blob URL is a 206 of the right bytes.
#   5. the download without a token is refused (404: private repository).
# curl negotiates HTTP/2 with the mirror (TLS ALPN) unless CURL_OPTS says
# otherwise (e.g. CURL_OPTS=--http1.1, for comparing; extra curl arguments).
# Needs bash, curl, python3 (JSON parsing; jq may be missing), sha256sum.
set -euo pipefail
read -r -a EXTRA <<< "${CURL_OPTS:-}"

: "${FIXTURE:?FIXTURE must name the fixture JSON}"
: "${MIRROR_CA_FILE:?MIRROR_CA_FILE must name the test CA}"

CHECKS=0
ok() { CHECKS=$((CHECKS + 1)); printf 'ok  %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
expect_eq() { # actual expected what
  [[ "$1" == "$2" ]] || fail "$3: expected '$2', got '$1'"
  ok "$3 = $1"
}

# fx EXPR: a value from the fixture (python expression over `f`).
fx() { python3 -c 'import json,os,sys; f=json.load(open(os.environ["FIXTURE"])); v=eval(sys.argv[1]); print(v if isinstance(v,(str,int)) else json.dumps(v, sort_keys=True))' "$1"; }
# js FILE EXPR: a value from a JSON file (python expression over `j`).
js() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print(v if isinstance(v,(str,int)) else json.dumps(v, sort_keys=True))' "$1" "$2"; }
# hdr FILE NAME: the last value of header NAME in a `curl -D` dump (no CR).
hdr() { awk -v n="$(printf '%s' "$2" | tr 'A-Z' 'a-z')" 'BEGIN{IGNORECASE=1} { sub(/\r$/, "") } tolower(substr($0, 1, length(n) + 1)) == n ":" { v = substr($0, length(n) + 2); sub(/^[ \t]+/, "", v) } END { print v }' "$1"; }
# next_link FILE: the rel="next" URL of the Link header(s) in a dump, or "".
next_link() {
  python3 -c '
import re, sys
links = []
for line in open(sys.argv[1], encoding="latin-1"):
    name, _, value = line.rstrip("\r\n").partition(":")
    if name.strip().lower() == "link":
        links.append(value.strip())
for part in ",".join(links).split(","):
    m = re.match(r"\s*<([^>]*)>\s*;(.*)$", part)
    if m and re.search(r"""rel="?next"?""", m.group(2)):
        print(m.group(1)); break
' "$1"
}

API=$(fx 'f["api_base"]'); API=${API%/}
TOKEN=$(fx 'f["reader_token"]')
OWNER=$(fx 'f["owner"]'); REPO=$(fx 'f["repo"]')
WORK=$(fx 'f["work_dir"]')/curl
mkdir -p "$WORK"
WANT_IDS=$(fx 'f["all_artifact_ids"]')
echo "$(curl --version | head -1)"
echo "api_base=$API ca=$MIRROR_CA_FILE extra curl args: ${CURL_OPTS:-none}"

# c ARGS…: curl with the CA and the token; prints the status code.
c() { curl -sS ${EXTRA[@]+"${EXTRA[@]}"} --cacert "$MIRROR_CA_FILE" -H "Authorization: token $TOKEN" \
        -H 'Accept: application/vnd.github+json' -w '%{http_code}' "$@"; }

# 1. The repository's list, page by page, following Link verbatim.
LIST="$API/repos/$OWNER/$REPO/actions/artifacts?per_page=2"
url=$LIST; page=0; ids=()
while [[ -n "$url" ]]; do
  page=$((page + 1))
  [[ $page -le 50 ]] || fail "more than 50 pages: Link rel=next never ends"
  [[ "$url" == "$API/"* ]] || fail "page $page: Link URL leaves the mirror's base: $url"
  status=$(c -D "$WORK/list$page.h" -o "$WORK/list$page.json" "$url")
  expect_eq "$status" 200 "list page $page HTTP status"
  if [[ $page -eq 1 ]]; then
    expect_eq "$(hdr "$WORK/list1.h" x-cache)" MISS "list page 1 X-Cache (first request)"
    expect_eq "$(js "$WORK/list1.json" 'j["total_count"]')" \
      "$(fx 'len(f["all_artifact_ids"])')" "list total_count"
  fi
  while read -r id; do ids+=("$id"); done < <(js "$WORK/list$page.json" '"\n".join(str(a["id"]) for a in j["artifacts"])')
  urls_ok=$(js "$WORK/list$page.json" "all(a['url'].startswith('$API/') and a['archive_download_url'].startswith('$API/') for a in j['artifacts'])")
  expect_eq "$urls_ok" True "list page $page: url/archive_download_url on the mirror"
  url=$(next_link "$WORK/list$page.h")
  [[ -z "$url" ]] || ok "list page $page: Link rel=next $url"
done
got_ids=$(python3 -c 'import json,sys; print(json.dumps([int(x) for x in sys.argv[1:]]))' "${ids[@]}")
expect_eq "$got_ids" "$WANT_IDS" "list ids over $page pages (Link followed verbatim)"

# 2. The same first page again: revalidated upstream with the stored ETag.
status=$(c -D "$WORK/again.h" -o "$WORK/again.json" "$LIST")
expect_eq "$status" 200 "repeated list HTTP status"
expect_eq "$(hdr "$WORK/again.h" x-cache)" REVALIDATED "repeated list X-Cache"
cmp -s "$WORK/list1.json" "$WORK/again.json" || fail "repeated list: body differs from the first"
ok "repeated list: same body"

# 3. Conditional requests with the ETag the mirror gave.
etag=$(hdr "$WORK/list1.h" etag)
[[ -n "$etag" ]] || fail "list page 1 has no ETag"
: > "$WORK/inm.body" # curl creates no file for an empty body
status=$(c -D "$WORK/inm.h" -o "$WORK/inm.body" -H "If-None-Match: $etag" "$LIST")
expect_eq "$status" 304 "list If-None-Match $etag HTTP status"
expect_eq "$(wc -c < "$WORK/inm.body" | tr -d ' ')" 0 "list 304 body length"
expect_eq "$(hdr "$WORK/inm.h" etag)" "$etag" "list 304 ETag"
ok "list 304 X-Cache: $(hdr "$WORK/inm.h" x-cache)"

# 4. Each run artifact: get, conditional get, download.
n=$(fx 'len(f["run_artifacts"])')
for ((i = 0; i < n; i++)); do
  id=$(fx "f['run_artifacts'][$i]['id']")
  name=$(fx "f['run_artifacts'][$i]['name']")
  size=$(fx "f['run_artifacts'][$i]['size_in_bytes']")
  sha=$(fx "f['run_artifacts'][$i]['zip_sha256']")
  tag="artifact $id ($name)"
  get="$API/repos/$OWNER/$REPO/actions/artifacts/$id"

  status=$(c -D "$WORK/get$id.h" -o "$WORK/get$id.json" "$get")
  expect_eq "$status" 200 "$tag: get HTTP status"
  expect_eq "$(js "$WORK/get$id.json" '[j["id"], j["name"], j["size_in_bytes"], j["expired"]]')" \
    "[$id, \"$name\", $size, false]" "$tag: get [id, name, size_in_bytes, expired]"
  expect_eq "$(hdr "$WORK/get$id.h" x-cache)" MISS "$tag: get X-Cache"
  dl=$(js "$WORK/get$id.json" 'j["archive_download_url"]')
  expect_eq "$dl" "$API/repos/$OWNER/$REPO/actions/artifacts/$id/zip" "$tag: archive_download_url"

  getetag=$(hdr "$WORK/get$id.h" etag)
  [[ -n "$getetag" ]] || fail "$tag: get has no ETag"
  : > "$WORK/get$id.304"
  status=$(c -D "$WORK/get$id.304.h" -o "$WORK/get$id.304" -H "If-None-Match: $getetag" "$get")
  expect_eq "$status" 304 "$tag: get If-None-Match HTTP status"
  expect_eq "$(wc -c < "$WORK/get$id.304" | tr -d ' ')" 0 "$tag: get 304 body length"

  # The redirect itself, not followed.
  status=$(c -D "$WORK/dl$id.h" -o /dev/null "$dl")
  expect_eq "$status" 302 "$tag: download (no -L) HTTP status"
  loc=$(hdr "$WORK/dl$id.h" location)
  [[ "$loc" == "${API%/api/v3}/_mirror/blobs/$id?"* ]] \
    || fail "$tag: Location is not the mirror's /_mirror/blobs/$id: $loc"
  ok "$tag: Location ${loc%%\?*}?…"
  expect_eq "$(hdr "$WORK/dl$id.h" x-cache)" MISS "$tag: first download X-Cache"

  # Followed, with the token (same host: curl keeps it; the mirror ignores it).
  status=$(c -L -D "$WORK/dlL$id.h" -o "$WORK/$id.zip" "$dl")
  [[ "$status" == 200 ]] || { tr -d '\r' < "$WORK/dlL$id.h" >&2; head -c 600 "$WORK/$id.zip" >&2; echo >&2; }
  expect_eq "$status" 200 "$tag: download -L final HTTP status"
  cache=$(awk 'BEGIN{IGNORECASE=1} /^x-cache:/ { sub(/\r$/, ""); print $2; exit }' "$WORK/dlL$id.h")
  [[ "$cache" == HIT || "$cache" == COALESCED ]] || fail "$tag: second download X-Cache '$cache', expected HIT or COALESCED"
  ok "$tag: second download X-Cache = $cache"
  expect_eq "$(hdr "$WORK/dlL$id.h" content-type)" application/zip "$tag: blob Content-Type"
  expect_eq "$(wc -c < "$WORK/$id.zip" | tr -d ' ')" "$size" "$tag: zip length = size_in_bytes"
  expect_eq "$(sha256sum "$WORK/$id.zip" | cut -d' ' -f1)" "$sha" "$tag: zip sha256"
  files=$(python3 -c '
import hashlib, json, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    assert z.testzip() is None, "bad CRC"
    print(json.dumps([{"name": i.filename, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                      for i in z.infolist() for d in [z.read(i)]], sort_keys=True))' "$WORK/$id.zip")
  expect_eq "$files" "$(fx "f['run_artifacts'][$i]['files']")" "$tag: zip entries"

  # A range of the blob, straight from the signed URL (no token needed).
  status=$(curl -sS ${EXTRA[@]+"${EXTRA[@]}"} --cacert "$MIRROR_CA_FILE" -r 100-199 -D "$WORK/range$id.h" -o "$WORK/range$id" -w '%{http_code}' "$loc")
  expect_eq "$status" 206 "$tag: blob Range 100-199 HTTP status"
  cmp -s "$WORK/range$id" <(tail -c +101 "$WORK/$id.zip" | head -c 100) || fail "$tag: Range bytes differ"
  ok "$tag: blob Range bytes match, Content-Range $(hdr "$WORK/range$id.h" content-range)"
done

# 5. No token, no zip.
id=$(fx 'f["run_artifacts"][0]["id"]')
status=$(curl -sS ${EXTRA[@]+"${EXTRA[@]}"} --cacert "$MIRROR_CA_FILE" -o /dev/null -w '%{http_code}' \
  "$API/repos/$OWNER/$REPO/actions/artifacts/$id/zip")
expect_eq "$status" 404 "download without a token (private repo) HTTP status"

echo "PASS: $CHECKS checks"
