# Sourced by the H100 scripts: Vulkan loader, NVIDIA ICD, and the binaries built here
# (carried xz-compressed in .devbin/; the device machine has no Rust toolchain or network).
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export XDG_RUNTIME_DIR=/tmp
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p /tmp/bin
# nystromformer-bench, nystromformer-train, and the kernel_stages example when carried.
for f in .devbin/*.xz; do
    b=$(basename "$f" .xz)
    [ -x /tmp/bin/$b ] || { xz -dc "$f" > /tmp/bin/$b && chmod +x /tmp/bin/$b; }
done
export PATH=/tmp/bin:$PATH
R=${OUT:-/tmp/out}/h100
mkdir -p "$R"
