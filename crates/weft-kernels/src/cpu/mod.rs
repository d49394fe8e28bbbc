//! The kernels over plain `f32` slices, row-major and contiguous. No burn types here.

pub mod attention;
pub mod gelu;
pub mod linear;
pub(crate) mod math;
pub mod norm;

/// Rows per parallel task in the row-wise kernels. Fixed, not derived from the thread count, so
/// that partial sums (LayerNorm's parameter gradients) add up in the same order, and give the
/// same bits, whatever the number of threads.
pub(crate) const ROWS_PER_TASK: usize = 32;

/// Elements per parallel task in the element-wise kernels.
pub(crate) const ELEMS_PER_TASK: usize = 16 * 1024;
