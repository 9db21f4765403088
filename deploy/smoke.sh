#!/usr/bin/env bash
# Smoke test of the serving image: build it with a plain `docker build .` (so the legacy builder's default
# target is checked too), run it as a production pod would (read-only root, tmpfs /tmp, an arbitrary uid,
# an API key) on a free loopback port, and check what a deployment relies on: ready within READY_BUDGET_S
# of start, the key enforced, one generation, a request id, the metrics, the Docker health check, a clean
# stop within STOP_BUDGET_S, and the image size within MAX_IMAGE_MB.
#
#   bash deploy/smoke.sh                    # or: make docker-smoke
#   SKIP_BUILD=1 IMAGE=charlm:latest bash deploy/smoke.sh
#   MODELS_DIR=/path/to/models bash deploy/smoke.sh   # mount these over the baked-in /models
#   BUILD_TORCH=1 bash deploy/smoke.sh      # also build deploy/torch.Dockerfile on top and import torch in it
#   CHECK_SECURITY=0                        # skip the API key and x-request-id checks
#   CHECK_DRAIN=0                           # skip the check that a request in flight survives `docker stop`
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
RUN_USER=${RUN_USER:-12345}
CHECK_SECURITY=${CHECK_SECURITY:-1}
CHECK_DRAIN=${CHECK_DRAIN:-1}
BUILD_TORCH=${BUILD_TORCH:-0}
TORCH_IMAGE=${TORCH_IMAGE:-charlm:smoke-torch}
API_KEY=${API_KEY:-smoke-$(python3 -c 'import secrets; print(secrets.token_hex(16))')}
export API_KEY

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
# http METHOD URL [JSON_BODY] -> prints "STATUS REQUEST_ID<newline>BODY"; never fails on HTTP errors.
# Sends `Authorization: Bearer $API_KEY` unless NO_KEY=1.
http() {
  python3 - "$@" <<'PY'
import os, sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
headers = {"Content-Type": "application/json"}
if os.environ.get("NO_KEY") != "1":
    headers["Authorization"] = f"Bearer {os.environ['API_KEY']}"
req = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, rid, body = r.status, r.headers.get("x-request-id"), r.read()
except urllib.error.HTTPError as e:
    status, rid, body = e.code, e.headers.get("x-request-id"), e.read()
except OSError as e:
    status, rid, body = 0, None, str(e).encode()
print(status, rid or "-")
sys.stdout.write(body.decode(errors="replace"))
PY
}
status_of() { local first=${1%%$'\n'*}; echo "${first%% *}"; }
request_id_of() { local first=${1%%$'\n'*}; echo "${first#* }"; }

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  step "build $IMAGE (docker build ., no --target)"
  docker build -t "$IMAGE" .
fi
if [[ $BUILD_TORCH == 1 ]]; then
  step "build $TORCH_IMAGE (deploy/torch.Dockerfile on $IMAGE)"
  docker build -f deploy/torch.Dockerfile --build-arg BASE_IMAGE="$IMAGE" \
    --build-arg TORCH_PIP_ARGS="${TORCH_PIP_ARGS:-}" -t "$TORCH_IMAGE" .
  if versions=$(docker run --rm --read-only --user "$RUN_USER" --entrypoint python "$TORCH_IMAGE" \
    -c 'import torch, onnxruntime, service; print(torch.__version__, onnxruntime.__version__)'); then
    ok "$TORCH_IMAGE imports torch and onnxruntime: $versions"
  else
    fail "$TORCH_IMAGE cannot import torch"
  fi
  torch_mb=$(($(docker image inspect -f '{{.Size}}' "$TORCH_IMAGE") / 1000000))
  ok "image $TORCH_IMAGE is $torch_mb MB"
fi

step "image size"
size_bytes=$(docker image inspect -f '{{.Size}}' "$IMAGE")
size_mb=$((size_bytes / 1000000))
if ((size_mb <= MAX_IMAGE_MB)); then ok "image $IMAGE is $size_mb MB (budget $MAX_IMAGE_MB MB)"; else fail "image $IMAGE is $size_mb MB, over $MAX_IMAGE_MB MB"; fi

step "run"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
t_start=$(now)
# As in deploy/k8s: nothing writable but a tmpfs /tmp, a uid the image has never heard of, and a key.
run_args=(-d -p "127.0.0.1:$port:8000" --read-only --tmpfs /tmp --user "$RUN_USER" -e CHARLM_API_KEY="$API_KEY")
if [[ -n ${MODELS_DIR:-} ]]; then run_args+=(-v "$(realpath "$MODELS_DIR"):/models:ro"); fi
cid=$(docker run "${run_args[@]}" "$IMAGE")
echo "container ${cid:0:12} on $base (read-only root, tmpfs /tmp, uid $RUN_USER)"

step "wait for /ready"
ready=""
deadline=$((SECONDS + READY_WAIT_S))
while ((SECONDS < deadline)); do
  if [[ $(docker inspect -f '{{.State.Running}}' "$cid") != true ]]; then
    fail "container exited early"
    break
  fi
  answer=$(NO_KEY=1 http GET "$base/ready")  # the probes need no key
  if [[ $(status_of "$answer") == 200 ]]; then
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

if [[ $CHECK_SECURITY == 1 ]]; then
  step "API key"
  for path in /v1/models /metrics; do
    status=$(status_of "$(NO_KEY=1 http GET "$base$path")")
    if [[ $status == 401 ]]; then ok "GET $path without the key: 401"; else fail "GET $path without the key: $status, not 401"; fi
  done
  status=$(status_of "$(NO_KEY=1 http GET "$base/health")")
  if [[ $status == 200 ]]; then ok "GET /health without the key: 200"; else fail "GET /health without the key: $status"; fi
fi

step "POST /v1/generate"
reply=$(http POST "$base/v1/generate" "{\"model\": \"$MODEL\", \"n\": 3}")
status=$(status_of "$reply")
request_id=$(request_id_of "$reply")
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
if [[ $CHECK_SECURITY == 1 ]]; then
  if [[ $request_id != - ]]; then ok "x-request-id: $request_id"; else fail "no x-request-id header on the answer"; fi
fi

step "GET /metrics"
metrics=$(http GET "$base/metrics")
if [[ $(status_of "$metrics") == 200 ]] && grep -q '^charlm_requests_total{' <<<"$metrics"; then
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
inflight_pid=""
if [[ $CHECK_DRAIN == 1 ]]; then
  # A long streamed generation, started just before the stop: the drain must let it finish.
  python3 - "$base" "$API_KEY" >/tmp/charlm-smoke-inflight.$$ 2>&1 <<'PY' &
import json, sys, urllib.request
base, key = sys.argv[1], sys.argv[2]
body = json.dumps({"model": "shakespeare-gpt", "prompt": "ROMEO:\n", "max_new_tokens": 2000, "stream": True}).encode()
req = urllib.request.Request(f"{base}/v1/generate", data=body, method="POST",
                             headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
with urllib.request.urlopen(req, timeout=60) as r:
    events = [ln for ln in r.read().decode().splitlines() if ln.startswith("data: ") and ln != "data: [DONE]"]
last = json.loads(events[-1][6:]) if events else {}
reason = (last.get("choices") or [{}])[0].get("finish_reason") or ("error" if "error" in last else None)
print(r.status, len(events), reason)
PY
  inflight_pid=$!
  sleep 0.3
fi
t_stop=$(now)
docker stop -t 30 "$cid" >/dev/null
stopped=$(elapsed "$t_stop")
if [[ -n $inflight_pid ]]; then
  if wait "$inflight_pid" && read -r st n_events reason </tmp/charlm-smoke-inflight.$$ && [[ $st == 200 && ($reason == stop || $reason == length) ]]; then
    ok "the request in flight finished during the stop: $n_events events, finish_reason $reason"
  else
    fail "the request in flight was cut: $(tail -n 2 /tmp/charlm-smoke-inflight.$$)"
  fi
  rm -f /tmp/charlm-smoke-inflight.$$
fi
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
