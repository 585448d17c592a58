//! What one request may take, decided on the engine thread once its prompt is tokenized
//! and before it is accepted: room in the model's context (prompt + `max_tokens`, counted
//! as OpenAI counts them) and bytes of the engine's KV-cache budget (the worst case of
//! every choice, reserved while the request runs). Pure arithmetic, tested directly.

use super::{GenerationParams, Prompt};
use crate::infer::InferError;

/// An engine's KV budget when none is configured: 1 GiB, but always room for one
/// sequence of the whole context and never more than a full batch of them.
pub const DEFAULT_KV_BUDGET_BYTES: usize = 1 << 30;

/// What admission grants a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Most tokens each choice samples.
    pub(crate) max_new: usize,
    /// Most tokens each choice's cache is created for (prompt + `max_new`).
    pub(crate) cache_tokens: usize,
    /// KV bytes reserved for all choices while the request runs.
    pub(crate) reserved_bytes: usize,
}

/// The engine's side of admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) context_len: usize,
    pub(crate) kv_budget_bytes: usize,
}

/// `full_context_bytes`: the cache of one sequence filling the whole context.
pub(crate) fn default_kv_budget(full_context_bytes: usize, max_batch: usize) -> usize {
    DEFAULT_KV_BUDGET_BYTES
        .min(full_context_bytes.saturating_mul(max_batch.max(1)))
        .max(full_context_bytes)
}

/// The grant of a request whose prompt is `prompt_tokens` long, or the 400 that says
/// why it can never run: prompt + completion beyond the context (`max_tokens` absent
/// means "up to the context"), or a worst case beyond the whole KV budget.
/// `cache_bytes(t)`: bytes of one sequence's cache holding `t` tokens.
pub(crate) fn grant(
    prompt: &Prompt,
    prompt_tokens: usize,
    params: &GenerationParams,
    limits: Limits,
    cache_bytes: impl Fn(usize) -> usize,
) -> Result<Grant, InferError> {
    let context = limits.context_len;
    let room = context.saturating_sub(prompt_tokens);
    let completion = params.max_tokens.unwrap_or(room).max(1);
    let requested = prompt_tokens.saturating_add(completion);
    if requested > context {
        let param = if room == 0 {
            prompt.param()
        } else {
            params.max_tokens_param
        };
        let (counted, subject) = match prompt {
            Prompt::Chat { .. } => ("in the messages", "the messages"),
            Prompt::Text(_) => ("in your prompt", "your prompt"),
        };
        return Err(InferError::ContextLengthExceeded {
            param: param.to_string(),
            message: format!(
                "This model's maximum context length is {context} tokens. However, you \
                 requested {requested} tokens ({prompt_tokens} {counted}, {completion} in the \
                 completion). Please reduce the length of {subject} or completion."
            ),
        });
    }
    let n = params.n.max(1);
    let reserved_bytes = cache_bytes(requested).saturating_mul(n);
    if reserved_bytes > limits.kv_budget_bytes {
        let param = params.max_tokens_param;
        return Err(InferError::invalid(
            param,
            format!(
                "This request may need {reserved_bytes} bytes of KV cache ({n} sequence(s) of \
                 up to {requested} tokens), more than this model's budget of {} bytes. Please \
                 reduce `{param}` or `n`.",
                limits.kv_budget_bytes
            ),
        ));
    }
    Ok(Grant {
        max_new: completion,
        cache_tokens: requested,
        reserved_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        context_len: 100,
        kv_budget_bytes: 50_000,
    };

    fn text() -> Prompt {
        Prompt::Text("x".into())
    }

    fn chat() -> Prompt {
        Prompt::Chat {
            messages: Vec::new(),
            tools: None,
        }
    }

    fn params(max_tokens: Option<usize>, n: usize) -> GenerationParams {
        GenerationParams {
            max_tokens,
            n,
            ..GenerationParams::default()
        }
    }

    fn bytes(tokens: usize) -> usize {
        tokens * 100
    }

    fn refused(prompt: &Prompt, prompt_tokens: usize, p: &GenerationParams) -> (String, String) {
        match grant(prompt, prompt_tokens, p, LIMITS, bytes) {
            Err(InferError::ContextLengthExceeded { param, message }) => (param, message),
            Err(InferError::InvalidRequest { param, message }) => (param, message),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn prompt_plus_max_tokens_beyond_the_context_is_refused_in_openais_words() {
        let (param, message) = refused(&chat(), 10, &params(Some(100_000), 1));
        assert_eq!(param, "max_tokens");
        assert_eq!(
            message,
            "This model's maximum context length is 100 tokens. However, you requested \
             100010 tokens (10 in the messages, 100000 in the completion). Please reduce \
             the length of the messages or completion."
        );
        let chat_limit = GenerationParams {
            max_tokens_param: "max_completion_tokens",
            ..params(Some(1_000_000_000_000), 1)
        };
        let (param, message) = refused(&chat(), 10, &chat_limit);
        assert_eq!(param, "max_completion_tokens");
        assert!(
            message.contains("you requested 1000000000010 tokens"),
            "{message}"
        );
        let (param, message) = refused(&text(), 3, &params(Some(98), 1));
        assert_eq!(param, "max_tokens");
        assert!(
            message.contains("101 tokens (3 in your prompt, 98 in the completion)"),
            "{message}"
        );
        assert!(message.ends_with("reduce the length of your prompt or completion."));
        assert_eq!(
            refused(&text(), 3, &params(Some(usize::MAX), 1)).0,
            "max_tokens"
        );
    }

    #[test]
    fn a_prompt_filling_the_context_names_the_prompt() {
        let (param, message) = refused(&text(), 100, &params(None, 1));
        assert_eq!(param, "prompt");
        assert!(
            message.contains("requested 101 tokens (100 in your prompt, 1 in the completion)"),
            "{message}"
        );
        assert_eq!(refused(&chat(), 120, &params(Some(5), 1)).0, "messages");
    }

    #[test]
    fn exactly_the_context_fits_and_no_max_tokens_means_the_rest_of_it() {
        let exact = grant(&text(), 3, &params(Some(97), 1), LIMITS, bytes).expect("fits");
        assert_eq!(
            exact,
            Grant {
                max_new: 97,
                cache_tokens: 100,
                reserved_bytes: 10_000
            }
        );
        let open = grant(&chat(), 30, &params(None, 1), LIMITS, bytes).expect("fits");
        assert_eq!(open.max_new, 70);
        assert_eq!(open.cache_tokens, 100);
    }

    #[test]
    fn the_worst_case_of_every_choice_is_reserved_and_more_than_the_budget_is_refused() {
        let four = grant(&text(), 10, &params(Some(40), 4), LIMITS, bytes).expect("fits");
        assert_eq!(four.reserved_bytes, 4 * 50 * 100);
        // 6 × 100 tokens × 100 bytes = 60,000 > 50,000: never fits, whatever runs.
        let (param, message) = refused(&text(), 10, &params(None, 6));
        assert_eq!(param, "max_tokens");
        assert!(
            message.contains("may need 60000 bytes of KV cache (6 sequence(s) of up to 100"),
            "{message}"
        );
        assert!(message.contains("budget of 50000 bytes"), "{message}");
    }

    #[test]
    fn the_default_budget_is_a_gib_within_one_context_and_a_full_batch() {
        assert_eq!(default_kv_budget(1000, 16), 16_000);
        assert_eq!(default_kv_budget(100 << 20, 16), 1 << 30);
        assert_eq!(default_kv_budget(3 << 30, 16), 3 << 30);
    }
}
