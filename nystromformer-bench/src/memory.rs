//! Peak memory: the device memory pool on CubeCL backends, the process's peak RSS on the CPU.

use burn::tensor::Device;

/// Starts a peak-memory window.
pub fn reset_peak(device: &Device) {
    device.memory_cleanup();
    // The binary keeps freed CPU memory for speed; hand it back so that the resident set, and
    // so the peak below, starts from what is live rather than from earlier shapes' buffers.
    nystromformer::cpu_memory::release_freed_memory();
    // Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak bytes since [`reset_peak`] (the device pool's high-water mark on GPU backends, which
/// only grows within a process: the sweep runs sizes in increasing order, one implementation
/// per process).
pub fn peak_bytes(device: &Device) -> Option<u64> {
    if let Some(pools) = device.memory_pool_report() {
        return Some(
            pools
                .iter()
                .map(|pool| pool.page_size * pool.pages_peak)
                .sum(),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
