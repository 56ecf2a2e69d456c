#!/usr/bin/env bash
# A local stand-in for the Dockerfile's base image (python:3.11-slim-bookworm) on machines with podman but no
# container registry: Debian bookworm from the host's Debian mirror (debootstrap), whose python3 is 3.11, with
# python3-venv, python3-pip, python-is-python3 and ca-certificates, plus the certificates of the host's CA
# bundle that stock Debian lacks (a TLS-intercepting proxy's CA; without it pip inside the build fails
# certificate verification). Imported into podman under the base image's name, so the Dockerfile builds
# unchanged.
#
#   scripts/base-image.sh [IMAGE]     (default python:3.11-slim-bookworm; nothing to do when it exists)
#
# The root filesystem tarball is kept in $TASKPROC_IMAGE_CACHE (default /var/cache/taskproc-image), so a
# removed image is imported again in seconds instead of a new debootstrap (about 2 minutes).
set -euo pipefail

IMAGE=${1:-python:3.11-slim-bookworm}
CACHE=${TASKPROC_IMAGE_CACHE:-/var/cache/taskproc-image}
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
HOST_BUNDLE=/etc/ssl/certs/ca-certificates.crt

if podman image exists "$IMAGE"; then
  echo "base-image: $IMAGE already present"
  exit 0
fi

# Which Debian mirror the host's apt uses (deb822 .sources or one-line .list), not Debian's security archive.
mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v -- '-security' \
    | grep -E '/debian/?$' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {print $2}' \
      | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# Cache key: the suite, the package list and the host's CA bundle (a changed bundle needs a new rootfs).
key=$(printf '%s\n%s\n' "$SUITE" "$PACKAGES" | cat - "$HOST_BUNDLE" | sha256sum | cut -c1-16)
tarball="$CACHE/rootfs-$SUITE-$key.tar"

if [ ! -s "$tarball" ]; then
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root" "$root.log"' EXIT
  url=$(mirror)
  echo "base-image: debootstrap $SUITE from $url (about 2 minutes)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$url" >"$root.log" 2>&1 \
    || { tail -n 40 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # The host bundle's certificates stock Debian does not have, added the Debian way (update-ca-certificates).
  mkdir -p "$root/usr/local/share/ca-certificates/host"
  python3 - "$HOST_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt" "$root/usr/local/share/ca-certificates/host" <<'PY'
import re, sys
from pathlib import Path

pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
def blocks(path: str) -> list[str]:
    return ["".join(b.split()) for b in pem.findall(Path(path).read_text())]
stock = set(blocks(sys.argv[2]))
extra = [b for b in pem.findall(Path(sys.argv[1]).read_text()) if "".join(b.split()) not in stock]
for i, cert in enumerate(extra):
    Path(sys.argv[3], f"host-{i}.crt").write_text(cert + "\n")
print(f"base-image: {len(extra)} CA certificate(s) from the host bundle added")
PY
  chroot "$root" update-ca-certificates >/dev/null
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
  tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

# The official image's environment and command, so the Dockerfile sees the same base.
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tarball" "$IMAGE" >/dev/null
echo "base-image: imported $IMAGE from $tarball"
