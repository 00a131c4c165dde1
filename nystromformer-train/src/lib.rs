//! Training and inference for Nyströmformer models: the library under the `nystromformer-train`
//! binary.

pub mod device;
pub mod encode;
pub mod files;
