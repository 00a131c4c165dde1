//! The fused CPU stages on flex: [`LandmarkSoftmaxOps`] for burn-flex's backend, on contiguous
//! `f32` slices (see [`products`]).

mod exp;
mod products;

use burn::tensor::{Shape, TensorData};
use burn_flex::{Flex, FlexTensor};

use self::products::Dims;
use super::extension::LandmarkSoftmaxOps;

/// A tensor's `f32` elements in row-major order (a copy only when it is strided) and its shape.
fn contiguous(tensor: FlexTensor) -> (FlexTensor, Vec<usize>) {
    let tensor = tensor.to_contiguous();
    let shape = tensor.layout().shape().to_vec();
    (tensor, shape)
}

fn slice(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("the fused flex stages take contiguous f32 tensors")
}

fn output(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, Shape::new(shape)))
}

impl LandmarkSoftmaxOps for Flex {
    fn landmark_values(
        landmark_queries: FlexTensor,
        keys: FlexTensor,
        values: FlexTensor,
        padding: FlexTensor,
        missing: FlexTensor,
        masked_score: f32,
    ) -> FlexTensor {
        let (landmark_queries, lq_shape) = contiguous(landmark_queries);
        let (keys, k_shape) = contiguous(keys);
        let (values, v_shape) = contiguous(values);
        let (padding, _) = contiguous(padding);
        let (missing, _) = contiguous(missing);
        let dims = Dims {
            batch: lq_shape[0],
            heads: lq_shape[1],
            n: k_shape[2],
            m: lq_shape[2],
            d: lq_shape[3],
            dv: v_shape[3],
        };
        let out = products::landmark_values(
            dims,
            slice(&landmark_queries),
            slice(&keys),
            slice(&values),
            slice(&padding),
            slice(&missing),
            masked_score,
        );
        output(out, [dims.batch, dims.heads, dims.m, dims.dv])
    }

    fn landmark_attention(
        queries: FlexTensor,
        landmark_keys: FlexTensor,
        weights: FlexTensor,
        missing: FlexTensor,
    ) -> FlexTensor {
        let (queries, q_shape) = contiguous(queries);
        let (landmark_keys, lk_shape) = contiguous(landmark_keys);
        let (weights, w_shape) = contiguous(weights);
        let (missing, _) = contiguous(missing);
        let dims = Dims {
            batch: q_shape[0],
            heads: q_shape[1],
            n: q_shape[2],
            m: lk_shape[2],
            d: q_shape[3],
            dv: w_shape[3],
        };
        let out = products::landmark_attention(
            dims,
            slice(&queries),
            slice(&landmark_keys),
            slice(&weights),
            slice(&missing),
        );
        output(out, [dims.batch, dims.heads, dims.n, dims.dv])
    }
}
