//! The custom kernels against the tensor-op stages they replace, on wgpu (lavapipe in CI) and
//! flex (the fused CPU stages), and the whole attention with and without them against flex.

mod common;

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Device, FloatDType, Tensor, TensorData};
use common::{REQUIRE_WGPU, devices, mask, on, randn, relative_diff, values, wgpu_device};
use nystromformer::attention::iterative_pinv;
use nystromformer::attention::landmarks::Segments;
use nystromformer::attention::mask::MASKED_SCORE;
use nystromformer::attention::softmax_kernels::{kernel_a, kernel_b, kernel_f};
use nystromformer::kernels::{
    MAX_KERNEL_HEAD_DIM, MAX_KERNEL_LANDMARKS, custom_kernels_apply, fused_landmark_attention,
    fused_landmark_means, fused_landmark_values, fused_landmark_weights, fused_pinv,
};
use nystromformer::{MaskPolicy, NystromHeadsInput, NystromOptions, PinvInit, nystrom_attention};

/// The wgpu device when this build has the kernels; a skip is said out loud, and is an error
/// where CI demands the wgpu path.
fn kernel_device() -> Option<Device> {
    let device = wgpu_device()?;
    if cfg!(feature = "cube-kernels") {
        return Some(device);
    }
    if std::env::var(REQUIRE_WGPU).as_deref() == Ok("1") {
        panic!(
            "{REQUIRE_WGPU}=1 but this build lacks the `cube-kernels` feature (build with a GPU feature, e.g. --features wgpu)"
        );
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED custom kernels: built without a GPU feature (e.g. --features wgpu)"
    );
    None
}

/// Every device with custom kernels in this build: flex (with the `flex` feature) and the wgpu
/// device of [`kernel_device`].
fn kernel_devices() -> Vec<Device> {
    let flex = cfg!(feature = "flex-kernels").then(Device::flex);
    flex.into_iter().chain(kernel_device()).collect()
}

#[test]
fn kernels_apply_on_cube_devices_and_flex_and_under_autodiff_with_its_feature() {
    let flex = randn([1, 1, 4, 2], 1.0, 1, &Device::flex());
    assert_eq!(custom_kernels_apply(&flex), cfg!(feature = "flex-kernels"));
    let tracked = randn([1, 1, 4, 2], 1.0, 1, &Device::flex().autodiff());
    assert_eq!(
        custom_kernels_apply(&tracked),
        cfg!(all(feature = "flex-kernels", feature = "autodiff")),
        "autodiff routes through the extension only with its feature"
    );
    let square = randn([1, 1, 4, 4], 1.0, 2, &Device::flex());
    assert_eq!(
        fused_pinv(&square, 2, PinvInit::Exact).is_some(),
        cfg!(feature = "flex-kernels"),
        "flex runs the pseudo-inverse as one task per matrix"
    );
    let tracked_square = randn([1, 1, 4, 4], 1.0, 2, &Device::flex().autodiff());
    assert_eq!(
        fused_pinv(&tracked_square, 2, PinvInit::Exact).is_some(),
        cfg!(all(feature = "flex-kernels", feature = "autodiff")),
        "with a fused backward on flex"
    );
    let Some(device) = kernel_device() else {
        return;
    };
    assert!(custom_kernels_apply(&randn([1, 1, 4, 2], 1.0, 1, &device)));
    let tracked = randn([1, 1, 4, 2], 1.0, 1, &device.clone().autodiff());
    assert_eq!(custom_kernels_apply(&tracked), cfg!(feature = "autodiff"));
    let tracked_square = randn([1, 1, 4, 4], 1.0, 2, &device.clone().autodiff());
    assert_eq!(
        fused_pinv(&tracked_square, 2, PinvInit::Exact).is_some(),
        cfg!(feature = "autodiff"),
        "the pseudo-inverse kernel runs under autodiff, with its backward kernel"
    );
    // Beyond the kernels' shapes, tensor ops: head sizes above 128, more than 256 landmarks.
    let [m, d] = [4, MAX_KERNEL_HEAD_DIM];
    let rows = |n, d| randn([1, 1, n, d], 1.0, 3, &device);
    let takes = |d: usize, d_v: usize| {
        fused_landmark_attention(&rows(8, d), &rows(m, d), &rows(m, d_v), None).is_some()
    };
    assert!(takes(d, d), "head size {d} takes the kernel");
    assert!(
        !takes(d + 1, d) && !takes(d, d + 1),
        "larger heads fall back"
    );
    let takes = |d: usize, d_v: usize| {
        fused_landmark_values(&rows(m, d), &rows(8, d), &rows(8, d_v), None, None, -1e9).is_some()
    };
    assert!(takes(d, d) && !takes(d + 1, d) && !takes(d, d + 1));
    let square = |m| randn([1, 1, m, m], 1.0, 4, &device);
    assert!(fused_pinv(&square(MAX_KERNEL_LANDMARKS), 1, PinvInit::Exact).is_some());
    assert!(
        fused_pinv(&square(MAX_KERNEL_LANDMARKS + 1), 1, PinvInit::Exact).is_none(),
        "more landmarks than the pseudo-inverse kernel takes fall back"
    );
}

#[test]
fn the_cube_kernels_take_f16_and_keep_their_sums_in_f32() {
    let half = |device: &Device| randn([1, 1, 4, 2], 1.0, 1, device).cast(FloatDType::F16);
    assert!(
        !custom_kernels_apply(&half(&Device::flex())),
        "flex's fused stages are f32 only"
    );
    let Some(device) = kernel_device() else {
        return;
    };
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("SKIPPED f16 kernels: {device:?} has no f16");
        return;
    }
    assert!(custom_kernels_apply(&half(&device)));
    // Tracked f16 takes them too, with the `autodiff` feature: `fused_gradients.rs` checks its
    // gradients.
    assert_eq!(
        custom_kernels_apply(&half(&device.clone().autodiff())),
        cfg!(feature = "autodiff")
    );

    // Each stage against its f32 tensor ops: the f16 inputs and output each round to 2⁻¹¹
    // relative; sums kept in f16 over the 1 000 keys would add several times that.
    let [batch, heads, n, d, m] = [2, 2, 1000, 32, 16];
    let queries = randn([batch, heads, n, d], 1.0, 30, &device);
    let keys = head_split([batch, heads, n, d], 1.0, 31, &device);
    let v = head_split([batch, heads, n, d], 1.0, 32, &device);
    let landmark_queries = randn([batch, heads, m, d], 0.3, 33, &device);
    let landmark_keys = randn([batch, heads, m, d], 0.3, 34, &device);
    let weights = randn([batch, heads, m, d], 1.0, 35, &device);
    let f16 = |t: &Tensor<4>| t.clone().cast(FloatDType::F16);
    let padding: Vec<bool> = (0..batch * n).map(|i| i >= n && i % n >= 700).collect();
    let mask_pad = mask(padding.clone(), [batch, n], &device);
    let missing = missing_landmarks(m, &device).slice([0..batch, 0..m]);

    let values_half = fused_landmark_values(
        &f16(&landmark_queries),
        &f16(&keys),
        &f16(&v),
        Some(&mask_pad),
        Some(&missing),
        MASKED_SCORE as f32,
    )
    .unwrap();
    assert_eq!(values_half.dtype(), DType::F16);
    let reference = kernel_b(
        landmark_queries,
        keys.clone(),
        Some(&mask_pad),
        Some(&missing),
        MASKED_SCORE,
    )
    .matmul(v.clone());
    let diff = relative_diff(&values_half.cast(FloatDType::F32), &reference);
    assert!(diff < 2e-3, "B · V in f16: relative difference {diff}");

    let context_half =
        fused_landmark_attention(&f16(&queries), &f16(&landmark_keys), &f16(&weights), None)
            .unwrap();
    assert_eq!(context_half.dtype(), DType::F16);
    let reference = kernel_f(queries.clone(), landmark_keys, None, MASKED_SCORE).matmul(weights);
    let diff = relative_diff(&context_half.cast(FloatDType::F32), &reference);
    assert!(diff < 2e-3, "F · W in f16: relative difference {diff}");

    // The whole attention in f16 through the kernels (the pseudo-inverse in f32) against f32.
    let options = NystromOptions::new().with_num_landmarks(m);
    let run = |dtype: FloatDType, kernels: bool| {
        let input = NystromHeadsInput::self_attention(
            queries.clone().cast(dtype),
            keys.clone().cast(dtype),
            v.clone().cast(dtype),
        )
        .mask_pad(mask_pad.clone());
        let context =
            nystrom_attention(input, &options.clone().with_custom_kernels(kernels)).context;
        assert_eq!(context.dtype(), DType::from(dtype));
        context.cast(FloatDType::F32)
    };
    let reference = values(&run(FloatDType::F32, false));
    let [kernels, tensor_ops] = [true, false].map(|kernels| values(&run(FloatDType::F16, kernels)));
    let scale = reference.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    let errors = |half: &[f32]| {
        let errors = half.iter().zip(&reference).map(|(a, b)| (a - b).abs());
        let (max, sum) = errors.fold((0.0f32, 0.0f32), |(max, sum), e| (max.max(e), sum + e));
        (max / scale, sum / half.len() as f32 / scale)
    };
    let ((max, mean), (ops_max, ops_mean)) = (errors(&kernels), errors(&tensor_ops));
    eprintln!(
        "f16 attention against f32, relative to the largest output: kernels max {max:e} mean \
         {mean:e}; tensor ops max {ops_max:e} mean {ops_mean:e}"
    );
    assert!(
        max < 1e-2,
        "attention in f16 with kernels: relative difference {max}"
    );
    // Both round their output to f16, but sum differently: equal everywhere would mean that
    // the kernels did not run.
    assert_ne!(
        kernels, tensor_ops,
        "the f16 attention ran without its kernels"
    );
}

#[test]
fn fused_pinv_matches_the_tensor_op_iteration() {
    for device in kernel_devices() {
        pinv_case(&device);
    }
}

/// The largest `m` the CubeCL kernel takes, against the tensor-op iteration on flex (lavapipe
/// autotunes its own matmuls at this size for over a minute).
#[test]
fn the_pinv_kernel_takes_its_largest_m() {
    let Some(device) = kernel_device() else {
        return;
    };
    let m = MAX_KERNEL_LANDMARKS;
    let a = softmax(randn([1, 2, m, m], 1.0, 6, &Device::flex()), 3);
    let fused = fused_pinv(&on(&a, &device), 6, PinvInit::Exact).expect("the kernel applies");
    let reference = nystromformer::attention::iterative_pinv(a, 6, PinvInit::Exact);
    let diff = relative_diff(&on(&fused, &Device::flex()), &reference);
    assert!(diff < 1e-4, "m = {m}: relative difference {diff}");
}

/// `W = A⁺ (B V)` at the largest `m` and head size the kernels take, against the tensor ops on
/// flex. (With its dot products rolled, this shape ran past llvmpipe's limit of 65 535 loop
/// iterations per invocation, which silently ends the invocation: the last rows of `W` were
/// wrong on lavapipe.)
#[test]
fn the_weights_kernel_takes_its_largest_m_and_head_size() {
    let Some(device) = kernel_device() else {
        return;
    };
    let flex = Device::flex();
    let [m, d] = [MAX_KERNEL_LANDMARKS, MAX_KERNEL_HEAD_DIM];
    let queries = randn([1, 1, m, d], 0.3, 60, &flex);
    let keys = randn([1, 1, m, d], 0.3, 61, &flex);
    let products = randn([1, 1, m, d], 1.0, 62, &flex);
    let fused = fused_landmark_weights(
        &on(&queries, &device),
        &on(&keys, &device),
        &on(&products, &device),
        None,
        None,
        6,
        PinvInit::Exact,
    )
    .expect("the kernel applies");
    let a = kernel_a(queries, keys, None, None, MASKED_SCORE);
    let reference = iterative_pinv(a, 6, PinvInit::Exact).matmul(products);
    let diff = relative_diff(&on(&fused, &flex), &reference);
    assert!(diff < 1e-4, "m = {m}, d = {d}: relative difference {diff}");
}

fn pinv_case(device: &Device) {
    let device = device.clone();
    for (m, seed) in [(1, 3), (7, 4), (64, 5)] {
        // Row-stochastic like a real A; the second matrix of the batch sharper than the first.
        let scores = randn([2, 3, m, m], 1.0, seed, &device);
        let sharpness =
            Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 4.0], [2, 1, 1, 1]), &device);
        let a = softmax(scores * sharpness, 3);
        for init in [PinvInit::Original, PinvInit::Exact] {
            for iterations in [0, 1, 6] {
                let fused = fused_pinv(&a, iterations, init).expect("the kernel applies");
                let reference =
                    nystromformer::attention::iterative_pinv(a.clone(), iterations, init);
                let diff = relative_diff(&fused, &reference);
                assert!(
                    diff < 1e-4,
                    "{device:?}, m = {m}, {init:?}, {iterations} iterations: relative difference {diff}"
                );
            }
        }
    }
    // All landmarks missing: A = 0 inverts to 0, not NaN.
    let zero = fused_pinv(&Tensor::zeros([1, 2, 5, 5], &device), 6, PinvInit::Exact).unwrap();
    assert!(values(&zero).iter().all(|x| *x == 0.0));
}

/// What [`Segments`] should hold for one sequence's mask, computed on the host: the positions of
/// the valid tokens (the order), each position's rank (`n` for padding), the length, which of
/// `m` segments hold no rank (`⌈s·L/m⌉` is each segment's first) and whether `L ≤ m`.
fn host_segments(padded: &[bool], m: usize) -> (Vec<i64>, Vec<i64>, i64, Vec<bool>, bool) {
    let n = padded.len();
    let valid: Vec<i64> = (0..n as i64).filter(|&p| !padded[p as usize]).collect();
    let length = valid.len();
    let mut rank = vec![n as i64; n];
    for (r, &p) in valid.iter().enumerate() {
        rank[p as usize] = r as i64;
    }
    let mut order = valid;
    order.resize(n, 0);
    let start = |s: usize| (s * length).div_ceil(m);
    let missing = (0..m).map(|s| start(s + 1) == start(s)).collect();
    (order, rank, length as i64, missing, length <= m)
}

#[test]
fn fused_ranked_segments_match_the_host_and_the_tensor_ops() {
    use burn::tensor::Int;
    use nystromformer::kernels::fused_ranked_segments;

    let ints =
        |t: Tensor<2, Int>| -> Vec<i64> { t.into_data().convert::<i64>().try_to_vec().unwrap() };
    // Booleans are stored as u32 on wgpu; read through integers.
    let bools =
        |t: Tensor<2, Bool>| -> Vec<bool> { ints(t.int()).iter().map(|&v| v != 0).collect() };
    let flex = Device::flex();
    let tiny = mask(vec![false, true, false], [1, 3], &flex);
    assert!(
        fused_ranked_segments(&tiny, 2, FloatDType::F32).is_none(),
        "flex cuts them as tensor ops"
    );
    let Some(device) = kernel_device() else {
        return;
    };
    let tracked = mask(vec![false, true, false], [1, 3], &device.clone().autodiff());
    assert_eq!(
        fused_ranked_segments(&tracked, 2, FloatDType::F32).is_some(),
        cfg!(feature = "autodiff")
    );

    // (batch, n, m, padded?): holes and padding on both sides, all and none padded, short
    // sequences, runs of the kernel's units that are empty (n < 256) or uneven (n = 1000),
    // three million tokens (llvmpipe ends a loop at 65 535 iterations) and 65 537 sequences.
    type Case = (usize, usize, usize, fn(usize, usize) -> bool);
    let cases: [Case; 7] = [
        (5, 10, 4, |b, j| match b {
            0 => j < 3,
            1 => j == 2 || j >= 6,
            2 => true,
            3 => false,
            _ => j % 3 != 0,
        }),
        (3, 1000, 64, |b, j| {
            (j * 7 + b * 13) % 11 < 3 || j >= 1000 - 97 * b
        }),
        (2, 300, 255, |b, j| b == 1 && j >= 60),
        (1, 65, 64, |_, j| j == 64),
        (2, 3_000_017, 63, |b, j| {
            (j + b) % 7 == 0 || (b == 1 && j < 1_000_000)
        }),
        // More sequences than a one-dimensional grid holds (WebGPU: 65 535 cubes).
        (65_537, 3, 2, |b, j| (b + j) % 3 == 0),
        // More segments than a cube has units: each unit flags several.
        (2, 2000, 300, |b, j| j % 5 == b || j >= 1900),
    ];
    // The float flags of the mask and of the missing segments, as `1.0` at `true`.
    let floats = |t: Tensor<2>| -> Vec<bool> {
        let values: Vec<f32> = t.into_data().convert::<f32>().try_to_vec().unwrap();
        assert!(values.iter().all(|&v| v == 0.0 || v == 1.0), "flags");
        values.iter().map(|&v| v == 1.0).collect()
    };
    for (i, (batch, n, m, padded)) in cases.into_iter().enumerate() {
        let flags: Vec<bool> = (0..batch * n).map(|i| padded(i / n, i % n)).collect();
        let mask_pad = mask(flags.clone(), [batch, n], &device);
        // The flags in the attention's type: f16 for one case.
        let dtype = [FloatDType::F32, FloatDType::F16][usize::from(i == 1)];
        let segments = fused_ranked_segments(&mask_pad, m, dtype).expect("applies");
        assert_eq!(segments.padding_flags.dtype(), dtype.into());
        assert_eq!(
            floats(segments.padding_flags),
            flags,
            "({batch}, {n}, {m}): padding"
        );
        let missing_flags = floats(segments.missing_flags);
        let (ranks, missing, short) = (segments.ranks, segments.missing, segments.short);
        let (order, rank) = (ints(ranks.order), ints(ranks.rank));
        let lengths = ints(ranks.lengths.reshape([1, batch]));
        let (missing, short) = (bools(missing), bools(short.reshape([1, batch])));
        assert_eq!(missing_flags, missing, "({batch}, {n}, {m}): missing flags");
        for b in 0..batch {
            let (want_order, want_rank, want_length, want_missing, want_short) =
                host_segments(&flags[b * n..(b + 1) * n], m);
            let case = format!("batch {b} of ({batch}, {n}, {m})");
            assert_eq!(lengths[b], want_length, "{case}: length");
            assert!(rank[b * n..(b + 1) * n] == want_rank[..], "{case}: rank");
            assert!(order[b * n..(b + 1) * n] == want_order[..], "{case}: order");
            assert_eq!(
                missing[b * m..(b + 1) * m],
                want_missing[..],
                "{case}: missing"
            );
            assert_eq!(short[b], want_short, "{case}: short");
        }
        // The tensor ops cut the same segments (their prefix sums are exact to n = 65 535·256).
        if n < 10_000 {
            let tensor_ops = Segments::new(n, m, Some(&mask_pad), FloatDType::F32, &device);
            let fused =
                Segments::new_with_kernels(n, m, Some(&mask_pad), FloatDType::F32, &device, true);
            let [expected, got] = [&tensor_ops, &fused].map(|s| {
                let ranks = s.ranks().unwrap();
                (ints(ranks.order.clone()), ints(ranks.rank.clone()))
            });
            assert_eq!(got, expected, "({batch}, {n}, {m})");
        }
    }

    // A transposed mask (strided rows) reads each sequence through its strides.
    let columns: Vec<bool> = (0..700 * 2).map(|i| (i / 2 + i % 2) % 4 == 0).collect();
    let transposed = mask(columns.clone(), [700, 2], &device).transpose();
    let ranks = fused_ranked_segments(&transposed, 16, FloatDType::F32)
        .unwrap()
        .ranks;
    let rows: Vec<Vec<bool>> = (0..2)
        .map(|b| (0..700).map(|j| columns[j * 2 + b]).collect())
        .collect();
    let want: Vec<i64> = rows
        .iter()
        .flat_map(|row| host_segments(row, 16).1)
        .collect();
    assert_eq!(ints(ranks.rank), want, "transposed");

    // A mask broadcast over the batch (stride 0) reads the one row for every sequence.
    let row: Vec<bool> = (0..700).map(|j| j % 5 == 1).collect();
    let broadcast = mask(row.clone(), [1, 700], &device).expand([3, 700]);
    let ranks = fused_ranked_segments(&broadcast, 16, FloatDType::F32)
        .unwrap()
        .ranks;
    let (_, want_rank, ..) = host_segments(&row, 16);
    assert_eq!(ints(ranks.rank), [&want_rank[..]; 3].concat());
}

#[test]
fn fused_landmark_means_match_the_segment_means() {
    // The kernel runs on CubeCL devices, under autodiff too (`fused_gradients.rs` checks its
    // gradients); flex has its own fused means.
    let rows = |n, device: &Device| randn([1, 1, n, 2], 1.0, 3, device);
    let equal = |device: &Device| Segments::new(8, 4, None, FloatDType::F32, device);
    for device in [Device::flex(), Device::flex().autodiff()] {
        let segments = equal(&device);
        let fused = fused_landmark_means(
            &rows(8, &device),
            &rows(8, &device),
            [&segments, &segments],
            0.5,
        );
        assert!(fused.is_none(), "{device:?}");
    }
    let Some(device) = kernel_device() else {
        return;
    };
    let tracked = rows(8, &device.clone().autodiff());
    let segments = equal(&tracked.device());
    assert_eq!(
        fused_landmark_means(&tracked, &tracked, [&segments, &segments], 0.5).is_some(),
        cfg!(feature = "autodiff")
    );

    // Cross-attention lengths (segments of 5 queries and 8 keys), the queries a strided head
    // split, against the tensor-op means on flex.
    let flex = Device::flex();
    let [batch, heads, d, m] = [2, 3, 16, 8];
    let [n_q, n_k] = [40, 64];
    let scale = 0.25;
    let q = head_split([batch, heads, n_q, d], 1.0, 50, &device);
    let k = randn([batch, heads, n_k, d], 1.0, 51, &device);
    let means =
        |x: &Tensor<4>, n| Segments::new(n, m, None, FloatDType::F32, &flex).mean(on(x, &flex));
    let segments = [n_q, n_k].map(|n| Segments::new(n, m, None, FloatDType::F32, &device));
    let [landmark_queries, scaled_queries, scaled_keys] =
        fused_landmark_means(&q, &k, [&segments[0], &segments[1]], scale)
            .expect("the kernel applies");
    let expected = [
        means(&q, n_q),
        means(&q, n_q).mul_scalar(scale),
        means(&k, n_k).mul_scalar(scale),
    ];
    let got = [landmark_queries, scaled_queries, scaled_keys];
    for (name, (got, expected)) in ["Q̃", "Q̃ · scale", "K̃ · scale"]
        .iter()
        .zip(got.iter().zip(&expected))
    {
        assert_eq!(got.dims(), [batch, heads, m, d], "{name}");
        let diff = relative_diff(&on(got, &flex), expected);
        assert!(diff < 1e-6, "{name}: relative difference {diff}");
    }

    // f16 in and out, summed in f32.
    if device.supports_dtype(FloatDType::F16) {
        let half = |x: &Tensor<4>| x.clone().cast(FloatDType::F16);
        let [landmark_queries, ..] =
            fused_landmark_means(&half(&q), &half(&k), [&segments[0], &segments[1]], scale)
                .unwrap();
        assert_eq!(landmark_queries.dtype(), DType::F16);
        let diff = relative_diff(
            &on(&landmark_queries.cast(FloatDType::F32), &flex),
            &expected[0],
        );
        assert!(diff < 2e-3, "f16: relative difference {diff}");

        // Ranked segments (padding: the last 7 queries of the second sequence) in f16.
        let padded: Vec<bool> = (0..batch * n_q).map(|i| i >= 2 * n_q - 7).collect();
        let ranked = |device: &Device| {
            let mask = mask(padded.clone(), [batch, n_q], device);
            Segments::new(n_q, m, Some(&mask), FloatDType::F32, device)
        };
        let [landmark_queries, ..] = fused_landmark_means(
            &half(&q),
            &half(&k),
            [&ranked(&device), &segments[1]],
            scale,
        )
        .unwrap();
        let expected = ranked(&flex).mean(on(&q, &flex));
        let diff = relative_diff(
            &on(&landmark_queries.cast(FloatDType::F32), &flex),
            &expected,
        );
        assert!(diff < 2e-3, "f16, ranked: relative difference {diff}");
    }
}

#[test]
fn fused_landmark_weights_match_a_pinv_times_values() {
    // The one kernel runs on CubeCL devices, under autodiff too (its backward is one more);
    // elsewhere the attention keeps the separate stages.
    let square = |device: &Device| randn([1, 1, 4, 4], 1.0, 2, device);
    for device in [Device::flex(), Device::flex().autodiff()] {
        let (a, values) = (square(&device), square(&device));
        let fused = fused_landmark_weights(&a, &a, &values, None, None, 6, PinvInit::Exact);
        assert!(fused.is_none(), "{device:?}");
    }
    let Some(device) = kernel_device() else {
        return;
    };
    let tracked = square(&device.clone().autodiff());
    let fused =
        fused_landmark_weights(&tracked, &tracked, &tracked, None, None, 6, PinvInit::Exact);
    assert!(fused.is_some(), "autodiff takes the kernel");
    landmark_weights_case(&device);
}

/// `W = A⁺ (B V)` against `kernel_a`, `iterative_pinv` and a product as tensor ops on flex
/// (lavapipe would autotune its own matmuls for each shape): m = 1, one that fills no 16 × 16
/// block of the kernel's grid, and 64; head sizes that differ between keys and values; every
/// landmark, some missing on either side or both (cross-attention), none at all; 0 and 6
/// iterations.
fn landmark_weights_case(device: &Device) {
    let flex = Device::flex();
    let [batch, heads, d, d_v] = [3, 2, 16, 8];
    for (m, seed) in [(1, 40), (7, 41), (64, 42)] {
        let queries = randn([batch, heads, m, d], 1.0, seed, &flex);
        let keys = randn([batch, heads, m, d], 0.5, seed + 10, &flex);
        let products = randn([batch, heads, m, d_v], 1.0, seed + 20, &flex);
        let missing = missing_landmarks(m, &flex);
        let masks = [
            (None, None),
            (Some(&missing), Some(&missing)),
            (Some(&missing), None),
            (None, Some(&missing)),
        ];
        let fused = |missing_queries: Option<&Tensor<2, Bool>>,
                     missing_keys: Option<&Tensor<2, Bool>>,
                     iterations,
                     init| {
            // Every mask here is `missing`.
            let moved = |mask: Option<&Tensor<2, Bool>>| mask.map(|_| missing_landmarks(m, device));
            fused_landmark_weights(
                &on(&queries, device),
                &on(&keys, device),
                &on(&products, device),
                moved(missing_queries).as_ref(),
                moved(missing_keys).as_ref(),
                iterations,
                init,
            )
            .map(|weights| on(&weights, &flex))
        };
        for (missing_queries, missing_keys) in masks {
            for iterations in [0, 6] {
                let a = kernel_a(
                    queries.clone(),
                    keys.clone(),
                    missing_queries,
                    missing_keys,
                    MASKED_SCORE,
                );
                let reference =
                    iterative_pinv(a, iterations, PinvInit::Exact).matmul(products.clone());
                let fused = fused(missing_queries, missing_keys, iterations, PinvInit::Exact)
                    .expect("the fused stage applies");
                let diff = relative_diff(&fused, &reference);
                assert!(
                    diff < 1e-4,
                    "{device:?}, m = {m}, missing queries {}, keys {}, {iterations} iterations: \
                     relative difference {diff}",
                    missing_queries.is_some(),
                    missing_keys.is_some()
                );
            }
        }
        // Without any landmark (sequence 2), W is zero.
        let fused_all = fused(Some(&missing), Some(&missing), 6, PinvInit::Exact).unwrap();
        let last = &values(&fused_all)[2 * heads * m * d_v..];
        assert!(last.iter().all(|x| *x == 0.0), "m = {m}: {last:?}");
        // The batch-wide coefficient of PinvInit::Original stays on the separate stages.
        assert!(fused(None, None, 6, PinvInit::Original).is_none());
    }
}

#[test]
fn fused_landmark_attention_matches_softmax_times_weights() {
    // One block of query rows, and several with a ragged last one (flex's blocks are 128 rows,
    // the CubeCL kernel's cubes 64); m = 5 fits one tile of landmarks, m = 45 takes two with a
    // ragged last one (tiles of 32 at these head sizes).
    for device in kernel_devices() {
        for (n, m) in [(37, 5), (300, 5), (130, 45)] {
            landmark_attention_case(&device, n, m);
        }
    }
}

/// `[batch, heads, rows, d]` as the head split gives it: a strided view of `[batch, rows, heads,
/// d]`, which the kernels read in place.
fn head_split(shape: [usize; 4], std: f32, seed: u64, device: &Device) -> Tensor<4> {
    let [batch, heads, rows, d] = shape;
    randn([batch, rows, heads, d], std, seed, device).swap_dims(1, 2)
}

/// Sequence 0: every landmark; 1: the second and the last missing; 2: none at all (a fully
/// padded sequence).
fn missing_landmarks(m: usize, device: &Device) -> Tensor<2, Bool> {
    let some_missing = (0..m).map(|j| j == 1 || j == m - 1).collect::<Vec<_>>();
    mask(
        [vec![false; m], some_missing, vec![true; m]].concat(),
        [3, m],
        device,
    )
}

fn landmark_attention_case(device: &Device, n: usize, m: usize) {
    let device = device.clone();
    let [batch, heads, d, d_v] = [3, 2, 16, 8];
    let keys = randn([batch, heads, m, d], 0.5, 7, &device);
    let weights = randn([batch, heads, m, d_v], 1.0, 8, &device);
    let missing = missing_landmarks(m, &device);
    for strided in [false, true] {
        let q = if strided {
            head_split([batch, heads, n, d], 1.0, 6, &device)
        } else {
            randn([batch, heads, n, d], 1.0, 6, &device)
        };
        for missing in [None, Some(&missing)] {
            let fused = fused_landmark_attention(&q, &keys, &weights, missing).unwrap();
            let reference =
                kernel_f(q.clone(), keys.clone(), missing, MASKED_SCORE).matmul(weights.clone());
            let diff = relative_diff(&fused, &reference);
            assert!(
                diff < 1e-5,
                "{device:?}, n = {n}, m = {m}, strided {strided}, mask {}: relative difference {diff}",
                missing.is_some()
            );
        }
        let fused = fused_landmark_attention(&q, &keys, &weights, Some(&missing)).unwrap();
        let last: Vec<f32> = values(&fused)[2 * heads * n * d_v..].to_vec();
        assert!(last.iter().all(|x| *x == 0.0), "no landmark: zero context");
    }
}

#[test]
fn fused_landmark_values_match_softmax_times_values() {
    for device in kernel_devices() {
        landmark_values_case(&device);
    }
}

fn landmark_values_case(device: &Device) {
    let device = device.clone();
    let [batch, heads, d, d_v] = [3, 2, 16, 8];
    // One chunk of keys, and several with a ragged last one (the kernels' chunks are 256 keys);
    // m = 4 takes one cube of landmarks per chunk, m = 150 two (128 landmarks per cube), and
    // n = 37 a ragged tile of keys (32 keys per tile at these head sizes). The keys and values
    // are strided views, as the head split gives them, in every case but the first.
    for (n, m, strided) in [
        (37, 4, false),
        (37, 4, true),
        (600, 4, true),
        (300, 150, true),
    ] {
        let queries = randn([batch, heads, m, d], 0.5, 20, &device);
        let (k, v) = if strided {
            (
                head_split([batch, heads, n, d], 1.0, 21, &device),
                head_split([batch, heads, n, d_v], 1.0, 22, &device),
            )
        } else {
            (
                randn([batch, heads, n, d], 1.0, 21, &device),
                randn([batch, heads, n, d_v], 1.0, 22, &device),
            )
        };
        // Sequence 0 unpadded, 1 padded from n/2 (whole chunks padded when n = 600), 2 fully.
        let padding: Vec<bool> = (0..batch * n)
            .map(|i| (i / n == 1 && i % n >= n / 2) || i / n == 2)
            .collect();
        let mask_pad = mask(padding, [batch, n], &device);
        let missing = missing_landmarks(m, &device);
        for (mask_pad, missing) in [(None, None), (Some(&mask_pad), Some(&missing))] {
            let fused =
                fused_landmark_values(&queries, &k, &v, mask_pad, missing, MASKED_SCORE as f32)
                    .unwrap();
            let reference = kernel_b(queries.clone(), k.clone(), mask_pad, missing, MASKED_SCORE)
                .matmul(v.clone());
            let diff = relative_diff(&fused, &reference);
            assert!(
                diff < 1e-5,
                "{device:?}, n = {n}, m = {m}, strided {strided}, masks {}: relative difference {diff}",
                mask_pad.is_some()
            );
        }
    }
}

/// Past `MAX_KERNEL_HEAD_DIM` the softmax products fall back to tensor ops on CubeCL devices,
/// in inference and training, with the same result as with the kernels off (it panicked there
/// before).
#[test]
fn head_sizes_past_the_kernels_fall_back_to_the_tensor_ops() {
    let Some(device) = kernel_device() else {
        return;
    };
    let flex = Device::flex();
    let [batch, heads, n, d, m] = [1, 1, 40, MAX_KERNEL_HEAD_DIM + 32, 8];
    let [q, k, v] = [70, 71, 72].map(|seed| randn([batch, heads, n, d], 1.0, seed, &flex));
    for device in [device.clone(), device.autodiff()] {
        let run = |kernels: bool| {
            let track = |x: &Tensor<4>| match device.is_autodiff() {
                true => on(x, &device).require_grad(),
                false => on(x, &device),
            };
            let [q, k, v] = [&q, &k, &v].map(track);
            let input = NystromHeadsInput::self_attention(q.clone(), k, v);
            let options = NystromOptions::new()
                .with_num_landmarks(m)
                .with_custom_kernels(kernels);
            let context = nystrom_attention(input, &options).context;
            let grad = device.is_autodiff().then(|| {
                let grads = context.clone().sum().backward();
                on(&q.grad(&grads).expect("q is tracked"), &flex)
            });
            (on(&context.inner(), &flex), grad)
        };
        let ((fused, fused_grad), (reference, reference_grad)) = (run(true), run(false));
        let diff = relative_diff(&fused, &reference);
        assert!(
            diff < 1e-5,
            "{device:?}: d = {d}: relative difference {diff}"
        );
        if let (Some(fused), Some(reference)) = (fused_grad, reference_grad) {
            let diff = relative_diff(&fused, &reference);
            assert!(
                diff < 1e-4,
                "{device:?}: d = {d}: gradient differs by {diff}"
            );
        }
    }
}

#[test]
fn attention_with_and_without_kernels_agrees_with_flex() {
    let Some(_) = kernel_device() else {
        return;
    };
    let [batch, heads, d] = [2, 2, 16];
    for (n, m) in [(50, 8), (64, 8), (9, 8), (130, 64)] {
        let flex = Device::flex();
        let q = randn([batch, heads, n, d], 1.0, 10 + n as u64, &flex);
        let k = randn([batch, heads, n, d], 1.0, 11 + n as u64, &flex);
        let v = randn([batch, heads, n, d], 1.0, 12 + n as u64, &flex);
        // Sequence 1 padded after its first third, under both policies; and without a mask
        // where m divides n, so that the equal segments' kernel runs too.
        let padding: Vec<bool> = (0..batch * n).map(|i| i >= n && i % n >= n / 3).collect();
        let mut cases: Vec<_> = [MaskPolicy::LeakFree, MaskPolicy::HfCompatible]
            .map(|policy| (Some(padding.clone()), policy))
            .into();
        if n % m == 0 {
            cases.push((None, MaskPolicy::LeakFree));
        }
        for (padding, policy) in cases {
            let options = NystromOptions::new()
                .with_num_landmarks(m)
                .with_mask_policy(policy);
            let run = |device: &Device, kernels: bool| {
                let input = NystromHeadsInput::self_attention(
                    on(&q, device),
                    on(&k, device),
                    on(&v, device),
                );
                let input = match &padding {
                    Some(padding) => input.mask_pad(mask(padding.clone(), [batch, n], device)),
                    None => input,
                };
                let out = nystrom_attention(input, &options.clone().with_custom_kernels(kernels));
                on(&out.context, &flex)
            };
            let reference = run(&flex, false);
            for (name, device) in devices() {
                for kernels in [false, true] {
                    let diff = relative_diff(&run(&device, kernels), &reference);
                    assert!(
                        diff < 1e-4,
                        "n = {n}, m = {m}, {policy:?}, mask {}, {name}, kernels {kernels}: {diff}",
                        padding.is_some()
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(
    expected = "fused_landmark_attention: weights has shape [1, 2, 3, 4], expected [1, 2, 5, _]"
)]
fn kernel_calls_name_the_argument_with_a_wrong_shape() {
    // Checked on every device, before any kernel could read out of bounds.
    let device = Device::flex();
    let q = randn([1, 2, 9, 4], 1.0, 30, &device);
    let keys = randn([1, 2, 5, 4], 1.0, 31, &device);
    let weights = randn([1, 2, 3, 4], 1.0, 32, &device);
    fused_landmark_attention(&q, &keys, &weights, None);
}
