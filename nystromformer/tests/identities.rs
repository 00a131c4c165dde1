//! The algorithm's identities (NYSTROMFORMER.md) and exact attention as the reference, on every
//! backend compiled in.

mod common;

use burn::tensor::{Bool, Tensor, TensorData};
use common::{devices, max_abs_diff, randn, tensor, values};
use nystromformer::attention::landmarks::segment_means;
use nystromformer::attention::mask::MASKED_SCORE;
use nystromformer::attention::softmax_kernels::{kernel_a, kernel_b, kernel_f};
use nystromformer::attention::{
    explicit_softmax_attention, iterative_pinv, pinv_residual, softmax_attention,
};
use nystromformer::{NystromHeadsInput, NystromOptions, PinvInit, nystrom_attention};

/// With `m = n` every segment is one token, `F = A = B = softmax(QKᵀ/√d)`, and
/// `F A⁺ B V = A A⁺ A V = A V`: exact attention once the pseudo-inverse has converged.
#[test]
fn nystrom_with_one_token_per_landmark_is_exact_attention() {
    for (name, device) in devices() {
        let [b, h, n, d] = [2, 2, 8, 16];
        let q = randn([b, h, n, d], 1.0, 1, &device);
        let k = randn([b, h, n, d], 1.0, 2, &device);
        let v = randn([b, h, n, d], 1.0, 3, &device);
        let (exact, weights) = explicit_softmax_attention(q.clone(), k.clone(), v.clone(), None);

        let scale = (d as f32).powf(-0.25);
        let (q, k) = (q.mul_scalar(scale), k.mul_scalar(scale));
        let landmarks = segment_means(q.clone(), k.clone(), n, None);
        let f = kernel_f(q, landmarks.keys.clone(), None, MASKED_SCORE);
        let a = kernel_a(
            landmarks.queries.clone(),
            landmarks.keys,
            None,
            None,
            MASKED_SCORE,
        );
        let b_kernel = kernel_b(landmarks.queries, k, None, None, MASKED_SCORE);
        for kernel in [&f, &a, &b_kernel] {
            assert!(
                max_abs_diff(kernel, &weights) < 1e-5,
                "{name}: kernel differs from softmax"
            );
        }
        let z = iterative_pinv(a, 30, PinvInit::Exact);
        let nystrom = f.matmul(z.matmul(b_kernel.matmul(v)));
        let err = max_abs_diff(&nystrom, &exact);
        assert!(
            err <= 1e-4,
            "{name}: m = n differs from exact attention by {err}"
        );
    }
}

/// `n ≤ m`: the exact path, which must equal the explicit reference, padding included (padded
/// queries attend as zero vectors under the leak-free policy, so their rows do not depend on
/// what the padding holds).
#[test]
fn short_sequences_take_the_exact_path() {
    for (name, device) in devices() {
        let [b, h, n, d] = [2, 3, 5, 8];
        let q = randn([b, h, n, d], 1.0, 4, &device);
        let k = randn([b, h, n, d], 1.0, 5, &device);
        let v = randn([b, h, n, d], 1.0, 6, &device);
        let mask = Tensor::<2, Bool>::from_bool(
            TensorData::new(
                vec![
                    false, false, false, true, true, false, false, false, false, false,
                ],
                [b, n],
            ),
            &device,
        );
        let options = NystromOptions::new().with_num_landmarks(8);
        let input = NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone())
            .mask_pad(mask.clone())
            .return_kernels();
        let out = nystrom_attention(input, &options);
        let zero_padded_queries = q
            .clone()
            .mask_fill(mask.clone().reshape([b, 1, n, 1]).expand([b, h, n, d]), 0.0);
        let (reference, _) = explicit_softmax_attention(
            zero_padded_queries.clone(),
            k.clone(),
            v.clone(),
            Some(&mask),
        );
        assert!(
            out.kernels.is_none(),
            "{name}: the exact path has no kernels"
        );
        let err = max_abs_diff(&out.context, &reference);
        assert!(err <= 1e-4, "{name}: exact path off by {err}");
        let fused = softmax_attention(zero_padded_queries, k, v, Some(&mask));
        assert!(
            max_abs_diff(&fused, &reference) <= 1e-4,
            "{name}: burn attention differs"
        );
    }
}

/// `A Z A ≈ A` and `Z A Z ≈ Z` for the iterative pseudo-inverse, both initialisations, and a
/// residual `‖I − AZ‖` near zero for well-conditioned `A`.
#[test]
fn pseudo_inverse_satisfies_penrose_identities() {
    for (name, device) in devices() {
        let scores = randn([2, 2, 6, 6], 3.0, 7, &device);
        let a = burn::tensor::activation::softmax(scores, 3);
        for init in [PinvInit::Original, PinvInit::Exact] {
            let z = iterative_pinv(a.clone(), 20, init);
            let aza = a.clone().matmul(z.clone()).matmul(a.clone());
            let zaz = z.clone().matmul(a.clone()).matmul(z.clone());
            assert!(max_abs_diff(&aza, &a) < 1e-4, "{name} {init:?}: AZA != A");
            let zaz_err =
                max_abs_diff(&zaz, &z) / values(&z).iter().fold(1.0f32, |m, x| m.max(x.abs()));
            assert!(
                zaz_err < 1e-4,
                "{name} {init:?}: ZAZ != Z (relative {zaz_err})"
            );
            let residual = values(&pinv_residual(a.clone(), z));
            assert!(
                residual.iter().all(|r| *r < 1e-3),
                "{name} {init:?}: residual {residual:?}"
            );
        }
    }
}

/// The exact initialisation is `Z₀ = Aᵀ / ‖A‖₁` per matrix; the original one divides by the
/// largest column sum over the whole batch. Checked against the formula on the host.
#[test]
fn pseudo_inverse_initialisations_follow_their_formulas() {
    let device = burn::tensor::Device::flex();
    let [b, h, m] = [2, 2, 4];
    let a = burn::tensor::activation::softmax(randn([b, h, m, m], 2.0, 8, &device), 3);
    let host = values(&a);
    let column_sum = |mat: usize, col: usize| {
        (0..m)
            .map(|row| host[mat * m * m + row * m + col])
            .sum::<f32>()
    };
    let norm1: Vec<f32> = (0..b * h)
        .map(|mat| (0..m).map(|col| column_sum(mat, col)).fold(0.0, f32::max))
        .collect();
    let global = norm1.iter().copied().fold(0.0, f32::max);
    for (init, coefficient) in [
        (PinvInit::Exact, norm1.clone()),
        (PinvInit::Original, vec![global; b * h]),
    ] {
        let z0 = values(&iterative_pinv(a.clone(), 0, init));
        for mat in 0..b * h {
            for row in 0..m {
                for col in 0..m {
                    let expected = host[mat * m * m + col * m + row] / coefficient[mat];
                    let got = z0[mat * m * m + row * m + col];
                    assert!(
                        (got - expected).abs() < 1e-6,
                        "{init:?}: Z0[{mat}][{row}][{col}] = {got}, expected {expected}"
                    );
                }
            }
        }
    }
}

/// HF transformers' `iterative_inv` with both initialisations (tools/make_hf_fixtures.py).
#[test]
fn pseudo_inverse_matches_hf() {
    let text = std::fs::read_to_string(common::assets().join("hf/pinv.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let nested = |key: &str| -> (Vec<f32>, [usize; 4]) {
        let (flat, shape) = common::json_array(&json[key]);
        (flat, shape.try_into().expect("a rank-4 array"))
    };
    for (name, device) in devices() {
        let (a, dims) = nested("a");
        let a = tensor(a, dims, &device);
        for (init, key) in [
            (PinvInit::Original, "z_original"),
            (PinvInit::Exact, "z_exact"),
        ] {
            let (z, dims) = nested(key);
            let expected = tensor(z, dims, &device);
            let got = iterative_pinv(a.clone(), 6, init);
            let err = max_abs_diff(&got, &expected);
            assert!(err <= 1e-4, "{name} {init:?}: differs from HF by {err}");
        }
    }
}

/// Ragged segments (`n mod m ≠ 0`): token `j` averages into segment `⌊j·m/n⌋`.
#[test]
fn ragged_segments_average_contiguous_runs() {
    for (name, device) in devices() {
        let [n, m, d] = [10, 4, 3];
        let x = randn([1, 1, n, d], 1.0, 9, &device);
        let host = values(&x);
        let landmarks = segment_means(x.clone(), x, m, None);
        let got = values(&landmarks.queries);
        for segment in 0..m {
            let members: Vec<usize> = (0..n).filter(|j| j * m / n == segment).collect();
            assert!(members.len() == n / m || members.len() == n.div_ceil(m));
            for f in 0..d {
                let mean =
                    members.iter().map(|j| host[j * d + f]).sum::<f32>() / members.len() as f32;
                assert!(
                    (got[segment * d + f] - mean).abs() < 1e-5,
                    "{name}: segment {segment} feature {f}"
                );
            }
        }
    }
}

/// With landmarks approaching one per token, Nyström attention approaches exact attention (at
/// the default 6 iterations: run to full convergence, the pseudo-inverse of a nearly singular
/// `A` amplifies noise, which the truncated iteration damps); on the Nyström path the kernels
/// have their documented shapes.
#[test]
fn approximation_improves_with_landmarks_and_kernels_have_their_shapes() {
    for (name, device) in devices() {
        let [b, h, n, d] = [1, 2, 48, 8];
        let q = randn([b, h, n, d], 1.0, 10, &device);
        let k = randn([b, h, n, d], 1.0, 11, &device);
        let v = randn([b, h, n, d], 1.0, 12, &device);
        let (exact, _) = explicit_softmax_attention(q.clone(), k.clone(), v.clone(), None);
        let error = |m: usize| {
            let options = NystromOptions::new().with_num_landmarks(m);
            let input =
                NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone()).return_kernels();
            let out = nystrom_attention(input, &options);
            let kernels = out.kernels.expect("Nyström path returns kernels");
            assert_eq!(kernels.f.dims(), [b, h, n, m]);
            assert_eq!(kernels.a.dims(), [b, h, m, m]);
            assert_eq!(kernels.a_pinv.dims(), [b, h, m, m]);
            assert_eq!(kernels.b.dims(), [b, h, m, n]);
            if n % m == 0 {
                // A by hand: segment means by reshape, then softmax(Q̃ K̃ᵀ / √d).
                let means = |x: &Tensor<4>| x.clone().reshape([b, h, m, n / m, d]).mean_dim(3);
                let (q_tilde, k_tilde) = (means(&q).reshape([b, h, m, d]), means(&k));
                let scores = q_tilde
                    .matmul(k_tilde.reshape([b, h, m, d]).swap_dims(2, 3))
                    .div_scalar((d as f32).sqrt());
                let a = burn::tensor::activation::softmax(scores, 3);
                let err = max_abs_diff(&kernels.a, &a);
                assert!(err < 1e-5, "{name}: m = {m}: returned A off by {err}");
            }
            max_abs_diff(&out.context, &exact)
        };
        let (coarse, fine) = (error(4), error(44));
        assert!(
            fine < coarse / 2.0,
            "{name}: 44 landmarks ({fine}) not clearly better than 4 ({coarse})"
        );
    }
}
