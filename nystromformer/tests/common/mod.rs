//! Helpers shared by the integration tests: the backends to run on and numeric comparisons.
#![allow(dead_code)]

use std::sync::OnceLock;

use burn::tensor::{Bool, Device, DeviceType, Tensor, TensorData};

/// Set to `1` (CI does) to turn a missing wgpu adapter into a failure instead of a skip.
pub const REQUIRE_WGPU: &str = "NYSTROMFORMER_REQUIRE_WGPU";

/// The first wgpu adapter, if the machine has one (lavapipe counts).
pub fn wgpu_device() -> Option<Device> {
    static WGPU: OnceLock<Option<Device>> = OnceLock::new();
    WGPU.get_or_init(|| {
        let found = Device::enumerate(DeviceType::Wgpu).first().cloned();
        match (&found, std::env::var(REQUIRE_WGPU).as_deref()) {
            (None, Ok("1")) => panic!("{REQUIRE_WGPU}=1 but no wgpu adapter was found"),
            // Straight to the stderr handle: the test harness captures `eprintln!` of passing
            // tests, and a skip must be seen.
            (None, _) => {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED on wgpu: no wgpu adapter found (install mesa-vulkan-drivers, or set {REQUIRE_WGPU}=1 to make this an error)"
                );
            }
            (Some(device), _) => eprintln!("wgpu adapter: {device:?}"),
        }
        found
    })
    .clone()
}

/// Every backend compiled into the tests that this machine can run: flex, and wgpu if found.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("flex", Device::flex())];
    if let Some(device) = wgpu_device() {
        devices.push(("wgpu", device));
    }
    devices
}

/// Runs a proptest on every backend of [`devices`], with fewer cases on wgpu (lavapipe
/// emulates the GPU on the CPU), naming the backend of a failure.
pub fn proptest_on_devices<S: proptest::strategy::Strategy>(
    strategy: S,
    flex_cases: u32,
    wgpu_cases: u32,
    check: impl Fn(S::Value, &Device) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    use proptest::test_runner::{Config, TestRunner};
    for (name, device) in devices() {
        let cases = if name == "flex" {
            flex_cases
        } else {
            wgpu_cases
        };
        TestRunner::new(Config::with_cases(cases))
            .run(&strategy, |value| check(value, &device))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}

/// Normal samples `N(0, std²)` from a seeded generator on the host, so every backend sees the
/// same inputs.
pub fn randn<const D: usize>(shape: [usize; D], std: f32, seed: u64, device: &Device) -> Tensor<D> {
    let len = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let samples = (0..len)
        .map(|_| {
            let (u1, u2) = (uniform(), uniform());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * std
        })
        .collect();
    tensor(samples, shape, device)
}

/// The values of a float tensor as `f32`s.
pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A boolean mask from host values.
pub fn mask(values: Vec<bool>, shape: [usize; 2], device: &Device) -> Tensor<2, Bool> {
    Tensor::from_bool(TensorData::new(values, shape), device)
}

/// Largest difference relative to the reference's largest magnitude (at least 1).
pub fn relative_diff(result: &Tensor<4>, reference: &Tensor<4>) -> f32 {
    let scale = values(reference)
        .iter()
        .fold(1.0f32, |acc, x| acc.max(x.abs()));
    max_abs_diff(result, reference) / scale
}

/// Moves a tensor to another device through the host (the backends may differ).
pub fn on<const D: usize>(t: &Tensor<D>, device: &Device) -> Tensor<D> {
    Tensor::from_data(t.to_data(), device)
}

/// A float tensor from host values.
pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Whether every value is finite.
pub fn all_finite<const D: usize>(t: &Tensor<D>) -> bool {
    values(t).iter().all(|x| x.is_finite())
}

/// A nested JSON array of numbers as flat values and its shape.
pub fn json_array(value: &serde_json::Value) -> (Vec<f32>, Vec<usize>) {
    let mut shape = Vec::new();
    let mut level = value;
    while let Some(items) = level.as_array() {
        shape.push(items.len());
        match items.first() {
            Some(first) => level = first,
            None => break,
        }
    }
    let mut flat = Vec::new();
    fn walk(value: &serde_json::Value, out: &mut Vec<f32>) {
        match value {
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            other => out.push(other.as_f64().expect("a number") as f32),
        }
    }
    walk(value, &mut flat);
    (flat, shape)
}

/// The repository's `assets/` folder.
pub fn assets() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets")
}
