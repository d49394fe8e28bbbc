//! The gradient's path through an optimizer step, one stage a file:
//!
//! 1. loss → backward: [`crate::engine::Engine::micro`] (burn's autodiff);
//! 2. flatten: [`flat::FlatGrads::from_grads`], every parameter's gradient in one `[numel]`
//!    buffer in parameter order;
//! 3. accumulate: [`flat::FlatGrads::accumulate`], the micro-batches' sum;
//! 4. average over the micro-batches, where the update runs ([`flat::Grads`]: host buffer or
//!    device tensor): [`crate::engine::Engine::grads`];
//! 5. bucket all-reduce over the ranks: [`reduce::all_reduce_grads`];
//! 6. clip to the global norm: [`clip`];
//! 7. AdamW: [`crate::adamw`] (host and device, the same math);
//! 8. scatter the new values into the model: [`crate::params::set_flat_params`] and
//!    [`crate::params::set_flat_params_device`].

pub mod clip;
pub mod flat;
pub mod reduce;
