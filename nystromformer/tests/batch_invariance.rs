//! The same sequence gives the same output at its valid positions alone, padded on either side,
//! or batched with other sequences, whatever sits in the padding (NaN and ±inf included):
//! proptest over lengths, landmark counts, batch mixes, padding sides and holes in the mask,
//! through the module and through the encoder, on every backend.

mod common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use common::{proptest_on_devices, tensor, values};
use nystromformer::model::{EncoderInput, NystromformerConfig};
use nystromformer::{NystromAttentionConfig, NystromInput};
use proptest::prelude::*;

/// What padded positions hold in the batched input.
#[derive(Debug, Clone, Copy)]
enum Garbage {
    Large,
    Nan,
    Infinite,
}

impl Garbage {
    fn value(self, i: usize) -> f32 {
        match self {
            Garbage::Large => 1.0e4 * if i.is_multiple_of(2) { 1.0 } else { -1.0 },
            Garbage::Nan => f32::NAN,
            Garbage::Infinite => {
                if i.is_multiple_of(2) {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    heads: usize,
    head_dim: usize,
    landmarks: usize,
    conv: Option<usize>,
    /// The sequence: `true` marks a hole (a padded position inside it).
    holes: Vec<bool>,
    /// Padding before the sequence in the batched row, and the batched length.
    offset: usize,
    n: usize,
    /// Other rows of the batch: their masks (`true` = padding) over the batched length.
    others: Vec<Vec<bool>>,
    row: usize,
    garbage: Garbage,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        (1usize..=2, prop_oneof![Just(2usize), Just(4)]),
        1usize..=8,
        prop_oneof![Just(None), Just(Some(3usize))],
        1usize..=30,
        0usize..=6,
        0usize..=12,
        0usize..=2,
        prop_oneof![
            Just(Garbage::Large),
            Just(Garbage::Nan),
            Just(Garbage::Infinite)
        ],
        any::<u64>(),
    )
        .prop_flat_map(
            |((heads, head_dim), landmarks, conv, len, offset, extra, n_others, garbage, seed)| {
                let n = offset + len + extra;
                let holes = prop_oneof![
                    2 => Just(vec![false; len]),
                    1 => proptest::collection::vec(proptest::bool::weighted(0.2), len),
                ];
                let others = proptest::collection::vec(
                    proptest::collection::vec(proptest::bool::weighted(0.4), n),
                    n_others,
                );
                (holes, others, 0..=n_others).prop_map(move |(mut holes, others, row)| {
                    holes[0] = false; // at least one valid token
                    Case {
                        heads,
                        head_dim,
                        landmarks,
                        conv,
                        holes,
                        offset,
                        n,
                        others,
                        row,
                        garbage,
                        seed,
                    }
                })
            },
        )
}

fn mask(rows: &[Vec<bool>], device: &Device) -> Tensor<2, Bool> {
    let n = rows[0].len();
    let flat: Vec<bool> = rows.iter().flatten().copied().collect();
    Tensor::from_bool(TensorData::new(flat, [rows.len(), n]), device)
}

/// Seeded uniform values in `[-1, 1)` on the host.
fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn check(case: &Case, device: &Device) -> Result<(), TestCaseError> {
    let d = case.heads * case.head_dim;
    let len = case.holes.len();
    let layer = NystromAttentionConfig::new(d, case.heads)
        .with_num_landmarks(case.landmarks)
        .with_conv_kernel_size(case.conv)
        .init(device);
    let sequence = noise(len * d, case.seed);

    // Alone: the sequence at its own length, masked only where it has holes.
    let alone_input = NystromInput::self_attn(tensor(sequence.clone(), [1, len, d], device));
    let alone_input = match case.holes.iter().any(|h| *h) {
        true => alone_input.mask_pad(mask(std::slice::from_ref(&case.holes), device)),
        false => alone_input,
    };
    let alone = values(&layer.forward(alone_input).context);

    // Batched: the sequence at `offset` in row `row`, garbage wherever the mask says padding.
    let mut rows = case.others.clone();
    let mut own = vec![true; case.n];
    own[case.offset..case.offset + len].copy_from_slice(&case.holes);
    rows.insert(case.row, own);
    let batch = rows.len();
    let mut x = noise(batch * case.n * d, case.seed ^ 0x5EED);
    for (r, row) in rows.iter().enumerate() {
        for (j, &padded) in row.iter().enumerate() {
            let valid_here = r == case.row && j >= case.offset && j < case.offset + len;
            for f in 0..d {
                let i = (r * case.n + j) * d + f;
                if valid_here {
                    x[i] = sequence[(j - case.offset) * d + f];
                }
                if padded {
                    x[i] = case.garbage.value(i);
                }
            }
        }
    }
    let batched_input = NystromInput::self_attn(tensor(x, [batch, case.n, d], device))
        .mask_pad(mask(&rows, device));
    let batched = values(&layer.forward(batched_input).context);

    for (p, &hole) in case.holes.iter().enumerate() {
        if hole {
            continue;
        }
        for f in 0..d {
            let a = alone[p * d + f];
            let b = batched[((case.row * case.n) + case.offset + p) * d + f];
            prop_assert!(
                (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                "position {p}, feature {f}: {a} alone, {b} batched"
            );
        }
    }
    for (r, row) in rows.iter().enumerate() {
        for (j, &padded) in row.iter().enumerate() {
            if !padded {
                let out = &batched[(r * case.n + j) * d..(r * case.n + j + 1) * d];
                prop_assert!(
                    out.iter().all(|v| v.is_finite()),
                    "valid position [{r}, {j}] is not finite: {out:?}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn a_sequence_encodes_the_same_alone_padded_or_batched() {
    proptest_on_devices(cases(), 40, 4, |case, device| check(&case, device));
}

/// A hundred valid tokens batched with a long sequence: before segments were cut over each
/// sequence's own length they got one landmark (`⌈100·m/n⌉`), a rank-one approximation.
#[test]
fn a_short_sequence_keeps_its_landmarks_beside_a_long_one() {
    let device = Device::flex();
    let (d, heads, m, short, long) = (8, 2, 16, 100, 3000);
    let layer = NystromAttentionConfig::new(d, heads)
        .with_num_landmarks(m)
        .init(&device);
    let sequence = noise(short * d, 7);
    let alone = layer.forward(NystromInput::self_attn(tensor(
        sequence.clone(),
        [1, short, d],
        &device,
    )));
    let mut x = noise(2 * long * d, 8);
    x[..short * d].copy_from_slice(&sequence);
    let rows = vec![
        (0..long).map(|j| j >= short).collect::<Vec<bool>>(),
        vec![false; long],
    ];
    let out = layer.forward(
        NystromInput::self_attn(tensor(x, [2, long, d], &device))
            .mask_pad(mask(&rows, &device))
            .return_kernels(),
    );
    let missing = (0..m)
        .filter(|s| {
            let kernels = out.kernels.as_ref().expect("Nyström path");
            // A missing landmark has a zero column in F for every query of the row.
            values(&kernels.f)[..short * m]
                .chunks(m)
                .all(|row| row[*s] == 0.0)
        })
        .count();
    assert_eq!(missing, 0, "every one of the {m} landmarks exists");
    let batched = values(&out.context);
    let alone = values(&alone.context);
    let err = alone
        .iter()
        .zip(&batched[..short * d])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-4, "alone vs batched differ by {err}");
}

/// Through the encoder (embeddings, layers, final norm): right padding keeps positions, so a
/// sequence's hidden states do not depend on its batch. Left padding shifts the position
/// embeddings, as in every BERT-style encoder, so it is not compared here.
#[test]
fn the_encoder_gives_a_sequence_the_same_states_in_any_batch() {
    let strategy = (1usize..=20, 0usize..=20, 1usize..=3, any::<u64>());
    proptest_on_devices(strategy, 12, 2, |(len, extra, batch, seed), device| {
        let device = device.clone();
        let encoder = NystromformerConfig::new(40, 16, 2, 2, 32)
            .with_num_landmarks(4)
            .with_conv_kernel_size(Some(3))
            .with_max_position_embeddings(64)
            .init(&device);
        let n = len + extra;
        let ids = |count: usize, seed: u64| -> Vec<i64> {
            noise(count, seed)
                .iter()
                .map(|u| ((u + 1.0) * 19.9) as i64)
                .collect()
        };
        let sequence = ids(len, seed);
        let alone = encoder.forward(EncoderInput::new(Tensor::<2, Int>::from_data(
            TensorData::new(sequence.clone(), [1, len]),
            &device,
        )));
        let mut all = ids(batch * n, seed ^ 1);
        all[..len].copy_from_slice(&sequence);
        let mut rows: Vec<Vec<bool>> = (1..batch)
            .map(|r| (0..n).map(|j| j >= n - (r * 5 % n)).collect())
            .collect();
        rows.insert(0, (0..n).map(|j| j >= len).collect());
        let batched = encoder.forward(
            EncoderInput::new(Tensor::<2, Int>::from_data(
                TensorData::new(all, [batch, n]),
                &device,
            ))
            .mask_pad(mask(&rows, &device)),
        );
        let (alone, batched) = (values(&alone), values(&batched));
        let hidden = 16;
        for i in 0..len * hidden {
            prop_assert!(
                (alone[i] - batched[i]).abs() < 1e-4,
                "token {}, feature {}: {} alone, {} batched",
                i / hidden,
                i % hidden,
                alone[i],
                batched[i]
            );
        }
        Ok(())
    });
}
