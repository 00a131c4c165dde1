//! A mask as the fused stages take it, converted once per attention call.

use std::sync::OnceLock;

use burn::tensor::{Bool, FloatDType, Tensor};

/// A `[batch, positions]` mask (`true` = masked) and, from the first fused stage that reads it
/// on, its flags: `1.0` at masked positions and `0.0` elsewhere, in the stages' float type.
///
/// One attention call hands the same mask to up to four fused stages (in self-attention the
/// missing landmarks are the queries' and the keys'); converting it once saves a launch per
/// stage on CubeCL devices, and nothing is converted when no stage runs.
#[derive(Debug)]
pub struct MaskFlags<'a> {
    mask: Option<&'a Tensor<2, Bool>>,
    dtype: FloatDType,
    flags: OnceLock<Tensor<2>>,
}

impl<'a> MaskFlags<'a> {
    /// The flags of `mask` in `dtype`; `None` masks nothing.
    pub fn new(mask: Option<&'a Tensor<2, Bool>>, dtype: FloatDType) -> Self {
        Self {
            mask,
            dtype,
            flags: OnceLock::new(),
        }
    }

    /// Takes `flags` (which must be this mask's, in this dtype) as the conversion, when none was
    /// made yet: the segments kernel writes them in its own launch.
    pub fn offer(&self, flags: &Tensor<2>) {
        if let Some(mask) = self.mask {
            debug_assert_eq!(flags.dims(), mask.dims(), "flags of another mask");
            debug_assert_eq!(
                FloatDType::from(flags.dtype()),
                self.dtype,
                "flags of another type"
            );
            let _ = self.flags.set(flags.clone());
        }
    }

    /// The mask itself; `None` masks nothing.
    pub fn mask(&self) -> Option<&'a Tensor<2, Bool>> {
        self.mask
    }

    /// The flags, converted on the first call; `None` without a mask.
    #[cfg_attr(
        not(any(feature = "cube-kernels", feature = "flex-kernels")),
        allow(dead_code)
    )]
    pub fn flags(&self) -> Option<&Tensor<2>> {
        let mask = self.mask?;
        Some(self.flags.get_or_init(|| {
            let flags = mask.clone().float();
            match FloatDType::from(flags.dtype()) == self.dtype {
                true => flags,
                false => flags.cast(self.dtype),
            }
        }))
    }
}
