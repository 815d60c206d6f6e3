#!/usr/bin/env bash
# Boots the test guest (see build-guest.sh) under TCG with its disk served by a vhost-user-blk
# daemon listening on SOCKET. The console is on stdin/stdout; the guest powers off when done.
# Two vCPUs, so that the guest's virtio-blk driver uses two queues (VBLKD_GUEST_CPUS=1 for one:
# a guest pinned to one host CPU, whose two vCPU threads would only take turns).
#
#   qemu-scripts/boot-guest.sh SOCKET [NUM_QUEUES]
#
# VBLKD_GUEST_TEST=resize waits for the disk to grow (the online-resize test).
# VBLKD_GUEST_TEST=fill writes 16 MiB and reads it back (the full-disk and I/O-limit tests).
# VBLKD_GUEST_TEST=aoe has no disk (SOCKET is -): the guest's virtio-net is on the tap device
# VBLKD_GUEST_TAP (run this in the tap's network namespace), where it is an AoE initiator.
# VBLKD_GUEST_TEST=crash runs the crash test's workload instead of the disk checks, and makes
# QEMU reconnect to SOCKET when the daemon goes away (reconnect=1), as a production VM would.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${VBLKD_GUEST_CACHE:-$here/.cache}
socket=${1:?usage: boot-guest.sh SOCKET [NUM_QUEUES]}
queues=${2:-2}
test=${VBLKD_GUEST_TEST:-checks}
chardev=socket,id=c0,path="$socket"
[[ $test == crash ]] && chardev+=,reconnect=1
if [[ $socket == - ]]; then
    devices=(-netdev "tap,id=n0,ifname=${VBLKD_GUEST_TAP:?the aoe guest needs VBLKD_GUEST_TAP},script=no,downscript=no"
        -device virtio-net-pci,netdev=n0)
else
    devices=(-chardev "$chardev" -device vhost-user-blk-pci,chardev=c0,num-queues="$queues")
fi
"$here/build-guest.sh"
exec qemu-system-x86_64 -accel tcg -smp "${VBLKD_GUEST_CPUS:-2}" -m 512 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 vblkd.test=$test" \
    "${devices[@]}"
