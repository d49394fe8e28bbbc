//! The kernels over plain `f32` slices, row-major and contiguous. No burn types here.

pub mod attention;
pub mod embed;
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

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Zeroes an uninitialised chunk and gives it back as floats.
pub(crate) fn zeroed(c: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    c.fill(MaybeUninit::new(0.0));
    #[allow(unsafe_code)]
    // SAFETY: every element was initialised just above, and MaybeUninit<f32> has the layout
    // of f32.
    unsafe {
        &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32])
    }
}

/// A vector of `n` floats whose chunks of `chunk` elements are each zeroed and then handed to
/// `fill(chunk_index, chunk)`, in parallel: the zeroing (which `vec![0.0; n]` would do on the
/// calling thread, before any kernel starts) is spread over the workers and done right where
/// the chunk is about to be written, while it is in cache.
pub(crate) fn par_filled(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, zeroed(c)));
    #[allow(unsafe_code)]
    // SAFETY: the chunks cover all n elements and `zeroed` initialised each.
    unsafe {
        v.set_len(n)
    };
    v
}

/// `dst[m×n] = scale · lhs[m×k] · rhs[k×n]` (or `dst += …` when `accumulate`), all three given
/// by pointer and (row, column) strides in elements; without `accumulate` gemm writes every
/// element of `dst` (`read_dst = false`) when `k > 0`. The one place the crate calls
/// `gemm::gemm`.
///
/// # Safety
/// Every element addressed through the pointers and strides must lie inside a live buffer,
/// and `dst` must not alias `lhs` or `rhs` or a block another thread writes.
#[allow(unsafe_code, clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    scale: f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `acc += x`, in parallel over fixed chunks.
pub fn add_into(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_into: lengths differ");
    acc.par_chunks_mut(ELEMS_PER_TASK)
        .zip(x.par_chunks(ELEMS_PER_TASK))
        .for_each(|(a, x)| math::add_assign(a, x));
}

/// A vector of `n` floats written by `write`, which gets a pointer to `n` uninitialised floats
/// (for `gemm` with `read_dst = false`, which writes every element of its destination).
///
/// # Safety
/// `write` must initialise all `n` elements.
#[allow(unsafe_code)]
pub(crate) unsafe fn written_by(n: usize, write: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    write(v.as_mut_ptr());
    // SAFETY: the caller's contract.
    unsafe { v.set_len(n) };
    v
}
