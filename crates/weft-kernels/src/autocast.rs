//! Mixed precision: while an [`autocast`] guard is alive on a thread, the matrix products of
//! that thread take bf16 (or f16) operands and give f32 results (see the crate docs).

use burn::tensor::FloatDType;

thread_local! {
    static PRODUCT_DTYPE: std::cell::Cell<Option<FloatDType>> = const { std::cell::Cell::new(None) };
}

/// While alive, the matrix products of this thread run in the guard's dtype (see the crate
/// docs); dropping it restores what was there before.
#[must_use = "autocast lasts as long as the guard"]
pub struct Autocast {
    previous: Option<FloatDType>,
}

/// Mixed precision on this thread until the guard drops: products in `dtype` (`None`, or
/// `Some(FloatDType::F32)`: full precision).
pub fn autocast(dtype: Option<FloatDType>) -> Autocast {
    let dtype = dtype.filter(|d| *d != FloatDType::F32);
    Autocast {
        previous: PRODUCT_DTYPE.with(|c| c.replace(dtype)),
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        PRODUCT_DTYPE.with(|c| c.set(self.previous));
    }
}

/// The dtype of this thread's matrix products under [`autocast`], `None` for f32.
pub fn product_dtype() -> Option<FloatDType> {
    PRODUCT_DTYPE.with(std::cell::Cell::get)
}
