//! Runs the Nyström forward pass in a loop on flex, for `perf record`: the inputs are made once,
//! so the profile shows the attention alone.
//!
//! `cargo run --release -p nystromformer-bench --example profile_forward -- 16384 50`
//! (`RETAIN=0` leaves glibc's malloc at its defaults; `MASK=1` pads the last tenth of the
//! sequence, which runs the masked path: per-sequence segments, padded rows zeroed.)

use burn::tensor::{Device, Distribution, Int, Tensor};
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
    let mask = (std::env::var("MASK").as_deref() == Ok("1")).then(|| {
        Tensor::<1, Int>::arange(0..n as i64, &device)
            .greater_equal_elem((n - n / 10) as i64)
            .reshape([1, n])
    });
    let started = std::time::Instant::now();
    for _ in 0..reps {
        let input = NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone());
        let input = match &mask {
            Some(mask) => input.mask_pad(mask.clone()),
            None => input,
        };
        let out = nystrom_attention(input, &options).context;
        out.into_data();
    }
    let per_run = started.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let masked = if mask.is_some() {
        ", last tenth padded"
    } else {
        ""
    };
    println!("n = {n}{masked}: {per_run:.1} ms per forward (mean of {reps})");
}
