//! Choosing a device by name, for binaries. `Device::default()` picks wgpu whenever it is compiled
//! in, even when the only adapter is a CPU emulation (lavapipe) or there is none; these helpers
//! choose on purpose. Only backends enabled through this crate's features are offered.

use burn::tensor::Device;

/// The device names `--device` and `BURN_DEVICE` accept; the GPU ones also as `NAME:INDEX`.
pub const DEVICE_NAMES: &str = "auto, flex, ndarray, wgpu, vulkan, metal, webgpu";

/// Resolves a device name; `auto` takes a real GPU through wgpu when there is one, else flex.
/// `wgpu:1` (or `vulkan:1`, …) is the second adapter that API enumerates.
pub fn choose_device(name: &str) -> Result<Device, String> {
    if let Some((api, index)) = name.split_once(':') {
        let index: usize = index
            .parse()
            .map_err(|_| format!("device \"{name}\": \"{index}\" is not an adapter index"))?;
        return indexed_device(api, index);
    }
    match name.to_ascii_lowercase().as_str() {
        "auto" => Ok(auto_device()),
        #[cfg(feature = "flex")]
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Ok(Device::ndarray()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(Default::default())),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Device::vulkan(Default::default())),
        #[cfg(feature = "metal")]
        "metal" => Ok(Device::metal(Default::default())),
        #[cfg(feature = "webgpu")]
        "webgpu" => Ok(Device::webgpu(Default::default())),
        other if DEVICE_NAMES.split(", ").any(|known| known == other) => Err(format!(
            "device \"{other}\" is not compiled in; rebuild with --features {other}"
        )),
        other => Err(format!(
            "unknown device \"{other}\"; expected one of: {DEVICE_NAMES}"
        )),
    }
}

/// The `index`-th adapter of a GPU API, as `Device::enumerate` lists them.
fn indexed_device(api: &str, index: usize) -> Result<Device, String> {
    use burn::tensor::DeviceType;
    // Without a GPU feature every arm returns an error and `kind` is never read.
    #[allow(unused_variables)]
    let kind: DeviceType = match api.to_ascii_lowercase().as_str() {
        #[cfg(feature = "wgpu")]
        "wgpu" => DeviceType::Wgpu,
        #[cfg(feature = "vulkan")]
        "vulkan" => DeviceType::Vulkan,
        #[cfg(feature = "metal")]
        "metal" => DeviceType::Metal,
        #[cfg(feature = "webgpu")]
        "webgpu" => DeviceType::WebGpu,
        other => {
            return Err(format!(
                "device \"{other}:{index}\": only compiled-in GPU APIs take an adapter index"
            ));
        }
    };
    #[allow(unreachable_code)]
    {
        let devices = Device::enumerate(kind).into_vec();
        let count = devices.len();
        devices
            .into_iter()
            .nth(index)
            .ok_or_else(|| format!("device \"{api}:{index}\": the API lists {count} adapter(s)"))
    }
}

/// A real GPU adapter through wgpu if the machine has one, else the best CPU backend.
pub fn auto_device() -> Device {
    #[cfg(feature = "wgpu")]
    if let Some(gpu) = real_gpu() {
        return gpu;
    }
    cpu_device()
}

#[cfg(feature = "wgpu")]
fn real_gpu() -> Option<Device> {
    use burn::tensor::DeviceType;
    // Software adapters (lavapipe, llvmpipe) enumerate with the `Cpu` kind: slower than flex.
    Device::enumerate(DeviceType::Wgpu)
        .iter()
        .find(|device| !format!("{device:?}").contains("kind: Cpu"))
        .cloned()
}

fn cpu_device() -> Device {
    #[cfg(feature = "flex")]
    return Device::flex();
    #[cfg(all(not(feature = "flex"), feature = "ndarray"))]
    #[allow(deprecated)]
    return Device::ndarray();
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    Device::default()
}
