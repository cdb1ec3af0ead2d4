#!/usr/bin/env bash
# Install the host tools imgbuild and its tests use, when they are missing.
# Usage: scripts/deps.sh build|test
set -euo pipefail
# mkfs.vfat and debugfs live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

need=(mmdebstrap:mmdebstrap zstd:zstd tar:tar getfattr:attr readelf:binutils bc:bc)
if [[ "${1:-build}" == test ]]; then
  need+=(lxc-start:lxc ip:iproute2 debugfs:e2fsprogs sfdisk:fdisk)
  # imgbuild seed (ISO and FAT cidata volumes) and its tests.
  need+=(mkfs.vfat:dosfstools mcopy:mtools xorriso:xorriso)
fi

missing=()
for pair in "${need[@]}"; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# mmdebstrap verifies Debian's archive with this keyring.
[[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "missing tools; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
