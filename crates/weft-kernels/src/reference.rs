//! The same operations composed from burn tensor ops: the path for every backend other
//! than flex (CUDA), for mixed precision ([`crate::autocast()`]), and the reference the fused
//! kernels are tested against. Each is defined beside its op in [`crate::ops`].

pub use crate::ops::attention::{
    attention_indexed_reference as attention_indexed, attention_reference as attention,
    attention_rows_reference as attention_rows,
};
pub use crate::ops::gelu::gelu_reference as gelu;
pub use crate::ops::layer_norm::layer_norm_reference as layer_norm;
pub use crate::ops::linear::linear_reference as linear;
pub use crate::ops::matmul::matmul_reference as matmul;
pub use crate::ops::patches::patches_reference as patches;
pub use crate::ops::positions::add_positions_reference as add_positions;
