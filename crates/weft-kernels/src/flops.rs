//! Counting the floating-point operations of the matrix products a forward pass runs.
//!
//! Every product of the models goes through this crate ([`crate::linear`], [`crate::linear_add`],
//! [`crate::matmul`], the attention functions) or reports itself ([`linear`]); while a
//! [`Counter`] is alive on a thread, each adds `2·m·n·k` to it. Element-wise work (norms,
//! activations, softmax, losses) is not counted, as in the MFU of PaLM (Chowdhery et al., 2022)
//! and Megatron-LM: a training step is three times the forward count (the backward pass
//! computes two products for each forward one).

use std::cell::Cell;

thread_local! {
    static COUNT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Counts the products of this thread until [`Counter::finish`] (or drop).
#[must_use = "the count lasts as long as the counter"]
pub struct Counter {
    previous: Option<u64>,
}

impl Counter {
    /// Start counting on this thread from zero.
    pub fn start() -> Self {
        Self {
            previous: COUNT.with(|c| c.replace(Some(0))),
        }
    }

    /// The FLOPs counted so far.
    pub fn flops(&self) -> u64 {
        COUNT.with(|c| c.get().unwrap_or(0))
    }

    /// Stop and return the FLOPs counted.
    pub fn finish(self) -> u64 {
        self.flops()
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        COUNT.with(|c| c.set(self.previous));
    }
}

/// Add `2·m·n·k`: an `[m, k]·[k, n]` product (`m` may be a batch of rows).
pub fn product(m: usize, n: usize, k: usize) {
    COUNT.with(|c| {
        if let Some(v) = c.get() {
            c.set(Some(v + 2 * (m as u64) * (n as u64) * (k as u64)));
        }
    });
}

/// A linear layer of `rows` rows from `d_in` to `d_out` that does not go through
/// [`crate::linear`] (burn's `Linear::forward`).
pub fn linear(rows: usize, d_in: usize, d_out: usize) {
    product(rows, d_out, d_in);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_while_a_counter_lives_and_nests() {
        product(10, 10, 10);
        let outer = Counter::start();
        product(2, 3, 4);
        {
            let inner = Counter::start();
            linear(1, 5, 7);
            assert_eq!(inner.finish(), 70);
        }
        assert_eq!(outer.flops(), 48);
        assert_eq!(outer.finish(), 48);
        product(1, 1, 1);
        let again = Counter::start();
        assert_eq!(again.finish(), 0);
    }
}
