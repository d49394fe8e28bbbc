//! One batch as the objectives see it ([`ObjectiveBatch`]) and the host-to-device helpers of
//! its ids and masks.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

/// One batch as the objectives see it: images on the device, token ids on the host.
#[derive(Debug, Clone)]
pub struct ObjectiveBatch<B: Backend> {
    /// `[B, C, S, S]` normalised images.
    pub images: Tensor<B, 4>,
    /// `[B, L]` token ids, row-major.
    pub ids: Vec<u32>,
    /// `[B, L]` 1 = token, 0 = padding.
    pub attention_mask: Vec<u32>,
    /// Tokens per caption `L`.
    pub len: usize,
    /// `[B]` rows that only fill the batch (copies of rows of the epoch, `Batch::is_pad`): they
    /// run through the model, so that every rank of a job runs one batch size, but weigh
    /// nothing in any loss and are no ITC or ITM negative. Empty: no row is padding.
    pub is_pad: Vec<bool>,
}

impl<B: Backend> ObjectiveBatch<B> {
    /// Rows in the batch.
    pub fn batch_size(&self) -> usize {
        self.images.dims()[0]
    }

    /// The ids as a `[B, L]` tensor.
    pub fn ids_tensor(&self) -> Tensor<B, 2, Int> {
        ints(
            &self.ids,
            self.batch_size(),
            self.len,
            &self.images.device(),
        )
    }

    /// Whether row `i` is padding ([`Self::is_pad`]).
    pub fn pad(&self, i: usize) -> bool {
        self.is_pad.get(i).copied().unwrap_or(false)
    }

    /// The padding (true = pad) as a `[B, L]` tensor.
    pub fn padding_tensor(&self) -> Tensor<B, 2, Bool> {
        let pad: Vec<bool> = self.attention_mask.iter().map(|&m| m == 0).collect();
        bools(pad, self.batch_size(), self.len, &self.images.device())
    }
}

/// Host ids as a `[rows, cols]` int tensor.
pub(crate) fn ints<B: Backend>(
    v: &[u32],
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = v.iter().map(|&x| i64::from(x)).collect();
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

/// Host flags as a `[rows, cols]` bool tensor.
pub(crate) fn bools<B: Backend>(
    v: Vec<bool>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}
