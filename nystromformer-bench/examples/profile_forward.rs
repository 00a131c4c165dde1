//! Runs the Nyström forward pass in a loop on flex, for `perf record`: the inputs are made once,
//! so the profile shows the attention alone.
//!
//! `cargo run --release -p nystromformer-bench --example profile_forward -- 16384 50`
//! (`RETAIN=0` leaves glibc's malloc at its defaults.)

use burn::tensor::{Device, Distribution, Tensor};
use nystromformer::{NystromHeadsInput, NystromOptions, nystrom_attention};

fn main() {
    // `RETAIN=0` measures glibc's default behaviour.
    if std::env::var("RETAIN").as_deref() != Ok("0") {
        nystromformer::cpu_memory::retain_freed_memory();
    }
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(16384, |a| a.parse().expect("n"));
    let reps: usize = args.next().map_or(20, |a| a.parse().expect("repetitions"));
    let device = Device::flex();
    let random = || Tensor::<4>::random([1, 8, n, 64], Distribution::Normal(0.0, 1.0), &device);
    let (q, k, v) = (random(), random(), random());
    let options = NystromOptions::new().with_num_landmarks(64);
    let started = std::time::Instant::now();
    for _ in 0..reps {
        let input = NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone());
        let out = nystrom_attention(input, &options).context;
        out.into_data();
    }
    let per_run = started.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("n = {n}: {per_run:.1} ms per forward (mean of {reps})");
}
