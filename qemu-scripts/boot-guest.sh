#!/usr/bin/env bash
# Boots the test guest (see build-guest.sh) under TCG with its disk served by a vhost-user-blk
# daemon listening on SOCKET. The console is on stdin/stdout; the guest powers off when done.
# Two vCPUs, so that the guest's virtio-blk driver uses two queues.
#
#   qemu-scripts/boot-guest.sh SOCKET [NUM_QUEUES]
#
# VBLKD_GUEST_TEST=resize waits for the disk to grow (the online-resize test).
# VBLKD_GUEST_TEST=fill writes 16 MiB and reads it back (the full-disk and I/O-limit tests).
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
"$here/build-guest.sh"
exec qemu-system-x86_64 -accel tcg -smp 2 -m 512 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
    -append "console=ttyS0 quiet panic=-1 vblkd.test=$test" \
    -chardev "$chardev" \
    -device vhost-user-blk-pci,chardev=c0,num-queues="$queues"
