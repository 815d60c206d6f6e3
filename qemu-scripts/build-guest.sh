#!/usr/bin/env bash
# Builds, once, the guest the QEMU tests boot: Debian's kernel (from the linux-image-*-amd64
# package) and a busybox-static initramfs whose /init (guest-init) loads the virtio-blk driver
# stack and runs the disk test named on the kernel command line (vblkd.test=...), with the
# crash test's workload (guest-workload/, built here as a static binary).
#
# Output, in $VBLKD_GUEST_CACHE (default qemu-scripts/.cache): vmlinuz, initrd.gz and
# pattern.bin (the random data the guest writes, kept so the host can check its disk file).
# Rebuilt when guest-init or the workload changes. Needs: apt-get (after apt-get update), dpkg,
# busybox-static, cpio, gzip, cargo and the static C library (libc6-dev) -- scripts/setup
# installs them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${VBLKD_GUEST_CACHE:-$here/.cache}
mkdir -p "$cache"

workload=$here/guest-workload
# The workload also includes the benchmark's generator (crates/bench/src/rng.rs).
newest_source=$(ls -t "$here/guest-init" "$workload/Cargo.toml" "$workload"/src/*.rs \
    "$here/../crates/bench/src/rng.rs" | head -1)
if [[ -f $cache/vmlinuz && -f $cache/pattern.bin && $cache/initrd.gz -nt $newest_source ]]; then
    exit 0
fi

fail() { echo "build-guest: $*" >&2; exit 1; }
for tool in apt-get apt-cache dpkg cpio gzip; do
    command -v "$tool" >/dev/null || fail "$tool is missing; run scripts/setup"
done
[[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1 ||
    fail "/bin/busybox must be the static build; apt-get install busybox-static"

pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $pkg ]] || fail "cannot find Debian's amd64 kernel package; run apt-get update first"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "build-guest: downloading $pkg" >&2
(cd "$work" && apt-get download -q "$pkg" 2>&1 | grep -v 'unsandboxed' >&2 || true)
deb=$(ls "$work"/*.deb 2>/dev/null | head -1)
[[ -n $deb ]] || fail "apt-get download $pkg produced no package"
dpkg -x "$deb" "$work/pkg"

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,modules}
cp /bin/busybox "$root/bin/busybox"
# virtio_net (after failover, net_failover) and aoe make the guest an AoE initiator.
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
    failover net_failover virtio_net aoe; do
    ko=$(find "$work/pkg/lib/modules" -name "$m.ko" | head -1)
    [[ -n $ko ]] || fail "$pkg has no $m.ko"
    cp "$ko" "$root/modules/"
done
cp "$here/guest-init" "$root/init"
chmod +x "$root/init"
# A static binary: the initramfs has no C library.
echo "build-guest: building the guest workload" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --locked \
    --manifest-path "$workload/Cargo.toml" --target x86_64-unknown-linux-gnu \
    --target-dir "$cache/workload-target"
cp "$cache/workload-target/x86_64-unknown-linux-gnu/release/vblkd-guest-workload" "$root/bin/workload"
head -c $((4 << 20)) /dev/urandom >"$root/pattern.bin"

cp "$work"/pkg/boot/vmlinuz-* "$cache/vmlinuz"
cp "$root/pattern.bin" "$cache/pattern.bin"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$cache/initrd.gz.tmp"
mv "$cache/initrd.gz.tmp" "$cache/initrd.gz"
echo "build-guest: guest ready in $cache" >&2
