#!/usr/bin/env bash
# A fresh JSON hit through the mirror against nginx's proxy_cache answering
# the same request from its cache, with access logs on both sides (and, for
# reference, off on both sides); then the json_cache bench's scenario 1 (the
# mirror against a bare hyper server sending the same bytes).
#
# Setup, all on loopback, each its own process:
#   simulator  (examples/ghes-sim --artifacts 100: a per_page=100 list is ~66 KB)
#   mirror     (release binary, revalidate = "when-stale", JSON log lines on
#               stderr to a file; a second one with log_level = "warn": no
#               access lines)
#   nginx      (Debian's nginx-light, proxy_cache keyed on Authorization,
#               Accept and the URI, 60 s like the answer's max-age; one server
#               with access_log to a file, one with access_log off)
#   wrk        -t2 -c32 (32 keep-alive connections), the same GET with the
#               same token against each.
# Rounds alternate nginx and mirror; the medians of requests/s and of server
# CPU time per request (user + system of the mirror process or of nginx's
# workers, from /proc: steadier than requests/s on a shared machine) and
# their ratios are printed. Every answer must be a 2xx (wrk counts the others and
# the script fails on any); before the runs each side must answer from its
# cache with the same status and body length.
#
# Run: bash benches/nginx.sh   (as root, or with sudo, to install nginx-light
# and wrk when missing). ROUNDS (3), SECONDS_PER_RUN (10), CONNS (32),
# THREADS (2) tune it; SKIP_JSON_BENCH=1 skips the json_cache part;
# MIRROR_BIN runs another build of the mirror (an older commit's, for a
# before/after).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
# Five-digit ports everywhere: the answers' URLs name a port (the mirror's
# own, or the simulator's through nginx), so the bodies have one length.
SIM_PORT=19090 BLOB_PORT=19091
MIRROR_LOG_PORT=19080 NGINX_LOG_PORT=19081 MIRROR_QUIET_PORT=19082 NGINX_QUIET_PORT=19083
TOKEN=ghp_simreader00000000000000000000000000
LIST=/repos/octo-org/public-repo/actions/artifacts?per_page=100

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if ! command -v nginx >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1; then
  timeout 600 $sudo apt-get update -qq
  timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    nginx-light wrk curl
fi

cargo build --release --locked --bin artifact-mirror --example ghes-sim
bin=target/release
mirror_bin=${MIRROR_BIN:-$bin/artifact-mirror}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/examples/ghes-sim" --api 127.0.0.1:$SIM_PORT --blob 127.0.0.1:$BLOB_PORT \
  --rate-limit 4000000000 --artifacts 100 >"$work/sim.out" 2>&1 &
pids+=($!)

mirror() { # port, log level, log file
  mkdir -p "$work/data-$1"
  "$mirror_bin" serve --upstream "http://127.0.0.1:$SIM_PORT/api/v3" \
    --listen "127.0.0.1:$1" --data-dir "$work/data-$1" --revalidate when-stale \
    --log-format json --log-level "$2" >/dev/null 2>"$3" &
  pids+=($!)
}
mirror $MIRROR_LOG_PORT info "$work/mirror-access.log"
mirror_log_pid=$!
mirror $MIRROR_QUIET_PORT warn "$work/mirror-quiet.log"
mirror_quiet_pid=$!

mkdir -p "$work/nginx"
# As root, nginx's workers would run as nobody, who cannot enter $work (0700).
workers_as=""
if [ "$(id -u)" -eq 0 ]; then workers_as="user root;"; fi
cat >"$work/nginx/nginx.conf" <<EOF
$workers_as
daemon off;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  proxy_cache_path $work/nginx/cache keys_zone=api:10m;
  upstream ghes { server 127.0.0.1:$SIM_PORT; keepalive 32; }
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_LOG_PORT;
    access_log $work/nginx-access.log;
    include $work/nginx/location.conf;
  }
  server {
    listen 127.0.0.1:$NGINX_QUIET_PORT;
    access_log off;
    include $work/nginx/location.conf;
  }
}
EOF
# GitHub marks authenticated answers 'private', which nginx never caches; a
# shared cache in front of GHES must key on the credential instead, as the
# mirror does.
cat >"$work/nginx/location.conf" <<EOF
location /api/v3/ {
  proxy_pass http://ghes;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_cache api;
  proxy_cache_key "\$request_uri \$http_authorization \$http_accept";
  proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;
  proxy_cache_valid 200 60s;
  proxy_cache_lock on;
  proxy_cache_use_stale updating;
  proxy_cache_background_update on;
  add_header X-Cache-Status \$upstream_cache_status;
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)

ready() {
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$1$2" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing answers on port $1" >&2
  cat "$work/nginx/error.log" >&2 2>/dev/null || true
  exit 1
}
ready $SIM_PORT "/api/v3$LIST"
for port in $MIRROR_LOG_PORT $MIRROR_QUIET_PORT; do ready $port /healthz; done
for port in $NGINX_LOG_PORT $NGINX_QUIET_PORT; do ready $port "/api/v3$LIST"; done

# Each side answers from its cache, with the same status and body length.
fetch() { # port, header to print
  curl -sS -D "$work/head" -o "$work/body" -H "Authorization: token $TOKEN" \
    "http://127.0.0.1:$1/api/v3$LIST"
  printf '%s %s %s bytes\n' "$(head -1 "$work/head" | tr -d '\r')" \
    "$(grep -i "^$2:" "$work/head" | tr -d '\r')" "$(wc -c <"$work/body")"
}
for port in $MIRROR_LOG_PORT $MIRROR_QUIET_PORT $NGINX_LOG_PORT $NGINX_QUIET_PORT; do
  fetch $port x-cache >/dev/null
done
check() { # port, header, expected answer
  local got
  got=$(fetch "$1" "$2")
  if [ "$got" != "$3" ]; then
    echo "port $1 answered '$got', expected '$3'" >&2
    exit 1
  fi
}
answer=$(fetch $MIRROR_LOG_PORT x-cache)
bytes=${answer##*: HIT }
echo "answer: GET /api/v3$LIST with a token, $bytes of JSON"
check $MIRROR_LOG_PORT x-cache "HTTP/1.1 200 OK x-cache: HIT $bytes"
check $MIRROR_QUIET_PORT x-cache "HTTP/1.1 200 OK x-cache: HIT $bytes"
check $NGINX_LOG_PORT x-cache-status "HTTP/1.1 200 OK X-Cache-Status: HIT $bytes"
check $NGINX_QUIET_PORT x-cache-status "HTTP/1.1 200 OK X-Cache-Status: HIT $bytes"

# CPU time (user + system, clock ticks) of the given processes, all threads.
ticks() { for pid in "$@"; do awk '{print $14 + $15}' "/proc/$pid/stat"; done | awk '{t += $1} END {print t}'; }
tick_us=$((1000000 / $(getconf CLK_TCK)))

run() { # port, pids serving it -> "requests/s server-CPU-µs-per-request"
  local out before after requests port=$1
  shift
  before=$(ticks "$@")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency \
    -H "Authorization: token $TOKEN" "http://127.0.0.1:$port/api/v3$LIST")
  after=$(ticks "$@")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
    echo "$out" >&2
    echo "errors against port $port" >&2
    exit 1
  fi
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v r="$requests" -v t=$((after - before)) -v us="$tick_us" \
    '/Requests\/sec/ {printf "%s %.2f\n", $2, t * us / r}' <<<"$out"
}
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$THREADS -c$CONNS, ${SECONDS_PER_RUN}s a run, $ROUNDS rounds alternating nginx/mirror; medians"
# Workers only: the cache loader is a child too, and exits after a minute.
nginx_workers=$(pgrep -P "$(cat "$work/nginx/nginx.pid")" -f "worker process" | tr '\n' ' ')
echo "server CPU per request: user + system time of the mirror process, or of nginx's workers, over the run"
for logs in on off; do
  if [ $logs = on ]; then
    m=$MIRROR_LOG_PORT n=$NGINX_LOG_PORT mpid=$mirror_log_pid
  else
    m=$MIRROR_QUIET_PORT n=$NGINX_QUIET_PORT mpid=$mirror_quiet_pid
  fi
  : >"$work/nginx.runs"
  : >"$work/mirror.runs"
  for round in $(seq 1 "$ROUNDS"); do
    # shellcheck disable=SC2086 # one pid a word
    run $n $nginx_workers >>"$work/nginx.runs"
    run $m "$mpid" >>"$work/mirror.runs"
    printf '  logs %s, round %s: nginx %s req/s %s µs, mirror %s req/s %s µs\n' $logs "$round" \
      $(tail -1 "$work/nginx.runs") $(tail -1 "$work/mirror.runs")
  done
  nginx_rps=$(cut -d' ' -f1 "$work/nginx.runs" | median)
  mirror_rps=$(cut -d' ' -f1 "$work/mirror.runs" | median)
  nginx_cpu=$(cut -d' ' -f2 "$work/nginx.runs" | median)
  mirror_cpu=$(cut -d' ' -f2 "$work/mirror.runs" | median)
  printf 'access logs %-3s: nginx %.0f req/s, mirror %.0f req/s: mirror/nginx %.2fx; CPU per request nginx %.1f µs, mirror %.1f µs: nginx/mirror %.2fx\n' \
    $logs "$nginx_rps" "$mirror_rps" "$(echo "$mirror_rps / $nginx_rps" | bc -l)" \
    "$nginx_cpu" "$mirror_cpu" "$(echo "$nginx_cpu / $mirror_cpu" | bc -l)"
done
echo "log lines written: mirror $(grep -c '"route":"list_repo_artifacts"' "$work/mirror-access.log"), nginx $(wc -l <"$work/nginx-access.log")"
dropped=$(curl -sS "http://127.0.0.1:$MIRROR_LOG_PORT/metrics" | awk '/^artifact_mirror_log_lines_dropped_total/ {print $2}')
echo "mirror log lines dropped (queue full): $dropped"

if [ "${SKIP_JSON_BENCH:-0}" != 1 ]; then
  echo
  echo "== json_cache bench (bare hyper baseline; revalidated hit against the simulator)"
  cargo bench --locked --bench json_cache
fi
