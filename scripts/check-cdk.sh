#!/usr/bin/env bash
# scripts/check-cdk.sh
#
# Offline check of the CDK app in deploy/cdk, with no AWS account, no credentials and no Docker
# engine (`cdk synth` only copies the image build context into cdk.out; `cdk deploy` builds it):
#   1. npm ci (exact versions from package-lock.json; needs the npm registry);
#   2. tsc: type-checks and compiles the app and the tests into dist/;
#   3. the tests (node's test runner): the task roles' exact grants, the values that matter,
#      the context keys, and cdk-nag's AWS Solutions rules;
#   4. npx cdk synth --quiet, as a user would run it, with every AWS_* variable unset: the app is
#      environment-agnostic, so nothing is looked up; cdk-nag (applied in bin/app.ts) fails the
#      synthesis on any finding that is not acknowledged with a reason;
#   5. cfn-lint on the synthesized template: any error or warning fails;
#   6. steps 4 and 5 again with -c chatBackplane=true -c queueConsumerMinTasks=0 (the optional
#      ElastiCache cache, and the worker's scale-from-zero policy and alarm), into a temporary
#      directory, so both shapes of the template are linted.
# cfn-lint comes from the deploy check's virtualenv (scripts/check-deploy.sh creates it; CI runs
# that first): ${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecs-task-protection/deploy-venv}.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
app=$root/deploy/cdk
venv=${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecs-task-protection/deploy-venv}
cfn_lint=$venv/bin/cfn-lint

say() { printf 'check-cdk: [%3ds] %s\n' "$SECONDS" "$*"; }

[[ -x $cfn_lint ]] || { say "no cfn-lint at $cfn_lint: run scripts/check-deploy.sh first (it creates the virtualenv)" >&2; exit 2; }
command -v node >/dev/null || { say "node is needed (22 LTS or later)" >&2; exit 2; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
(( node_major >= 20 )) || { say "node $(node --version) is too old: aws-cdk-lib needs 20 or later" >&2; exit 2; }
# The app asks for Node 22 LTS (package.json "engines"): Node 20 reached its end of life in April
# 2026 and gets no security fixes. aws-cdk-lib still runs on 20, so the check does too, and says so.
(( node_major >= 22 )) || say "warning: node $(node --version) is past its end of life; use Node 22 LTS or later (docs/DEPLOY.md)" >&2

# No AWS identity at all: prove that synthesis needs none. (The dummy account/region are AWS's
# documentation placeholders, only there in case a lookup were ever attempted: it would fail
# offline instead of reaching for real credentials.)
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^AWS_' || true)
export AWS_EC2_METADATA_DISABLED=true   # never ask an instance metadata service for credentials
export CDK_DEFAULT_ACCOUNT=123456789012 CDK_DEFAULT_REGION=us-east-1
# The CLI would otherwise check npm for a newer version and send usage telemetry.
export CDK_DISABLE_VERSION_CHECK=1 CDK_DISABLE_CLI_TELEMETRY=true
export CI=${CI:-true}

cd "$app"

say "npm ci"
npm ci --no-audit --no-fund --loglevel=error >/dev/null

say "tsc (type-check and compile)"
npx tsc

say "tests"
node --test --test-reporter=spec dist/test/*.test.js

say "cdk synth (no credentials, no Docker; cdk-nag fails it on an unacknowledged finding)"
rm -rf cdk.out
# A `docker` that always fails, first on PATH: synthesis must not need the Docker engine.
nodocker=$(mktemp -d)
backplane_out=$(mktemp -d)
trap 'rm -rf "$nodocker" "$backplane_out"' EXIT
printf '#!/bin/sh\necho "check-cdk: cdk synth called docker $*" >&2\nexit 1\n' >"$nodocker/docker"
chmod +x "$nodocker/docker"
PATH=$nodocker:$PATH npx cdk synth --quiet --no-notices --no-version-reporting

say "cfn-lint"
shopt -s nullglob
templates=(cdk.out/*.template.json)
(( ${#templates[@]} > 0 )) || { say "cdk synth wrote no template" >&2; exit 1; }
# No rule is ignored: errors and warnings both fail (informational findings are printed only).
"$cfn_lint" --non-zero-exit-code warning -- "${templates[@]}"

say "cdk synth -c chatBackplane=true -c queueConsumerMinTasks=0, cfn-lint"
PATH=$nodocker:$PATH npx cdk synth --quiet --no-notices --no-version-reporting \
  -c chatBackplane=true -c queueConsumerMinTasks=0 --output "$backplane_out"
backplane_templates=("$backplane_out"/*.template.json)
(( ${#backplane_templates[@]} > 0 )) || { say "cdk synth -c chatBackplane=true wrote no template" >&2; exit 1; }
grep -q '"AWS::ElastiCache::ServerlessCache"' "${backplane_templates[@]}" \
  || { say "cdk synth -c chatBackplane=true made no ServerlessCache" >&2; exit 1; }
grep -q '"StepScaling"' "${backplane_templates[@]}" \
  || { say "cdk synth -c queueConsumerMinTasks=0 made no scale-from-zero step policy" >&2; exit 1; }
"$cfn_lint" --non-zero-exit-code warning -- "${backplane_templates[@]}"

say "OK: ${templates[*]##*/} (and with chatBackplane=true, queueConsumerMinTasks=0)"
