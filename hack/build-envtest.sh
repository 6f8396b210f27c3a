#!/usr/bin/env bash
# Builds the envtest control plane (etcd + kube-apiserver) from source through the Go module proxy.
#
# No prebuilt download (setup-envtest, GitHub releases) is reachable from the machines this project is built on,
# so we compile the exact releases the suites are written against. The result lands in bin/k8s/ and a copy is
# kept in a per-user cache, so a fresh clone on the same machine (as CI is) links instead of rebuilding.
set -euo pipefail

ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/bin/k8s}"
cache="${KILO_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kilo-session-operator/k8s-${KUBE_VERSION}-etcd-${ETCD_VERSION}}"

log() { printf '[envtest] %s\n' "$*" >&2; }

have() { [ -x "$1/etcd" ] && [ -x "$1/kube-apiserver" ]; }

if have "$dest"; then
  log "control plane present in $dest (etcd $ETCD_VERSION, kube-apiserver $KUBE_VERSION)"
  exit 0
fi
mkdir -p "$dest"
if have "$cache"; then
  log "copying cached control plane from $cache"
  cp "$cache/etcd" "$cache/kube-apiserver" "$dest/"
  exit 0
fi

proxy="$(go env GOPROXY | cut -d, -f1)"
if [ "$proxy" != "off" ] && [ "$proxy" != "direct" ]; then
  if ! curl -fsS --max-time 20 -o /dev/null "$proxy/k8s.io/kubernetes/@v/${KUBE_VERSION}.info"; then
    log "ERROR: cannot reach the Go module proxy ($proxy) to fetch k8s.io/kubernetes@${KUBE_VERSION}."
    log "The envtest control plane is built from source; check GOPROXY and network access, or place etcd and"
    log "kube-apiserver binaries in $dest yourself."
    exit 1
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log "building etcd ${ETCD_VERSION} (1/2)"
mkdir -p "$work/etcd"
(
  cd "$work/etcd"
  go mod init envtest-etcd >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >/dev/null 2>&1
  go build -trimpath -ldflags='-s -w' -o "$dest/etcd" go.etcd.io/etcd/server/v3
)

log "building kube-apiserver ${KUBE_VERSION} (2/2; several minutes the first time)"
mkdir -p "$work/kas"
(
  cd "$work/kas"
  go mod init envtest-kube-apiserver >/dev/null 2>&1
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging paths, which a
  # consumer cannot use: replace each one it names with the published release of the same version.
  modfile="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  staging="$(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$modfile" | sort -u)"
  if [ -z "$staging" ]; then
    log "ERROR: could not read the staging modules from k8s.io/kubernetes@${KUBE_VERSION}'s go.mod"
    exit 1
  fi
  {
    echo "require k8s.io/kubernetes ${KUBE_VERSION}"
    for m in $staging; do echo "replace $m => $m ${STAGING_VERSION}"; done
  } >> go.mod
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  go mod tidy >/dev/null 2>&1 || true
  go build -trimpath -ldflags='-s -w' -o "$dest/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
)

mkdir -p "$cache"
cp "$dest/etcd" "$dest/kube-apiserver" "$cache/"
log "done: $dest (cached in $cache)"
