#!/usr/bin/env bash
# Build the taskproc image from the Dockerfile: with docker when a docker engine answers, otherwise with
# podman (and then the base image comes from scripts/base-image.sh when no registry has it).
#
#   scripts/image.sh [IMAGE]         default taskproc:<version in pyproject.toml>
#   ENGINE=podman scripts/image.sh   force an engine
#
# pip inside the build uses the host's network (--network host) and the host's index settings
# (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST from the environment or pip's configuration), passed as
# build arguments of the build stage only: they are not in the final image. file:// indexes are left out (the
# build cannot see the host's files).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
IMAGE=${1:-${IMAGE:-taskproc:$version}}

if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  else
    echo "image: neither a docker engine nor podman is available" >&2
    exit 1
  fi
fi

pip_setting() {  # environment first, then pip's configuration (global, user, site)
  local env=$1 key=$2 value=${!1:-}
  if [ -z "$value" ] && command -v pip3 >/dev/null 2>&1; then
    value=$(pip3 config get "global.$key" 2>/dev/null || true)
  fi
  # Only network indexes: drop file:// entries (space-separated lists).
  value=$(tr ' ' '\n' <<<"$value" | grep -v '^file:' | paste -sd' ' - || true)
  if [ -n "$value" ]; then
    build_args+=(--build-arg "$env=$value")
  fi
}
build_args=()
pip_setting PIP_INDEX_URL index-url
pip_setting PIP_EXTRA_INDEX_URL extra-index-url
pip_setting PIP_TRUSTED_HOST trusted-host
for proxy in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  if [ -n "${!proxy:-}" ]; then build_args+=(--build-arg "$proxy=${!proxy}"); fi
done

if [ "$ENGINE" = podman ]; then
  base=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile | head -n1)
  bash scripts/base-image.sh "$base"
fi

echo "image: $ENGINE build -t $IMAGE"
"$ENGINE" build --network host ${build_args[@]+"${build_args[@]}"} -t "$IMAGE" .
echo "image: built $IMAGE ($("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
