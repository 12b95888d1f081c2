#!/usr/bin/env bash
# Protection under a trickle of jobs (issue 17): one job of 100 ms every 8 s, on moto's SQS, while
# the worker's /status is read once a second for 50 s. Prints how many of the 50 samples found the
# task protected. Extra settings for the worker go in the environment, e.g.
#   scripts/trickle.sh                                   # the defaults
#   PROTECTION_MAINTAIN_PERCENT=0 scripts/trickle.sh     # no hold-over: the job and its 2 s grace
# Needs moto_server (or MOTO_SERVER) and a release build of the worker:
#   cargo build --release -p queue-consumer
set -euo pipefail
cd "$(dirname "$0")/.."
moto=${MOTO_SERVER:-moto_server}
worker=${WORKER_BIN:-target/release/queue-consumer}
samples=${SAMPLES:-50}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
moto_port=$(free_port); status_port=$(free_port)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$moto" -H 127.0.0.1 -p "$moto_port" >/dev/null 2>&1 & pids+=($!)
export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port AWS_REGION=us-east-1 \
       AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
for _ in $(seq 50); do curl -s -o /dev/null "$AWS_ENDPOINT_URL" && break; sleep 0.1; done
QUEUE_URL=$("$worker" create-queue "trickle-$$")
export QUEUE_URL
STATUS_PORT=$status_port STATUS_BIND_ADDRESS=127.0.0.1 RUST_LOG=warn "$worker" & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$status_port/status" && break; sleep 0.1; done
( while :; do "$worker" send 100 >/dev/null; sleep 8; done ) & pids+=($!)
protected=0
for _ in $(seq "$samples"); do
  sleep 1
  state=$(curl -s "http://127.0.0.1:$status_port/status" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["protection"]["state"])')
  [[ $state == protected ]] && protected=$((protected + 1))
done
echo "protected in $protected of $samples one-second samples (one 100 ms job every 8 s)"
