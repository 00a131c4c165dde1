//! Cross-attention: queries from one sequence, keys and values from another of a different
//! length, each with its own padding mask. Checked against exact cross-attention where the
//! approximation has nothing to approximate, and against an independent f64 reference of the
//! Nyström maths (`reference` below) everywhere else, on every backend.

mod common;

use burn::tensor::{Bool, Device, Tensor, TensorData};
use common::{devices, max_abs_diff, proptest_on_devices, randn, tensor, values};
use nystromformer::attention::explicit_softmax_attention;
use nystromformer::{
    AttentionMode, NystromAttentionConfig, NystromHeadsInput, NystromInput, NystromOptions,
    nystrom_attention,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    heads: usize,
    d: usize,
    m: usize,
    n_q: usize,
    /// `[batch][n_q]` and `[batch][n_k]`, `true` = padding.
    query_mask: Option<Vec<Vec<bool>>>,
    key_mask: Vec<Vec<bool>>,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        1usize..=2,
        prop_oneof![Just(2usize), Just(4)],
        1usize..=8,
        1usize..=20,
        1usize..=24,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(|(batch, heads, d, m, n_q, n_k, mask_queries, seed)| {
            let rows = |n: usize| {
                proptest::collection::vec(
                    prop_oneof![
                        3 => proptest::collection::vec(proptest::bool::weighted(0.3), n),
                        1 => Just(vec![false; n]),
                        1 => Just(vec![true; n]),
                    ],
                    batch,
                )
            };
            (rows(n_q), rows(n_k)).prop_map(move |(query_rows, key_mask)| Case {
                batch,
                heads,
                d,
                m,
                n_q,
                query_mask: mask_queries.then_some(query_rows),
                key_mask,
                seed,
            })
        })
}

fn mask(rows: &[Vec<bool>], device: &Device) -> Tensor<2, Bool> {
    let flat: Vec<bool> = rows.iter().flatten().copied().collect();
    Tensor::from_bool(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

/// The Nyström maths in f64 on the host, for one matrix of one head: segments over each
/// sequence's valid tokens, missing landmarks left out, the iterative pseudo-inverse with the
/// `Exact` initialisation, and exact attention for at most `m` valid keys.
mod reference {
    type Matrix = Vec<Vec<f64>>;

    fn segments(valid: &[bool], m: usize) -> Vec<Vec<usize>> {
        let positions: Vec<usize> = (0..valid.len()).filter(|j| valid[*j]).collect();
        let length = positions.len();
        let mut segments = vec![Vec::new(); m];
        for (rank, position) in positions.into_iter().enumerate() {
            segments[rank * m / length].push(position);
        }
        segments
    }

    fn means(x: &Matrix, segments: &[Vec<usize>]) -> Matrix {
        let d = x[0].len();
        segments
            .iter()
            .map(|members| {
                (0..d)
                    .map(|f| {
                        members.iter().map(|j| x[*j][f]).sum::<f64>() / members.len().max(1) as f64
                    })
                    .collect()
            })
            .collect()
    }

    /// Softmax of `rows · columnsᵀ · scale` over the allowed columns; a row with none, or a row
    /// not allowed, is zero.
    fn kernel(
        rows: &Matrix,
        columns: &Matrix,
        scale: f64,
        row_ok: &[bool],
        col_ok: &[bool],
    ) -> Matrix {
        rows.iter()
            .zip(row_ok)
            .map(|(row, ok)| {
                let scores: Vec<Option<f64>> = columns
                    .iter()
                    .zip(col_ok)
                    .map(|(col, c_ok)| {
                        c_ok.then(|| row.iter().zip(col).map(|(a, b)| a * b).sum::<f64>() * scale)
                    })
                    .collect();
                let max = scores
                    .iter()
                    .flatten()
                    .fold(f64::NEG_INFINITY, |a, b| a.max(*b));
                if !ok || max == f64::NEG_INFINITY {
                    return vec![0.0; columns.len()];
                }
                let exps: Vec<f64> = scores
                    .iter()
                    .map(|s| s.map_or(0.0, |s| (s - max).exp()))
                    .collect();
                let sum: f64 = exps.iter().sum();
                exps.iter().map(|e| e / sum).collect()
            })
            .collect()
    }

    fn matmul(a: &Matrix, b: &Matrix) -> Matrix {
        a.iter()
            .map(|row| {
                (0..b[0].len())
                    .map(|j| row.iter().zip(b).map(|(x, b_row)| x * b_row[j]).sum())
                    .collect()
            })
            .collect()
    }

    fn pinv(a: &Matrix, iterations: usize) -> Matrix {
        let m = a.len();
        let column_max = (0..m)
            .map(|j| a.iter().map(|row| row[j]).sum::<f64>())
            .fold(0.0, f64::max)
            .max(1e-12);
        let mut z: Matrix = (0..m)
            .map(|i| (0..m).map(|j| a[j][i] / column_max).collect())
            .collect();
        let shifted = |c: f64, x: &Matrix| -> Matrix {
            (0..m)
                .map(|i| {
                    (0..m)
                        .map(|j| if i == j { c } else { 0.0 } - x[i][j])
                        .collect()
                })
                .collect()
        };
        for _ in 0..iterations {
            let az = matmul(a, &z);
            let inner = shifted(7.0, &az);
            let middle = shifted(15.0, &matmul(&az, &inner));
            let outer = shifted(13.0, &matmul(&az, &middle));
            z = matmul(&z, &outer)
                .into_iter()
                .map(|row| row.into_iter().map(|x| x / 4.0).collect())
                .collect();
        }
        z
    }

    /// Context `[n_q, d_v]` of queries `q` over keys `k` and values `v`.
    pub fn nystrom(
        q: &Matrix,
        k: &Matrix,
        v: &Matrix,
        query_valid: &[bool],
        key_valid: &[bool],
        m: usize,
    ) -> Matrix {
        let scale = 1.0 / (q[0].len() as f64).sqrt();
        let all = vec![true; q.len()];
        let key_segments = segments(key_valid, m);
        let query_segments = segments(query_valid, m);
        let key_ok: Vec<bool> = key_segments.iter().map(|s| !s.is_empty()).collect();
        let query_ok: Vec<bool> = query_segments.iter().map(|s| !s.is_empty()).collect();
        let landmark_keys = means(k, &key_segments);
        let landmark_queries = means(q, &query_segments);
        let f = kernel(q, &landmark_keys, scale, &all, &key_ok);
        let weights = if key_valid.iter().filter(|v| **v).count() <= m {
            means(v, &key_segments)
        } else {
            let a = kernel(&landmark_queries, &landmark_keys, scale, &query_ok, &key_ok);
            let b = kernel(&landmark_queries, k, scale, &query_ok, key_valid);
            matmul(&pinv(&a, 6), &matmul(&b, v))
        };
        matmul(&f, &weights)
    }
}

fn check(case: &Case, device: &Device) -> Result<(), TestCaseError> {
    let (batch, heads, d, m) = (case.batch, case.heads, case.d, case.m);
    let (n_q, n_k) = (case.n_q, case.key_mask[0].len());
    let q = randn([batch, heads, n_q, d], 1.0, case.seed, device);
    let k = randn([batch, heads, n_k, d], 1.0, case.seed ^ 1, device);
    let v = randn([batch, heads, n_k, d], 1.0, case.seed ^ 2, device);
    let mut input = NystromHeadsInput::new(q.clone(), k.clone(), v.clone())
        .mask_pad(mask(&case.key_mask, device));
    if let Some(rows) = &case.query_mask {
        input = input.mask_pad_query(mask(rows, device));
    }
    let options = NystromOptions::new().with_num_landmarks(m);
    let out = values(&nystrom_attention(input, &options).context);
    prop_assert_eq!(out.len(), batch * heads * n_q * d);

    let (q, k, v) = (values(&q), values(&k), values(&v));
    let matrix = |x: &[f32], b: usize, h: usize, n: usize| -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| {
                (0..d)
                    .map(|f| x[((b * heads + h) * n + i) * d + f] as f64)
                    .collect()
            })
            .collect()
    };
    for b in 0..batch {
        let key_valid: Vec<bool> = case.key_mask[b].iter().map(|p| !p).collect();
        let query_valid: Vec<bool> = match &case.query_mask {
            Some(rows) => rows[b].iter().map(|p| !p).collect(),
            None => vec![true; n_q],
        };
        if !key_valid.iter().any(|v| *v) {
            continue; // nothing to attend to: any finite output is fine (checked below)
        }
        for h in 0..heads {
            let (qm, km, vm) = (
                matrix(&q, b, h, n_q),
                matrix(&k, b, h, n_k),
                matrix(&v, b, h, n_k),
            );
            // At most m valid keys (n_k ≤ m included) the reference is exact attention too.
            let want = reference::nystrom(&qm, &km, &vm, &query_valid, &key_valid, m);
            for (i, row) in want.iter().enumerate() {
                if !query_valid[i] {
                    continue;
                }
                for (f, w) in row.iter().enumerate() {
                    let got = out[((b * heads + h) * n_q + i) * d + f] as f64;
                    prop_assert!(
                        (got - w).abs() <= 2e-4 * (1.0 + w.abs()),
                        "batch {b}, head {h}, query {i}, feature {f}: {got} vs reference {w}"
                    );
                }
            }
        }
    }
    prop_assert!(out.iter().all(|x| x.is_finite()), "non-finite output");
    Ok(())
}

#[test]
fn cross_attention_matches_an_f64_reference_of_the_maths() {
    proptest_on_devices(cases(), 64, 4, |case, device| check(&case, device));
}

/// With `m` at least both lengths there is nothing to approximate: the module's cross-attention
/// equals exact cross-attention, through the functional core and through the module (against
/// the same module switched to softmax attention).
#[test]
fn with_enough_landmarks_cross_attention_is_exact() {
    for (name, device) in devices() {
        let (batch, heads, d, n_q, n_k) = (2, 2, 4, 7, 11);
        let q = randn([batch, heads, n_q, d], 1.0, 1, &device);
        let k = randn([batch, heads, n_k, d], 1.0, 2, &device);
        let v = randn([batch, heads, n_k, d], 1.0, 3, &device);
        let key_mask = mask(
            &[
                (0..n_k).map(|j| j % 4 == 3).collect(),
                (0..n_k).map(|j| j >= 5).collect(),
            ],
            &device,
        );
        let out = nystrom_attention(
            NystromHeadsInput::new(q.clone(), k.clone(), v.clone()).mask_pad(key_mask.clone()),
            &NystromOptions::new().with_num_landmarks(n_q.max(n_k)),
        );
        let (exact, _) = explicit_softmax_attention(q, k, v, Some(&key_mask));
        let err = max_abs_diff(&out.context, &exact);
        assert!(
            err < 1e-5,
            "{name}: functional core vs exact differ by {err}"
        );

        let d_model = 8;
        let layer = NystromAttentionConfig::new(d_model, 2)
            .with_num_landmarks(n_k)
            .init(&device);
        let mut softmax = layer.clone();
        softmax.mode = AttentionMode::Softmax;
        let query = randn([batch, n_q, d_model], 1.0, 4, &device);
        let memory = randn([batch, n_k, d_model], 1.0, 5, &device);
        let input = NystromInput::new(query, memory.clone(), memory).mask_pad(key_mask.clone());
        let nystrom = layer.forward(input.clone()).context;
        assert_eq!(nystrom.dims(), [batch, n_q, d_model]);
        let err = max_abs_diff(&nystrom, &softmax.forward(input).context);
        assert!(
            err < 1e-5,
            "{name}: module vs softmax module differ by {err}"
        );
    }
}

/// Query landmarks come from the queries and key landmarks from the keys: with fewer landmarks
/// than keys the output changes when the queries change elsewhere (through `Q̃`), and the
/// valid queries' outputs ignore what the query padding holds.
#[test]
fn query_landmarks_come_from_the_queries_and_their_own_mask() {
    let device = Device::flex();
    let (heads, d, n_q, n_k, m) = (1, 4, 9, 20, 4);
    let q = randn([1, heads, n_q, d], 1.0, 11, &device);
    let k = randn([1, heads, n_k, d], 1.0, 12, &device);
    let v = randn([1, heads, n_k, d], 1.0, 13, &device);
    let options = NystromOptions::new().with_num_landmarks(m);
    let query_mask = mask(&[(0..n_q).map(|i| i >= 6).collect()], &device);
    let run = |q: Tensor<4>| {
        let input =
            NystromHeadsInput::new(q, k.clone(), v.clone()).mask_pad_query(query_mask.clone());
        values(&nystrom_attention(input, &options).context)
    };
    let base = run(q.clone());
    let mut garbage = values(&q);
    garbage[6 * d..].iter_mut().for_each(|x| *x = f32::NAN);
    let with_garbage = run(tensor(garbage, [1, heads, n_q, d], &device));
    assert_eq!(
        base[..6 * d],
        with_garbage[..6 * d],
        "padded queries leaked"
    );
    let mut moved = values(&q);
    moved[0] += 1.0; // query 0 moves Q̃₀ and so every output
    let moved = run(tensor(moved, [1, heads, n_q, d], &device));
    assert!(
        (base[d] - moved[d]).abs() > 1e-7,
        "query 1's output should depend on query 0 through the landmarks"
    );
}

#[test]
#[should_panic(expected = "needs n_q = n_k")]
fn the_skip_convolution_refuses_queries_and_keys_of_different_lengths() {
    let device = Device::flex();
    let layer = NystromAttentionConfig::new(8, 2)
        .with_conv_kernel_size(Some(3))
        .init(&device);
    let query = randn([1, 5, 8], 1.0, 1, &device);
    let memory = randn([1, 7, 8], 1.0, 2, &device);
    layer.forward(NystromInput::new(query, memory.clone(), memory));
}
