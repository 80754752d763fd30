#!/bin/bash
# LabDesk lab image, built from nothing with no manual step:
#   1. debootstrap Debian 12 (bookworm) into DIR/rootfs
#   2. run customize.sh (and so course-software.sh) in that chroot
#   3. unless --chroot-only: add a kernel and GRUB, copy the tree into a partitioned ext4 disk and
#      convert it to DIR/debian-lab-<variant>.qcow2 (BIOS boot; needs losetup, sfdisk, mkfs.ext4, qemu-img)
#
#   build-image.sh [--variant desktop|terminal] [--out DIR] [--mirror URL] [--security-mirror URL]
#                  [--size 8G] [--chroot-only] [--keep-rootfs]
#
# --mirror defaults to the Debian mirror this machine's apt uses (/etc/apt/sources.list*), read at run
# time; --security-mirror likewise (the bookworm-security source; omitted when there is none).
# Runs as root on a Debian/Ubuntu host with debootstrap. See docs/images.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm
VARIANT=desktop
OUT=./build
MIRROR=""
SECURITY_MIRROR=""
SIZE=8G
CHROOT_ONLY=0
KEEP_ROOTFS=0

usage() { sed -n '2,14p' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) VARIANT=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --mirror) MIRROR=${2:?}; shift 2 ;;
    --security-mirror) SECURITY_MIRROR=${2:?}; shift 2 ;;
    --size) SIZE=${2:?}; shift 2 ;;
    --chroot-only) CHROOT_ONLY=1; shift ;;
    --keep-rootfs) KEEP_ROOTFS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-image.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$VARIANT" in desktop|terminal) ;; *) echo "build-image.sh: --variant must be desktop or terminal" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "build-image.sh: run as root (debootstrap, chroot, loop devices)" >&2; exit 1; }

need() {
  local tool=$1 package=$2
  command -v "$tool" >/dev/null || { echo "build-image.sh: needs $tool (apt-get install $package)" >&2; exit 1; }
}
need debootstrap debootstrap
if [ "$CHROOT_ONLY" = 0 ]; then
  need losetup mount; need sfdisk fdisk; need mkfs.ext4 e2fsprogs; need qemu-img qemu-utils
fi

# The first URI of an enabled apt source (one-line *.list or deb822 *.sources) for suite $1.
apt_source_uri() {
  local suite=$1 files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && files+=("$f"); done
  [ ${#files[@]} -gt 0 ] || return 0
  awk -v suite="$suite" '
    function flush() {
      if (found == "" && enabled != "no" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ") && uris != "") {
        split(uris, u, " "); found = u[1]
      }
      types = ""; uris = ""; suites = ""; enabled = ""
    }
    FNR == 1 { flush() }
    /^[ \t]*#/ { next }
    /^[ \t]*$/ { flush(); next }
    FILENAME ~ /\.list$/ && $1 == "deb" {
      i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if (found == "" && $(i + 1) == suite) found = $i
      next
    }
    tolower($1) == "types:"   { $1 = ""; types = $0 }
    tolower($1) == "uris:"    { $1 = ""; uris = $0 }
    tolower($1) == "suites:"  { $1 = ""; suites = $0 }
    tolower($1) == "enabled:" { enabled = tolower($2) }
    END { flush(); if (found != "") print found }
  ' "${files[@]}"
}
[ -n "$MIRROR" ] || MIRROR=$(apt_source_uri "$SUITE")
[ -n "$SECURITY_MIRROR" ] || SECURITY_MIRROR=$(apt_source_uri "$SUITE-security")
if [ -z "$MIRROR" ]; then
  echo "build-image.sh: no apt source for $SUITE in /etc/apt/sources.list*; pass --mirror URL" >&2
  exit 1
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT="$OUT/rootfs"
MNT="$OUT/mnt"
LOOP=""
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  [ -z "$LOOP" ] || losetup -d "$LOOP" 2>/dev/null || true
}
trap cleanup EXIT
bind_mount() { mount --bind "$1" "$2"; mounted+=("$2"); }
chroot_mounts() {  # $1 = root of the tree to chroot into
  mount -t proc proc "$1/proc"; mounted+=("$1/proc")
  mount -t sysfs sysfs "$1/sys"; mounted+=("$1/sys")
  bind_mount /dev "$1/dev"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$1/dev/pts"; mounted+=("$1/dev/pts")
}
chroot_umounts() {  # unmount everything under $1
  local i keep=()
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    case "${mounted[i]}" in "$1"/*) umount "${mounted[i]}" ;; *) keep=("${mounted[i]}" "${keep[@]}") ;; esac
  done
  mounted=("${keep[@]}")
}
started=$(date +%s)
log() { echo "== build-image ($VARIANT, $(( $(date +%s) - started ))s): $*"; }

log "debootstrap $SUITE from $MIRROR into $ROOT"
if [ -e "$ROOT" ]; then rm -rf --one-file-system "$ROOT"; fi
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOT" "$MIRROR"

log "apt sources and no service starts inside the chroot"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" "$SUITE" "$SUITE"
  if [ -n "$SECURITY_MIRROR" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$SECURITY_MIRROR" "$SUITE"
  fi
} > "$ROOT/etc/apt/sources.list.d/debian.sources"
rm -f "$ROOT/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
echo labdesk-lab > "$ROOT/etc/hostname"

log "customize.sh --variant $VARIANT in the chroot"
chroot_mounts "$ROOT"
rm -rf "$ROOT/root/labdesk-recipe"
mkdir -p "$ROOT/root/labdesk-recipe"
cp -a "$HERE/customize.sh" "$HERE/course-software.sh" "$HERE/files" "$ROOT/root/labdesk-recipe/"
chroot "$ROOT" /root/labdesk-recipe/customize.sh --variant "$VARIANT"

if [ "$CHROOT_ONLY" = 0 ]; then
  log "kernel and GRUB"
  chroot "$ROOT" debconf-set-selections <<'SEL'
grub-pc grub-pc/install_devices_empty boolean true
grub-pc grub-pc/install_devices multiselect
SEL
  cat > "$ROOT/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 net.ifnames=1"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB
  chroot "$ROOT" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confold linux-image-amd64 grub-pc initramfs-tools \
    && apt-get clean && rm -rf /var/lib/apt/lists/*'
fi
chroot_umounts "$ROOT"
rm -rf "$ROOT/root/labdesk-recipe" "$ROOT/usr/sbin/policy-rc.d"

if [ "$CHROOT_ONLY" = 1 ]; then
  log "done (--chroot-only): $ROOT"
  exit 0
fi

log "disk: $SIZE, one ext4 partition, GRUB (BIOS)"
RAW="$OUT/debian-lab-$VARIANT.raw"
QCOW="$OUT/debian-lab-$VARIANT.qcow2"
rm -f "$RAW" "$QCOW"
truncate -s "$SIZE" "$RAW"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$RAW"
LOOP=$(losetup --find --show --partscan "$RAW")
PART="${LOOP}p1"
# The kernel's partition scan can lag or be missing (containers without udev): ask again with partx,
# and make the device node from sysfs when nothing else does.
sysfs_dev="/sys/block/${LOOP#/dev/}/${LOOP#/dev/}p1/dev"
for i in $(seq 50); do
  [ -b "$PART" ] && break
  [ "$i" != 5 ] || partx --add "$LOOP" 2>/dev/null || true
  if [ "$i" -gt 5 ] && [ -r "$sysfs_dev" ]; then
    IFS=: read -r major minor < "$sysfs_dev"; mknod "$PART" b "$major" "$minor"
  fi
  sleep 0.1
done
[ -b "$PART" ] || { echo "build-image.sh: no partition device for $LOOP" >&2; exit 1; }
mkfs.ext4 -q -L labdesk-root "$PART"
uuid=$(blkid -s UUID -o value "$PART")
mkdir -p "$MNT"
mount "$PART" "$MNT"; mounted+=("$MNT")
cp -a "$ROOT"/. "$MNT"/
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$uuid" > "$MNT/etc/fstab"
chroot_mounts "$MNT"
chroot "$MNT" grub-install --target=i386-pc --boot-directory=/boot "$LOOP"
chroot "$MNT" update-grub
# Without udev there is no /dev/disk/by-uuid, so grub-mkconfig wrote root=/dev/loopNp1: boot by UUID.
# (update-grub inside the VM later writes root=UUID=… by itself.)
sed -i "s|root=$PART |root=UUID=$uuid |" "$MNT/boot/grub/grub.cfg"
grep -q "root=UUID=$uuid " "$MNT/boot/grub/grub.cfg" \
  || { echo "build-image.sh: grub.cfg does not boot root=UUID=$uuid" >&2; exit 1; }
chroot_umounts "$MNT"
umount "$MNT"; mounted=("${mounted[@]/$MNT}")
losetup -d "$LOOP"; LOOP=""
log "qemu-img convert to $QCOW"
qemu-img convert -c -O qcow2 "$RAW" "$QCOW"
rm -f "$RAW"
[ "$KEEP_ROOTFS" = 1 ] || rm -rf --one-file-system "$ROOT"
log "done: $QCOW"
