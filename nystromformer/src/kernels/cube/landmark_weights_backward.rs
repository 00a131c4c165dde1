//! The backward of `W = A⁺ (B V)` from the landmarks ([`super::landmark_weights`]) in one
//! launch, one cube per matrix: the gradients of the landmark queries, the landmark keys and
//! `B V` for the gradient `dW`, and of the values' means that a short sequence (at most `m`
//! valid keys) takes as its weights, which get that sequence's `dW` while the others get zero.
//!
//! As tensor ops, the training step differentiates `A`'s masked softmax, the coefficient's column
//! sums and maximum, and the product with `B V` around the pseudo-inverse: a few dozen launches on
//! `m × m` matrices. Here one cube recomputes `A` and `c` as the forward kernel does, replays the
//! iteration and walks it back ([`super::pinv_backward`]'s steps), then:
//!
//! ```text
//! d(B V) = Zᵀ dW,   dZ = dW (B V)ᵀ                       (W = Z (B V))
//! dA = (the walk back's) + Gᵀ / c,   dc = −Σ G ∘ Z₀ / c   (G the gradient of Z₀ = Aᵀ / c)
//! dA[:, j*] += dc                      (c = the column sum of column j*, if above its floor)
//! dS = A ∘ (dA − rowsum(dA ∘ A))       (A = softmax(S), masked entries zero in A)
//! dQ̃ = dS K̃,   dK̃ = dSᵀ Q̃
//! ```

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::blocks::GRID;
use super::flags_or;
use super::landmark_weights::{ShortSequences, is_short, landmark_softmax, norm_coefficient};
use super::pinv_backward::{
    close_walk, gradient_slot, replay, sum_slot, walk_back, work_slots, z_slot,
};
use crate::attention::pinv::MIN_COEFFICIENT;
use crate::kernels::flags::Flags;
use crate::kernels::segment_rows::SegmentRows;

/// Launches the kernel: `(dQ̃, dK̃, d(B V), dṼ)` in the landmark queries' type, for the gradient
/// `grad` of the weights, `dṼ` that of the short sequences' value means (see
/// [`PinvOps::landmark_weights_backward`](crate::kernels::extension::PinvOps::landmark_weights_backward));
/// the arguments as [`super::landmark_weights::launch`] takes them, less the values (a short
/// sequence's gradient leaves as `dṼ`, which the caller spreads over them).
#[allow(clippy::too_many_arguments)]
pub fn launch(
    landmark_queries: CubeTensor,
    landmark_keys: CubeTensor,
    landmark_values: CubeTensor,
    missing_queries: Flags<CubeBackend>,
    missing_keys: Flags<CubeBackend>,
    key_rows: SegmentRows<CubeBackend>,
    iterations: usize,
    grad: CubeTensor,
) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
    let [landmark_queries, landmark_keys, landmark_values, grad] =
        [landmark_queries, landmark_keys, landmark_values, grad].map(into_contiguous);
    let short = ShortSequences::new(key_rows, landmark_values.clone(), &landmark_values);
    let masked = [missing_queries.is_present(), missing_keys.is_present()];
    let missing_queries = flags_or(missing_queries, &landmark_queries);
    let missing_keys = flags_or(missing_keys, &landmark_queries);
    let [batch, heads, m, head_dim] = landmark_queries.meta.shape().dims::<4>();
    let value_dim = landmark_values.meta.shape()[3];
    let matrices = batch * heads;

    let client = landmark_queries.client.clone();
    let device = landmark_queries.device.clone();
    let dtype = landmark_queries.dtype;
    let empty = |shape: Shape, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype)
    };
    let query_grad = empty(landmark_queries.meta.shape().clone(), dtype);
    let key_grad = empty(landmark_keys.meta.shape().clone(), dtype);
    let value_grad = empty(landmark_values.meta.shape().clone(), dtype);
    let short_grad = empty(landmark_values.meta.shape().clone(), dtype);
    // The iteration's slots, and one more for the column sums and then `dS`.
    let work = empty(
        Shape::new([matrices, work_slots(iterations) + 1, m, m]),
        DType::F32,
    );
    landmark_weights_backward_kernel::launch(
        &client,
        CubeCount::new_1d(matrices as u32),
        CubeDim::new_1d((GRID * GRID) as u32),
        landmark_queries.into_tensor_arg(),
        landmark_keys.into_tensor_arg(),
        landmark_values.into_tensor_arg(),
        missing_queries.into_tensor_arg(),
        missing_keys.into_tensor_arg(),
        short.lengths.into_tensor_arg(),
        grad.into_tensor_arg(),
        query_grad.clone().into_tensor_arg(),
        key_grad.clone().into_tensor_arg(),
        value_grad.clone().into_tensor_arg(),
        short_grad.clone().into_tensor_arg(),
        work.into_tensor_arg(),
        iterations,
        m,
        head_dim,
        value_dim,
        masked[0],
        masked[1],
        short.ranked,
        [dtype_to_storage_type(dtype), short.int_dtype],
    );
    (query_grad, key_grad, value_grad, short_grad)
}

/// One cube per matrix (`CUBE_POS`) of [`GRID`] × [`GRID`] units; every tensor contiguous,
/// `work` `[batch · heads, work_slots(iterations) + 1, m, m]`.
#[allow(clippy::too_many_arguments)]
#[cube(launch)]
fn landmark_weights_backward_kernel<F: Float, I: Int>(
    landmark_queries: &Tensor<F>,
    landmark_keys: &Tensor<F>,
    landmark_values: &Tensor<F>,
    missing_queries: &Tensor<F>,
    missing_keys: &Tensor<F>,
    lengths: &Tensor<I>,
    grad: &Tensor<F>,
    query_grad: &mut Tensor<F>,
    key_grad: &mut Tensor<F>,
    value_grad: &mut Tensor<F>,
    short_grad: &mut Tensor<F>,
    work: &mut Tensor<f32>,
    iterations: usize,
    #[comptime] m: usize,
    #[comptime] head_dim: usize,
    #[comptime] value_dim: usize,
    #[comptime] any_missing_queries: bool,
    #[comptime] any_missing_keys: bool,
    #[comptime] ranked: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let matrix = CUBE_POS;
    let batch = matrix / landmark_queries.shape(1);
    let size = m * m;
    let slots = 4 * iterations + 8;
    let base = matrix * (slots + 1) * size;
    let extra = base + slots * size;
    let unit = UNIT_POS as usize;
    let units = comptime![GRID * GRID];

    // A and c as the forward made them; j*, the column that gave c (none at the floor).
    landmark_softmax(
        landmark_queries,
        landmark_keys,
        missing_queries,
        missing_keys,
        work,
        base,
        matrix,
        batch,
        m,
        head_dim,
        any_missing_queries,
        any_missing_keys,
    );
    sync_storage();
    let c = norm_coefficient(work, base, extra, m);
    let mut largest = m.runtime();
    let mut floor = f32::new(comptime![MIN_COEFFICIENT]);
    for j in 0..m {
        let sum = work[extra + j];
        if sum > floor {
            floor = sum;
            largest = j;
        }
    }
    replay(work, base, c, iterations, true, m);

    // A short sequence's weights are its values' means: `dW` leaves as theirs, and the walk
    // back below runs on a zero gradient (it is linear in it), which zeroes the other three.
    let mut through = f32::new(1.0);
    if is_short(lengths, batch, m, ranked) {
        through = f32::new(0.0);
    }

    // d(B V) = Zᵀ dW (and the means' dW), and dZ = dW (B V)ᵀ into the walk back's first slot.
    let z = z_slot(base, iterations, size);
    let values = matrix * m * value_dim;
    let mut entry = unit;
    while entry < m * value_dim {
        let g = f32::cast_from(grad[values + entry]);
        short_grad[values + entry] = F::cast_from(g * (1.0f32 - through));
        let (i, column) = (entry / value_dim, entry % value_dim);
        let mut sum = f32::new(0.0);
        // Unrolled, as the two products below: llvmpipe (lavapipe) ends an invocation after
        // 65 535 loop iterations in all, which rolled loops over m reach at m = 256.
        #[unroll]
        for k in 0..m {
            sum += work[z + k * m + i] * f32::cast_from(grad[values + k * value_dim + column]);
        }
        value_grad[values + entry] = F::cast_from(sum * through);
        entry += units;
    }
    let g = gradient_slot(base, iterations, size);
    let mut entry = unit;
    while entry < size {
        let (i, j) = (entry / m, entry % m);
        let mut sum = f32::new(0.0);
        #[unroll]
        for column in 0..value_dim {
            sum += f32::cast_from(grad[values + i * value_dim + column])
                * f32::cast_from(landmark_values[values + j * value_dim + column]);
        }
        work[g + entry] = sum * through;
        entry += units;
    }
    sync_storage();
    let g = walk_back(work, base, iterations, m);

    // dA in the sum's slot: the walk back's part, Gᵀ / c, and dc in column j* (the entries
    // `close_walk` gave this unit, so no barrier between).
    let c_grad = close_walk(work, base, g, c, iterations, m);
    let da = sum_slot(base, iterations, size);
    let mut entry = unit;
    while entry < size {
        if entry % m == largest {
            work[da + entry] += c_grad;
        }
        entry += units;
    }
    sync_storage();

    // dS = A ∘ (dA − rowsum(dA ∘ A)) in the extra slot, a row per unit.
    let mut row = unit;
    while row < m {
        let mut row_dot = f32::new(0.0);
        for j in 0..m {
            row_dot += work[da + row * m + j] * work[base + row * m + j];
        }
        for j in 0..m {
            let entry = row * m + j;
            work[extra + entry] = work[base + entry] * (work[da + entry] - row_dot);
        }
        row += units;
    }
    sync_storage();

    // dQ̃ = dS K̃ and dK̃ = dSᵀ Q̃.
    let landmarks = matrix * m * head_dim;
    let mut entry = unit;
    while entry < m * head_dim {
        let (i, column) = (entry / head_dim, entry % head_dim);
        let mut queries = f32::new(0.0);
        let mut keys = f32::new(0.0);
        #[unroll]
        for k in 0..m {
            queries += work[extra + i * m + k]
                * f32::cast_from(landmark_keys[landmarks + k * head_dim + column]);
            keys += work[extra + k * m + i]
                * f32::cast_from(landmark_queries[landmarks + k * head_dim + column]);
        }
        query_grad[landmarks + entry] = F::cast_from(queries);
        key_grad[landmarks + entry] = F::cast_from(keys);
        entry += units;
    }
}
