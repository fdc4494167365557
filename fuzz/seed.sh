#!/bin/sh
# Makes the seed corpus of the qcow2_open fuzz target: a few tiny images,
# made by qemu-img and qemu-io, in fuzz/corpus/qcow2_open (gitignored).
# Small clusters keep them a few KiB, so mutations stay fast.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/corpus/qcow2_open"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
cd "$work"

# A 16 KiB raw disk: compressible text, a hole, more text.
yes 'vmimg fuzz seed' | head -c 6144 >src.raw
truncate -s 12288 src.raw
yes 'tail' | head -c 4096 >>src.raw

convert() { # NAME QEMU-IMG-CONVERT-OPTIONS...
    name=$1
    shift
    qemu-img convert -q -f raw -O qcow2 "$@" src.raw "$out/$name.qcow2"
}
convert v3 -o cluster_size=512
convert v2 -o compat=0.10,cluster_size=512
convert refcount64 -o cluster_size=512,refcount_bits=64
convert zlib -c -o cluster_size=512
convert zstd -c -o cluster_size=512,compression_type=zstd
convert extl2 -o cluster_size=16k,extended_l2=on
convert extl2-zstd -c -o cluster_size=16k,extended_l2=on,compression_type=zstd

# Zero clusters and subclusters, which only writes make.
qemu-img create -q -f qcow2 -o cluster_size=512 "$out/zero.qcow2" 16k
qemu-io -f qcow2 -c 'write -P 0x5a 0 1k' -c 'write -z 1k 2k' -c 'write -P 0xa5 9k 512' "$out/zero.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=16k,extended_l2=on "$out/extl2-zero.qcow2" 64k
qemu-io -f qcow2 -c 'write -P 1 0 1k' -c 'write -z 2k 2k' -c 'write -z 16k 16k' -c 'write -P 2 40k 1k' \
    "$out/extl2-zero.qcow2" >/dev/null

# Images that name other files (the reader refuses them; the fuzzer mutates them).
qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 -o cluster_size=512 "$out/backing.qcow2" 16k
qemu-img create -q -f qcow2 -o cluster_size=512,data_file=data.raw "$out/data-file.qcow2" 16k

ls -l "$out"
