# shellcheck shell=bash
# Local control plane for `make demo`: etcd and kube-apiserver from bin/k8s on loopback, no kubelet, no
# controller-manager. Sourced by demo.sh; every function expects WORK (a private temp dir) and ROOT to be set.
#
# What it provides, and why each piece is there:
#  - a CA, the API server's serving certificate and an admin client certificate (O=system:masters), so kubectl
#    and the operator talk to a real, authenticated, RBAC-enforcing API server;
#  - a service-account signing key pair, so TokenRequest and TokenReview work: the operator's components run
#    with ServiceAccount tokens bound by config/rbac, which proves the manifests' RBAC is sufficient;
#  - the default admission chain (MutatingAdmissionWebhook included), so the real webhook mutates real pods.
# The ServiceAccount admission plugin is off because no controller-manager creates the `default` ServiceAccount.

# alloc_port VAR: a free TCP port on 127.0.0.1, below Linux's ephemeral range so no outgoing connection holds it.
alloc_port() {
  local p i
  for i in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 12000 ))
    [[ " ${DEMO_PORTS:-} " == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      DEMO_PORTS="${DEMO_PORTS:-} $p"
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  echo "could not find a free loopback port" >&2
  return 1
}

# start_bg NAME CMD...: runs CMD in the background with its output in $WORK/logs/NAME.log and records the pid.
start_bg() {
  local name=$1; shift
  mkdir -p "$WORK/logs"
  # setsid: each component gets its own process group, so cleanup can stop it and anything it spawned (where
  # setsid exists; elsewhere the process itself is stopped).
  if command -v setsid >/dev/null; then
    setsid "$@" >"$WORK/logs/$name.log" 2>&1 < /dev/null &
  else
    "$@" >"$WORK/logs/$name.log" 2>&1 < /dev/null &
  fi
  echo "$! $name" >>"$WORK/pids"
  # pids.all outlives cleanup, so a test can prove every process is gone.
  echo "$! $name" >>"$WORK/pids.all"
}

# running PID: the process exists and is not a zombie (an exited child its parent has not reaped yet).
running() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]]
}

# ours PID: the process is running and is still one this demo started (its command line names $WORK), so that
# `demo.sh stop` on an old KEEP=1 work dir never signals an unrelated process that has since reused the pid.
# Without /proc (macOS) the pid file is trusted.
ours() {
  running "$1" || return 1
  [[ -r "/proc/$1/cmdline" ]] || return 0
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$WORK"
}

# stop_group TIMEOUT NAME=PID...: SIGTERM to each process (and its process group), then waits up to TIMEOUT
# seconds for all of them to exit; whatever is left is killed, and waited for.
stop_group() {
  local timeout=$1; shift
  local entry pid alive deadline
  local -a pids=()
  for entry in "$@"; do
    pid=${entry#*=}
    ours "$pid" || continue
    pids+=("$pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  (( ${#pids[@]} )) || return 0
  deadline=$(( SECONDS + timeout ))
  while (( SECONDS < deadline )); do
    alive=0
    for pid in "${pids[@]}"; do running "$pid" && alive=1; done
    (( alive )) || return 0
    sleep 0.2
  done
  for entry in "$@"; do
    pid=${entry#*=}
    if running "$pid"; then
      echo "${entry%%=*} (pid $pid) did not exit within ${timeout}s of SIGTERM; killing it" >&2
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  deadline=$(( SECONDS + 5 ))
  while (( SECONDS < deadline )); do
    alive=0
    for pid in "${pids[@]}"; do running "$pid" && alive=1; done
    (( alive )) || return 0
    sleep 0.1
  done
}

# stop_all: stops every process start_bg started, in dependency order, and returns once all are gone: first the
# components (manager, egress, upstream), which talk to the API server; then kube-apiserver, waiting for it to
# exit; then etcd. Stopping etcd together with the API server would leave the API server retrying its storage
# until it is killed.
stop_all() {
  [[ -f "$WORK/pids" ]] || return 0
  local pid name
  local -a components=() apiserver=() etcd=()
  while read -r pid name; do
    [[ -n "$pid" ]] || continue
    case "$name" in
      kube-apiserver) apiserver+=("$name=$pid") ;;
      etcd) etcd+=("$name=$pid") ;;
      *) components+=("$name=$pid") ;;
    esac
  done <"$WORK/pids"
  stop_group 15 "${components[@]}"
  stop_group 20 "${apiserver[@]}"
  stop_group 10 "${etcd[@]}"
  wait 2>/dev/null || true # reap our children so none lingers as a zombie
  rm -f "$WORK/pids"
}

# alive NAME: fails with the tail of its log when the component has exited.
alive() {
  local pid name
  while read -r pid name; do
    if [[ "$name" == "$1" ]] && ! running "$pid"; then
      echo "$1 exited; last lines of $WORK/logs/$1.log:" >&2
      tail -n 30 "$WORK/logs/$1.log" >&2
      return 1
    fi
  done <"$WORK/pids"
}

# wait_for DESCRIPTION TIMEOUT_SECONDS COMPONENT CMD...: polls CMD until it succeeds, failing early if the
# component it waits on has died.
wait_for() {
  local what=$1 timeout=$2 comp=$3; shift 3
  local deadline=$(( SECONDS + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]]; then alive "$comp" || return 1; fi
    if (( SECONDS >= deadline )); then
      echo "timed out after ${timeout}s waiting for $what" >&2
      [[ -n "$comp" && -f "$WORK/logs/$comp.log" ]] && tail -n 30 "$WORK/logs/$comp.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# sign_cert NAME CN [O] [EXT]: a key and a certificate signed by the demo CA.
sign_cert() {
  local name=$1 cn=$2 org=${3:-} ext=${4:-}
  local subj="/CN=$cn"
  [[ -n "$org" ]] && subj="/O=$org$subj"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}

make_pki() {
  PKI="$WORK/pki"
  mkdir -p "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=kilo-demo-ca" -days 2 -sha256 -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  sign_cert apiserver kube-apiserver "" \
    "$(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature')"
  sign_cert admin kilo-demo-admin system:masters \
    "$(printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature')"
  # Service-account token signing (ES256).
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
  openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
}

start_controlplane() {
  local bin="$ROOT/bin/k8s"
  alloc_port ETCD_PORT; alloc_port ETCD_PEER_PORT; alloc_port API_PORT
  make_pki
  start_bg etcd "$bin/etcd" \
    --name demo --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for "etcd" 60 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  start_bg kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --cert-dir "$WORK/apiserver" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer "https://kubernetes.default.svc" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --api-audiences "https://kubernetes.default.svc" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC \
    --disable-admission-plugins ServiceAccount \
    --allow-privileged=true \
    --endpoint-reconciler-type none
  KUBECONFIG="$WORK/kubeconfig"
  export KUBECONFIG
  kubectl config set-cluster demo --server "https://127.0.0.1:$API_PORT" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  kubectl config set-credentials admin --client-certificate "$PKI/admin.crt" \
    --client-key "$PKI/admin.key" --embed-certs >/dev/null
  kubectl config set-context demo --cluster demo --user admin >/dev/null
  kubectl config use-context demo >/dev/null
  wait_for "kube-apiserver /readyz" 120 kube-apiserver kubectl get --raw /readyz
}

# sa_kubeconfig NAMESPACE SERVICEACCOUNT FILE: a kubeconfig that authenticates as the ServiceAccount with a
# bound token, the way the component would run in a cluster.
sa_kubeconfig() {
  local ns=$1 sa=$2 file=$3 token
  token=$(kubectl -n "$ns" create token "$sa" --duration 24h)
  KUBECONFIG="$file" kubectl config set-cluster demo --server "https://127.0.0.1:$API_PORT" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  KUBECONFIG="$file" kubectl config set-credentials "$sa" --token "$token" >/dev/null
  KUBECONFIG="$file" kubectl config set-context demo --cluster demo --user "$sa" --namespace "$ns" >/dev/null
  KUBECONFIG="$file" kubectl config use-context demo >/dev/null
}
