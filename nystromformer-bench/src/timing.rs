//! Timing with device synchronisation inside the timed region.

use std::time::Instant;

use burn::tensor::Device;

/// Median, min and max milliseconds of `reps` runs after `warmup` untimed runs.
pub fn time_ms(
    device: &Device,
    warmup: usize,
    reps: usize,
    mut run: impl FnMut(),
) -> (f64, f64, f64) {
    for _ in 0..warmup {
        run();
        device.sync().expect("device sync");
    }
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            device.sync().expect("device sync");
            let start = Instant::now();
            run();
            device.sync().expect("device sync");
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    (median, times[0], times[times.len() - 1])
}
