#!/usr/bin/env bash
# render.sh CONFIG IMG: renders a kustomization with the image set to IMG, through a throwaway overlay, so
# `make deploy IMG=…` never edits a tracked file (no `kustomize edit set image` churn in git).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${1:?usage: render.sh CONFIG IMG}"
img="${2:?usage: render.sh CONFIG IMG}"
case "$img" in
  *@*) name="${img%@*}"; digest="${img#*@}"; tag="" ;;
  *:*) name="${img%:*}"; tag="${img##*:}"; digest=""
       # A registry port (host:5000/repo) is not a tag.
       if [[ "$tag" == */* ]]; then name="$img"; tag="latest"; fi ;;
  *) name="$img"; tag="latest"; digest="" ;;
esac
# Kustomize refuses absolute resource paths, so the overlay lives inside the tree (tmp/ is git-ignored).
mkdir -p "$root/tmp"
tmp="$(mktemp -d "$root/tmp/render.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "- ../../$config"
  echo "images:"
  echo "- name: ghcr.io/kilo-org/kilo-session-operator"
  echo "  newName: $name"
  [[ -n "$tag" ]] && echo "  newTag: \"$tag\""
  [[ -n "$digest" ]] && echo "  digest: \"$digest\""
} >"$tmp/kustomization.yaml"
kubectl kustomize "$tmp"
