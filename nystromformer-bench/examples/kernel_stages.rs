//! Times each stage that a custom kernel replaces, kernel against tensor ops, on one device (`n/a`
//! where the device has no fused path for a stage: flex has none for the landmarks):
//! the landmarks (segment means, scaled), `B · V`, the pseudo-inverse, `W = A⁺ (B V)` from the
//! landmarks, and `F · W`, that one against Burn's fused `attention` too. Medians of `reps` runs
//! with the device synchronised.
//!
//! `cargo run --release -p nystromformer-bench --example kernel_stages -- wgpu 2048 [reps]`
//! (shape: batch 4, heads 2, head_dim 32, m 64; `BATCH`, `HEADS`, `HEAD_DIM`, `LANDMARKS` override; `DTYPE=f16`
//! times half precision, where the kernels keep their sums in f32; `BACKWARD=1` times forward +
//! backward of each stage on tracked inputs).

use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use nystromformer::attention::iterative_pinv;
use nystromformer::attention::landmarks::Segments;
use nystromformer::attention::mask::MASKED_SCORE;
use nystromformer::attention::softmax_kernels::{kernel_a, kernel_b, kernel_f};
use nystromformer::kernels::{
    custom_kernels_apply, fused_landmark_attention, fused_landmark_means, fused_landmark_values,
    fused_landmark_weights, fused_pinv,
};
use nystromformer::{PinvInit, device::choose_device};

fn main() {
    let mut args = std::env::args().skip(1);
    let device = choose_device(&args.next().unwrap_or_else(|| "wgpu".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    let backward = std::env::var("BACKWARD").is_ok_and(|v| v == "1");
    let device = if backward { device.autodiff() } else { device };
    let n: usize = args.next().map_or(2048, |a| a.parse().expect("n"));
    let reps: usize = args.next().map_or(10, |a| a.parse().expect("repetitions"));
    let size = |name: &str, default: usize| {
        std::env::var(name).map_or(default, |v| v.parse().expect("a number"))
    };
    let [batch, heads, d, m] = [
        size("BATCH", 4),
        size("HEADS", 2),
        size("HEAD_DIM", 32),
        size("LANDMARKS", 64),
    ];
    let dtype = match std::env::var("DTYPE").as_deref() {
        Ok("f16") => FloatDType::F16,
        Ok("f32") | Err(_) => FloatDType::F32,
        Ok(other) => panic!("DTYPE must be f32 or f16, got {other}"),
    };
    let random = |rows: usize, std: f64| {
        let x = Tensor::<4>::random(
            [batch, heads, rows, d],
            Distribution::Normal(0.0, std),
            &device,
        )
        .cast(dtype);
        if backward { x.require_grad() } else { x }
    };
    let (q, k, v) = (random(n, 1.0), random(n, 1.0), random(n, 1.0));
    let (landmark_queries, landmark_keys) = (random(m, 0.2), random(m, 0.2));
    let a = softmax(
        landmark_queries
            .clone()
            .matmul(landmark_keys.clone().transpose()),
        3,
    );
    // A leaf of its own: each run's backward consumes the graph it was built on.
    let a = if backward {
        a.detach().require_grad()
    } else {
        a
    };
    let weights = random(m, 1.0);
    let scale = (d as f64).powf(-0.5);
    let segments = Segments::new(n, m, None, dtype, &device);
    assert!(
        custom_kernels_apply(&q),
        "the custom kernels do not apply on {device:?}"
    );
    let pass = if backward {
        "forward + backward"
    } else {
        "forward"
    };
    println!(
        "{device:?}, {dtype:?}, batch {batch}, heads {heads}, n {n}, d {d}, m {m}, {pass}: median ms"
    );

    let stages: [Stage; 5] = [
        (
            "landmarks",
            Box::new(|| {
                let [queries, scaled_queries, scaled_keys] =
                    fused_landmark_means(&q, &k, [&segments, &segments], scale)?;
                Some(Tensor::cat(vec![queries, scaled_queries, scaled_keys], 2))
            }),
            Box::new(|| {
                let queries = segments.mean(q.clone());
                let scaled_keys = segments.mean(k.clone()).mul_scalar(scale);
                let scaled_queries = queries.clone().mul_scalar(scale);
                Tensor::cat(vec![queries, scaled_queries, scaled_keys], 2)
            }),
        ),
        (
            "B · V",
            Box::new(|| {
                fused_landmark_values(&landmark_queries, &k, &v, None, None, MASKED_SCORE as f32)
            }),
            Box::new(|| {
                kernel_b(
                    landmark_queries.clone(),
                    k.clone(),
                    None,
                    None,
                    MASKED_SCORE,
                )
                .matmul(v.clone())
            }),
        ),
        (
            "pinv (6 iterations)",
            Box::new(|| fused_pinv(&a, 6, PinvInit::Exact)),
            Box::new(|| iterative_pinv(a.clone(), 6, PinvInit::Exact)),
        ),
        (
            "W = A⁺ (B V)",
            Box::new(|| {
                fused_landmark_weights(
                    &landmark_queries,
                    &landmark_keys,
                    &weights,
                    None,
                    None,
                    6,
                    PinvInit::Exact,
                )
            }),
            Box::new(|| {
                let a = kernel_a(
                    landmark_queries.clone(),
                    landmark_keys.clone(),
                    None,
                    None,
                    MASKED_SCORE,
                );
                iterative_pinv(a, 6, PinvInit::Exact).matmul(weights.clone())
            }),
        ),
        (
            "F · W",
            Box::new(|| fused_landmark_attention(&q, &landmark_keys, &weights, None)),
            Box::new(|| {
                kernel_f(q.clone(), landmark_keys.clone(), None, MASKED_SCORE)
                    .matmul(weights.clone())
            }),
        ),
    ];
    for (name, kernel, tensor_ops) in &stages {
        let tensor_ops_ms = median_ms(&device, reps, backward, tensor_ops);
        // Flex has fused paths for some stages only; CubeCL devices for all of them.
        let kernel_ms = match kernel() {
            Some(_) => format!(
                "{:8.3}",
                median_ms(&device, reps, backward, &|| kernel().unwrap())
            ),
            None => format!("{:>8}", "n/a"),
        };
        println!("{name:>20}: kernel {kernel_ms}   tensor ops {tensor_ops_ms:8.3}");
    }

    // Burn's own fused attention as the `F · W` stage (issue 10 asks which is faster): the
    // landmark keys come scaled, so its scale is 1.
    let burn_attention = || {
        let options = AttentionModuleOptions {
            scale: Some(1.0),
            ..Default::default()
        };
        attention(
            q.clone(),
            landmark_keys.clone(),
            weights.clone(),
            None,
            None,
            options,
        )
    };
    let Some(ours) = fused_landmark_attention(&q, &landmark_keys, &weights, None) else {
        return;
    };
    let difference = (burn_attention() - ours)
        .abs()
        .max()
        .cast(FloatDType::F32)
        .into_scalar::<f32>();
    let burn_ms = median_ms(&device, reps, backward, &burn_attention);
    println!(
        "{:>20}: Burn's attention {burn_ms:8.3}   (largest difference from the kernel {difference:.1e})",
        "F · W"
    );
}

/// A stage's name, its kernel (`None` where it does not apply) and its tensor ops.
type Stage<'a> = (
    &'static str,
    Box<dyn Fn() -> Option<Tensor<4>> + 'a>,
    Box<dyn Fn() -> Tensor<4> + 'a>,
);

/// Median over `reps` timed runs after two untimed ones (compilation, autotuning); with
/// `backward`, each run takes the gradients of the output's sum too.
fn median_ms(device: &Device, reps: usize, backward: bool, run: &dyn Fn() -> Tensor<4>) -> f64 {
    let pass = || {
        let output = run();
        if backward {
            output.sum().backward();
        }
    };
    for _ in 0..2 {
        pass();
        device.sync().expect("device sync");
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let started = std::time::Instant::now();
            pass();
            device.sync().expect("device sync");
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
