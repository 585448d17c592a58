//! The model side of a batched serving engine, as each task implements it.
//!
//! `infer` owns the engine (a thread, a bounded queue, rounds that drain it); a task owns
//! what a round does with its inputs. Nothing here knows tokio: the engine calls
//! [`ServeBackend::prepare`] once per input, under the span of the request that sent it,
//! then [`ServeBackend::serve_round`] once over every prepared input of the round, so
//! inputs of several requests share forward passes.

/// Why one input could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The input cannot be served as given (400); `param` names the request field.
    #[error("{message}")]
    Invalid { param: String, message: String },
    /// Tokenizing or running the model failed (500); detail for the logs.
    #[error("{0}")]
    Failed(String),
}

impl ServeError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            param: param.to_string(),
            message: message.into(),
        }
    }

    pub fn failed(error: impl std::fmt::Display) -> Self {
        Self::Failed(error.to_string())
    }
}

/// One task's serving: inputs in, one output per input, batched across requests.
pub trait ServeBackend: Send + 'static {
    /// One item of a request (a text, a question with its context…).
    type Input: Send + 'static;
    /// What [`Self::prepare`] makes of an input (token ids, windows…).
    type Prepared: Send + 'static;
    type Output: Send + 'static;

    /// Checks and tokenizes one input. An error fails the request that sent it, alone.
    fn prepare(&self, input: &Self::Input) -> Result<Self::Prepared, ServeError>;

    /// Serves every prepared input of a round, at most `max_batch` per forward pass: one
    /// result per input, in order. A failed forward pass fails the inputs it carried.
    fn serve_round(
        &mut self,
        round: &[(&Self::Input, &Self::Prepared)],
        max_batch: usize,
    ) -> Vec<Result<Self::Output, ServeError>>;

    /// Memory the model holds, counted against the inference cache.
    fn parameter_bytes(&self) -> usize;
}

/// Groups inputs (by index into `lengths`) into forward passes of at most `max_batch`,
/// shortest first, so inputs of similar length share a batch and padding stays small.
pub fn plan_batches(lengths: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order
        .chunks(max_batch.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Runs `forward` over `inputs` in [`plan_batches`] order and puts each row back at its
/// input's place; a failed batch fails only the inputs it carried.
pub fn batched_rows<T>(
    inputs: &[&[u32]],
    max_batch: usize,
    mut forward: impl FnMut(&[&[u32]]) -> Result<Vec<T>, ServeError>,
) -> Vec<Result<T, ServeError>> {
    let lengths: Vec<usize> = inputs.iter().map(|ids| ids.len()).collect();
    let mut rows: Vec<Result<T, ServeError>> = inputs
        .iter()
        .map(|_| Err(ServeError::failed("input was not served")))
        .collect();
    for batch in plan_batches(&lengths, max_batch) {
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| inputs[i]).collect();
        let answer = forward(&seqs).and_then(|out| {
            if out.len() == seqs.len() {
                Ok(out)
            } else {
                Err(ServeError::failed(format!(
                    "backend returned {} rows for {} inputs",
                    out.len(),
                    seqs.len()
                )))
            }
        });
        match answer {
            Ok(out) => {
                for (&i, row) in batch.iter().zip(out) {
                    rows[i] = Ok(row);
                }
            }
            Err(error) => {
                tracing::error!(%error, "forward pass failed");
                for &i in &batch {
                    rows[i] = Err(error.clone());
                }
            }
        }
    }
    rows
}
