#!/usr/bin/env bash
# The GitHub CLI (gh), unmodified, through the mirror over TLS.
#
# Run by the `gh` test in tests/clients.rs, which sets FIXTURE, GH_HOST
# (127.0.0.1:PORT, the mirror), SSL_CERT_FILE (the test CA), GH_CONFIG_DIR
# (a fresh directory), GH_NO_UPDATE_NOTIFIER, GH_PROMPT_DISABLED and NO_COLOR.
#
# For both ways of giving gh the token — (a) hosts.yml written the way
# `gh auth login --hostname HOST --with-token` writes it, and (b)
# GH_ENTERPRISE_TOKEN with no hosts.yml — it checks:
#   1. `gh api --paginate …/actions/artifacts?per_page=2` returns exactly
#      all_artifact_ids, in order (Link pagination through the mirror);
#   2. `gh run download RUN -R HOST/owner/repo -D dir` extracts every run
#      artifact to dir/<name>/<file> with the expected size and sha256;
#   3. `gh run download RUN -R HOST/owner/repo -n NAME -D dir2` extracts that
#      one artifact (gh puts a single named artifact straight into dir2).
# Exits non-zero with a message on the first mismatch.
set -euo pipefail

die() { echo "gh.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "ok   $*"; }

: "${FIXTURE:?FIXTURE must name the fixture JSON}"
: "${GH_HOST:?GH_HOST must be the mirror host}"
: "${GH_CONFIG_DIR:?GH_CONFIG_DIR must be set}"
command -v gh >/dev/null || die "gh is not installed (apt-get install gh)"
command -v python3 >/dev/null || die "python3 is needed to read the fixture"

# Never let the caller's environment pick another host or token.
unset GH_TOKEN GITHUB_TOKEN GH_ENTERPRISE_TOKEN GITHUB_ENTERPRISE_TOKEN GH_REPO
export GH_NO_UPDATE_NOTIFIER=1 GH_PROMPT_DISABLED=1 NO_COLOR=1 GH_PAGER=cat PAGER=cat
export GIT_TERMINAL_PROMPT=0

fx() { python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"f": f}))' "$FIXTURE" "$1"; }

HOST=$(fx 'f["host"]')
OWNER=$(fx 'f["owner"]')
REPO=$(fx 'f["repo"]')
RUN_ID=$(fx 'f["run_id"]')
TOKEN=$(fx 'f["reader_token"]')
WORK=$(fx 'f["work_dir"]')
EXPECTED_IDS=$(fx '",".join(str(i) for i in f["all_artifact_ids"])')
NAMES=$(fx '"\n".join(a["name"] for a in f["run_artifacts"])')
ONE_NAME=$(fx 'f["run_artifacts"][1]["name"]')

[ "$HOST" = "$GH_HOST" ] || die "GH_HOST=$GH_HOST but the fixture's host is $HOST"
echo "gh: $(gh --version | head -1)"
echo "mirror: https://$HOST/api/v3/ (repo $OWNER/$REPO, run $RUN_ID)"

# Checks dir/<name>/<file> (or dir/<file> when flat=1) against the fixture
# for the listed artifact names (newline-separated), and that nothing else
# was extracted.
check_files() {
    local dir=$1 names=$2 flat=$3
    python3 - "$FIXTURE" "$dir" "$names" "$flat" <<'PY'
import hashlib, json, os, sys
fixture, root, names, flat = sys.argv[1], sys.argv[2], sys.argv[3].split("\n"), sys.argv[4] == "1"
f = json.load(open(fixture))
by_name = {a["name"]: a for a in f["run_artifacts"]}
expected = set()
for name in names:
    a = by_name[name]
    for file in a["files"]:
        rel = file["name"] if flat else os.path.join(name, file["name"])
        expected.add(rel)
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            sys.exit(f"{path}: missing (artifact {name}, id {a['id']})")
        data = open(path, "rb").read()
        if len(data) != file["size"]:
            sys.exit(f"{path}: {len(data)} bytes, expected {file['size']}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != file["sha256"]:
            sys.exit(f"{path}: sha256 {digest}, expected {file['sha256']}")
        print(f"     {rel}: {len(data)} bytes, sha256 {digest[:16]}… matches")
found = set()
for dirpath, _, files in os.walk(root):
    for name in files:
        found.add(os.path.relpath(os.path.join(dirpath, name), root))
extra = found - expected
if extra:
    sys.exit(f"{root}: unexpected files {sorted(extra)}")
PY
}

run_mode() {
    local mode=$1 out ids dir
    echo
    echo "== token mode: $mode"

    # 1. gh api --paginate: every page through the mirror's rewritten Link.
    out="$WORK/gh-$mode-list.json"
    GH_REPO="$HOST/$OWNER/$REPO" gh api --paginate \
        "repos/{owner}/{repo}/actions/artifacts?per_page=2" >"$out" \
        || die "[$mode] gh api --paginate failed"
    # --paginate without --jq prints the pages' JSON bodies one after another.
    ids=$(python3 - "$out" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
dec, pos, ids, pages = json.JSONDecoder(), 0, [], 0
while True:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text):
        break
    page, pos = dec.raw_decode(text, pos)
    pages += 1
    ids += [a["id"] for a in page["artifacts"]]
print(",".join(map(str, ids)), pages, file=sys.stdout)
PY
)
    local pages=${ids##* }
    ids=${ids% *}
    [ "$ids" = "$EXPECTED_IDS" ] \
        || die "[$mode] gh api --paginate ids: got [$ids], expected [$EXPECTED_IDS]"
    [ "$pages" -gt 1 ] || die "[$mode] gh api --paginate fetched $pages page(s); per_page=2 needs Link pagination"
    ok "[$mode] gh api --paginate: $pages pages, ids [$ids] = all_artifact_ids"

    # 2. gh run download RUN: every artifact of the run, each in dir/<name>/.
    dir="$WORK/gh-$mode-all"
    rm -rf "$dir"
    gh run download "$RUN_ID" -R "$HOST/$OWNER/$REPO" -D "$dir" \
        || die "[$mode] gh run download $RUN_ID failed"
    check_files "$dir" "$NAMES" 0 || die "[$mode] gh run download $RUN_ID: wrong files in $dir"
    ok "[$mode] gh run download $RUN_ID -D dir: $(echo "$NAMES" | wc -l) artifacts, sizes and sha256 match"

    # 3. gh run download RUN -n NAME: one artifact, extracted flat into dir2.
    dir="$WORK/gh-$mode-one"
    rm -rf "$dir"
    gh run download "$RUN_ID" -R "$HOST/$OWNER/$REPO" -n "$ONE_NAME" -D "$dir" \
        || die "[$mode] gh run download $RUN_ID -n $ONE_NAME failed"
    check_files "$dir" "$ONE_NAME" 1 || die "[$mode] gh run download -n $ONE_NAME: wrong files in $dir"
    ok "[$mode] gh run download $RUN_ID -n $ONE_NAME -D dir2: size and sha256 match"
}

# (a) The token in gh's hosts config, as `gh auth login --hostname HOST
# --with-token` stores it when no keyring is in use.
mkdir -p "$GH_CONFIG_DIR"
cat >"$GH_CONFIG_DIR/hosts.yml" <<EOF
$HOST:
    oauth_token: $TOKEN
    git_protocol: https
EOF
chmod 600 "$GH_CONFIG_DIR/hosts.yml"
run_mode hosts-yml

# (b) GH_ENTERPRISE_TOKEN alone, no hosts.yml. gh then attaches the token to
# every request to the host, the mirror's blob URL included: the mirror must
# ignore it there.
rm -f "$GH_CONFIG_DIR/hosts.yml"
export GH_ENTERPRISE_TOKEN=$TOKEN
run_mode env-token
unset GH_ENTERPRISE_TOKEN

echo
echo "gh.sh: all checks passed for both token modes"
