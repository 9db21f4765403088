#!/usr/bin/env bash
# Smoke test of the serving image: build it, run it on a free loopback port, and check what a deployment
# relies on: ready within READY_BUDGET_S of start, one generation, the metrics, the Docker health check,
# a clean stop within STOP_BUDGET_S, and the image size within MAX_IMAGE_MB.
#
#   bash deploy/smoke.sh                    # or: make docker-smoke
#   SKIP_BUILD=1 IMAGE=charlm:latest bash deploy/smoke.sh
#   MODELS_DIR=/path/to/models bash deploy/smoke.sh   # mount these over the baked-in /models
#
# Needs docker and python3 on the host (no curl). The container is removed on exit; the image is kept
# (tagged $IMAGE) so that the next build hits the layer cache.
set -euo pipefail
cd "$(dirname "$(realpath "${BASH_SOURCE[0]}")")/.."

IMAGE=${IMAGE:-charlm:smoke}
READY_BUDGET_S=${READY_BUDGET_S:-10}
READY_WAIT_S=${READY_WAIT_S:-60}
STOP_BUDGET_S=${STOP_BUDGET_S:-10}
MAX_IMAGE_MB=${MAX_IMAGE_MB:-450}
MODEL=${MODEL:-names-gpt}

cid=""
failures=0
cleanup() {
  if [[ -n $cid ]]; then docker rm -f "$cid" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*" >&2
  failures=$((failures + 1))
}
now() { python3 -c 'import time; print(time.monotonic())'; }
elapsed() { python3 -c "import sys, time; print(f'{time.monotonic() - float(sys.argv[1]):.2f}')" "$1"; }
# http METHOD URL [JSON_BODY] -> prints "STATUS<newline>BODY"; never fails on HTTP errors.
http() {
  python3 - "$@" <<'PY'
import sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError as e:
    status, body = 0, str(e).encode()
print(status)
sys.stdout.write(body.decode(errors="replace"))
PY
}

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  step "build $IMAGE (target serve)"
  # --target serve: the legacy builder (docker without buildx) would otherwise build the torch stage too.
  docker build --target serve -t "$IMAGE" .
fi

step "image size"
size_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
size_mb=$((size_bytes / 1000000))
if ((size_mb <= MAX_IMAGE_MB)); then ok "image $IMAGE is $size_mb MB (budget $MAX_IMAGE_MB MB)"; else fail "image $IMAGE is $size_mb MB, over $MAX_IMAGE_MB MB"; fi

step "run"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
t_start=$(now)
run_args=(-d -p "127.0.0.1:$port:8000")
if [[ -n ${MODELS_DIR:-} ]]; then run_args+=(-v "$(realpath "$MODELS_DIR"):/models:ro"); fi
cid=$(docker run "${run_args[@]}" "$IMAGE")
echo "container ${cid:0:12} on $base"

step "wait for /ready"
ready=""
deadline=$((SECONDS + READY_WAIT_S))
while ((SECONDS < deadline)); do
  if [[ $(docker inspect -f '{{.State.Running}}' "$cid") != true ]]; then
    fail "container exited early"
    break
  fi
  answer=$(http GET "$base/ready")  # status line first; not piped to head, which would break the pipe
  if [[ ${answer%%$'\n'*} == 200 ]]; then
    ready=$(elapsed "$t_start")
    break
  fi
  sleep 0.2
done
if [[ -z $ready ]]; then
  fail "/ready did not answer 200 within ${READY_WAIT_S} s"
  docker logs --tail 50 "$cid" >&2 || true
  exit 1
fi
if python3 -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$ready" "$READY_BUDGET_S"; then
  ok "ready ${ready} s after docker run (budget ${READY_BUDGET_S} s)"
else
  fail "ready only ${ready} s after docker run (budget ${READY_BUDGET_S} s)"
fi

step "POST /v1/generate"
reply=$(http POST "$base/v1/generate" "{\"model\": \"$MODEL\", \"n\": 3}")
status=$(head -n 1 <<<"$reply")
body=$(tail -n +2 <<<"$reply")
if [[ $status == 200 ]] && python3 -c '
import json, sys
choices = json.loads(sys.argv[1])["choices"]
assert len(choices) == 3, choices
print("     ", [c.get("text") for c in choices])
' "$body"; then
  ok "200 with 3 choices"
else
  fail "generate answered $status: ${body:0:300}"
fi

step "GET /metrics"
metrics=$(http GET "$base/metrics")
if [[ $(head -n 1 <<<"$metrics") == 200 ]] && grep -q '^charlm_requests_total{' <<<"$metrics"; then
  ok "charlm_requests_total is exported"
else
  fail "no charlm_requests_total sample in /metrics"
fi

step "Docker health check"
health=""
deadline=$((SECONDS + 40))
while ((SECONDS < deadline)); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$cid")
  [[ $health == starting ]] || break
  sleep 1
done
if [[ $health == healthy ]]; then ok "healthy"; else fail "health status is '$health'"; fi

step "docker stop"
t_stop=$(now)
docker stop -t 30 "$cid" >/dev/null
stopped=$(elapsed "$t_stop")
code=$(docker inspect -f '{{.State.ExitCode}}' "$cid")
if python3 -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$stopped" "$STOP_BUDGET_S" && [[ $code != 137 ]]; then
  ok "stopped in ${stopped} s, exit code $code (budget ${STOP_BUDGET_S} s)"
else
  fail "stop took ${stopped} s, exit code $code (budget ${STOP_BUDGET_S} s; 137 means it had to be killed)"
  docker logs --tail 30 "$cid" >&2 || true
fi

echo
if ((failures)); then
  echo "smoke: $failures check(s) failed"
  exit 1
fi
echo "smoke: all checks passed (image $size_mb MB, ready ${ready} s, stop ${stopped} s)"
