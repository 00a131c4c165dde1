# Sourced by the CPU measurement scripts: sets the allocator setting the binaries apply to
# themselves (nystromformer::cpu_memory) and pauses a running `lra_cpu.sh` training (SIGSTOP)
# until the sourcing script exits, so that measurements do not share the cores with it.
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647
PAUSED=$(pgrep -f "nystromformer-train --device flex train" || true)
[ -n "$PAUSED" ] && kill -STOP $PAUSED
trap '[ -n "$PAUSED" ] && kill -CONT $PAUSED' EXIT
