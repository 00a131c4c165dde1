//! Criterion micro-benchmarks for regressions of the tensor-op path on flex (`cargo bench -p
//! nystromformer-bench`; not run in CI). The sweeps and the report live in the binary.

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use nystromformer::attention::softmax_attention;
use nystromformer::{NystromHeadsInput, NystromOptions, nystrom_attention};

fn inputs(n: usize, device: &Device) -> [Tensor<4>; 3] {
    [(); 3].map(|_| Tensor::random([1, 8, n, 64], Distribution::Normal(0.0, 1.0), device))
}

fn forward(c: &mut Criterion) {
    let device = Device::flex();
    let mut group = c.benchmark_group("forward b=1 h=8 d=64 m=64");
    group.sample_size(10);
    for n in [1024usize, 4096] {
        let [q, k, v] = inputs(n, &device);
        let options = NystromOptions::new().with_num_landmarks(64);
        group.bench_with_input(BenchmarkId::new("nystrom", n), &n, |b, _| {
            b.iter(|| {
                let input = NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone());
                let out = nystrom_attention(input, &options).context;
                device.sync().unwrap();
                out
            })
        });
        if n <= 1024 {
            group.bench_with_input(BenchmarkId::new("burn-attention", n), &n, |b, _| {
                b.iter(|| {
                    let out = softmax_attention(q.clone(), k.clone(), v.clone(), None);
                    device.sync().unwrap();
                    out
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
