#!/usr/bin/env bash
# Install the host tools imgbuild and its tests use, when they are missing.
# Usage: scripts/deps.sh build|test
set -euo pipefail
# mkfs.vfat and debugfs live in sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

need=(mmdebstrap:mmdebstrap zstd:zstd tar:tar getfattr:attr readelf:binutils bc:bc)
# The qcow2 target: disk tools, and GRUB's BIOS and UEFI module trees
# (files, not commands: checked below).
need+=(qemu-img:qemu-utils debugfs:e2fsprogs e2fsck:e2fsprogs mke2fs:e2fsprogs sfdisk:fdisk)
need+=(mkfs.fat:dosfstools mmd:mtools mcopy:mtools grub-mkimage:grub-common)
# XFS and LVM-on-XFS roots (loop mount, xfs_repair -n, an assembled LVM
# root) and SELinux labels from the image's own policy.
need+=(losetup:mount mkfs.xfs:xfsprogs xfs_repair:xfsprogs lvm:lvm2)
need+=(setfiles:policycoreutils matchpathcon:selinux-utils)
# A pveam source checks the index's signature with gpgv.
need+=(gpgv:gpgv)
if [[ "${1:-build}" == test ]]; then
  need+=(lxc-start:lxc ip:iproute2)
  # The LXC test's DHCP server on its bridge; pct's SSH host keys.
  need+=(dnsmasq:dnsmasq-base ssh-keygen:openssh-client)
  # imgbuild seed (ISO and FAT cidata volumes) and its tests.
  need+=(mkfs.vfat:dosfstools xorriso:xorriso)
  # The qcow2 boot test: qemu under TCG with SeaBIOS and OVMF.
  need+=(qemu-system-x86_64:qemu-system-x86)
  # The catalog tests sign their pveam index with a throw-away key.
  need+=(gpg:gnupg)
fi

missing=()
for pair in "${need[@]}"; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# mmdebstrap verifies Debian's archive with this keyring.
[[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
[[ -e /usr/lib/grub/i386-pc/moddep.lst ]] || missing+=(grub-pc-bin)
[[ -e /usr/lib/grub/x86_64-efi/moddep.lst ]] || missing+=(grub-efi-amd64-bin)
if [[ "${1:-build}" == test ]]; then
  [[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ]] || missing+=(ovmf)
  [[ -e /usr/share/seabios/bios-256k.bin ]] || missing+=(seabios)
  # A small SELinux policy for the labelling tests' fixtures.
  [[ -e /etc/selinux/default/contexts/files/file_contexts ]] || missing+=(selinux-policy-default)
fi

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "missing tools; install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  extra=()
  # qemu-system-x86 needs qemu-utils of its own version; a qemu-utils from
  # another suite (a backport, say) would make it uninstallable.
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
    want=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ -n "$want" && -n "$have" && "$want" != "$have" ]]; then
      echo "qemu-utils $have does not match qemu-system-x86 $want; installing qemu-utils=$want" >&2
      extra=(--allow-downgrades "qemu-utils=$want")
    fi
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" "${extra[@]}" >&2
fi

# Unprivileged containers: root's subordinate ids, as every Proxmox VE host
# has them (`root:100000:65536`). With uidmap installed, LXC and
# lxc-usernsexec map ids through newuidmap, which checks these files.
if [[ "${1:-build}" == test && $(id -u) -eq 0 ]]; then
  for f in /etc/subuid /etc/subgid; do
    grep -qs '^root:100000:65536$' "$f" || echo 'root:100000:65536' >> "$f"
  done
fi
