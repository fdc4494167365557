#!/usr/bin/env bash
# Benchmark: a thousand copy-on-write instances of one base image.
#
# Pulls the realistic raw root filesystem of bench/convert.sh (built there,
# once) into an empty store, then times, in the same run,
#   vmimg instance create IMAGE --name vm-N              (N = 1..COUNT)
#   qemu-img create -f qcow2 -b BASE -F raw vm-N.qcow2   (N = 1..COUNT)
# and prints the time per instance of each and the ratio. Both are whole
# processes per instance, as a VM manager runs them. It also checks a few
# of vmimg's overlays with `qemu-img check`.
#
# Usage: bench/instances.sh [COUNT]     (COUNT defaults to 1000)
set -euo pipefail

count=${1:-1000}
source "$(dirname "$0")/lib.sh"

store=$work/instances-store
rm -rf "$store" "$work/qemu-overlays"
trap 'rm -rf "$store" "$work/qemu-overlays"' EXIT
base=$("$vmimg" -q --store "$store" pull "$work/rootfs.raw")
image=$(basename "$(dirname "$base")")
mkdir -p "$work/qemu-overlays"

with_vmimg() {
    for ((i = 1; i <= count; i++)); do
        "$vmimg" -q --store "$store" instance create "$image" --name "vm-$i" >/dev/null
    done
}

with_qemu_img() {
    for ((i = 1; i <= count; i++)); do
        qemu-img create -q -f qcow2 -b "$base" -F raw "$work/qemu-overlays/vm-$i.qcow2"
    done
}

t_vmimg=$(seconds with_vmimg)
t_qemu=$(seconds with_qemu_img)
for i in 1 $((count / 2)) "$count"; do
    qemu-img check -q "$store/instances/vm-$i/disk.qcow2"
done
echo "base: $(du -h --apparent-size "$base" | cut -f1) raw image; $count instances each; $(nproc) cores"
printf '%-40s %8.3fs  %6.2f ms each\n' "vmimg instance create" "$t_vmimg" "$(echo "$t_vmimg * 1000 / $count" | bc -l)"
printf '%-40s %8.3fs  %6.2f ms each\n' "qemu-img create -f qcow2 -b BASE -F raw" "$t_qemu" "$(echo "$t_qemu * 1000 / $count" | bc -l)"
printf 'ratio: %.2fx\n' "$(echo "$t_qemu / $t_vmimg" | bc -l)"
