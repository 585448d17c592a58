//! Names of fine-tuned models and checkpoints, in OpenAI's shapes:
//! `ft:{base}:{org}:{suffix}:{id8}` and `{model}:ckpt-step-{step}`, and the one rule by
//! which every model id that comes in over the API is normalised.

/// The organisation slug in every fine-tuned model name (OpenAI uses the org's slug or
/// `personal`).
pub const ORG: &str = "temper";

/// Longest suffix OpenAI accepts.
pub const MAX_SUFFIX_LEN: usize = 64;

const CHECKPOINT_MARKER: &str = ":ckpt-step-";

/// `ft:{base}:{org}:{suffix}:{id8}`; no suffix gives `ft:{base}:{org}::{id8}`.
pub fn fine_tuned_name(base: &str, org: &str, suffix: Option<&str>, id8: &str) -> String {
    format!("ft:{base}:{org}:{}:{id8}", suffix.unwrap_or_default())
}

/// `{model}:ckpt-step-{step}`.
pub fn checkpoint_name(model: &str, step: usize) -> String {
    format!("{model}{CHECKPOINT_MARKER}{step}")
}

/// Splits a checkpoint name into the model it belongs to and its step; `None` for a name that
/// is not a checkpoint.
pub fn parse_checkpoint_step(name: &str) -> Option<(&str, usize)> {
    let (model, step) = name.rsplit_once(CHECKPOINT_MARKER)?;
    if model.is_empty() || step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((model, step.parse().ok()?))
}

/// The canonical form of a model id a client sent (job `model`, inference `model`,
/// `/v1/models/{id}`): whitespace around the id and around each `/` trimmed, runs of `/`
/// collapsed to one, and leading and trailing `/` removed, so `" bars//tiny-llama/ "` and
/// `bars / tiny-llama` are `bars/tiny-llama` and never a second model. Case is kept (ids
/// name directories on a case-sensitive disk).
/// An id that is nothing but slashes and spaces normalises to `""`, which callers refuse.
pub fn normalize_model_id(raw: &str) -> String {
    raw.split('/')
        .map(str::trim)
        .filter(|segment| !segment.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// A rejected `suffix`, shaped like the other request-parameter errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SuffixError {
    /// Always `suffix`.
    pub param: &'static str,
    pub message: String,
}

/// Checks a user-supplied suffix: 1–64 characters of `A-Z a-z 0-9 _ -`. Colons would make the
/// model name ambiguous, so they are refused along with everything else.
pub fn validate_suffix(suffix: &str) -> Result<(), SuffixError> {
    let fail = |message: String| {
        Err(SuffixError {
            param: "suffix",
            message,
        })
    };
    let length = suffix.chars().count();
    if length == 0 || length > MAX_SUFFIX_LEN {
        return fail(format!(
            "`suffix` must be 1 to {MAX_SUFFIX_LEN} characters long, got {length}."
        ));
    }
    if let Some(bad) = suffix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return fail(format!(
            "`suffix` may only contain letters, digits, '_' and '-', got {bad:?}."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_tuned_name_follows_openai_shape() {
        assert_eq!(
            fine_tuned_name("bert-tiny", ORG, Some("spam"), "Ab12Cd34"),
            "ft:bert-tiny:temper:spam:Ab12Cd34"
        );
        assert_eq!(
            fine_tuned_name("bert-tiny", ORG, None, "Ab12Cd34"),
            "ft:bert-tiny:temper::Ab12Cd34"
        );
    }

    #[test]
    fn checkpoint_names_round_trip() {
        let model = fine_tuned_name("org/base", ORG, Some("x"), "Ab12Cd34");
        let checkpoint = checkpoint_name(&model, 120);
        assert_eq!(checkpoint, "ft:org/base:temper:x:Ab12Cd34:ckpt-step-120");
        assert_eq!(
            parse_checkpoint_step(&checkpoint),
            Some((model.as_str(), 120))
        );
    }

    #[test]
    fn non_checkpoint_names_are_not_parsed() {
        let cases = [
            "ft:base:temper::Ab12Cd34",
            "ft:base:temper::Ab12Cd34:ckpt-step-",
            "ft:base:temper::Ab12Cd34:ckpt-step-12a",
            "ft:base:temper::Ab12Cd34:ckpt-step--3",
            ":ckpt-step-3",
            "ft:base:temper::Ab12Cd34:ckpt-step-99999999999999999999999",
        ];
        for name in cases {
            assert_eq!(parse_checkpoint_step(name), None, "{name}");
        }
    }

    #[test]
    fn model_ids_are_normalised_to_one_spelling() {
        let cases = [
            ("bars/tiny-llama", "bars/tiny-llama"),
            ("bars/tiny-llama/", "bars/tiny-llama"),
            ("/bars/tiny-llama", "bars/tiny-llama"),
            ("bars//tiny-llama", "bars/tiny-llama"),
            ("  bars/tiny-llama/ \n", "bars/tiny-llama"),
            ("bars / tiny-llama", "bars/tiny-llama"),
            ("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
            ("Org/Model", "Org/Model"),
            (
                "ft:bars/tiny-llama:temper::Ab12Cd34:ckpt-step-3",
                "ft:bars/tiny-llama:temper::Ab12Cd34:ckpt-step-3",
            ),
            (" / // ", ""),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_model_id(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn suffix_validation() {
        let long = "a".repeat(MAX_SUFFIX_LEN);
        for ok in ["a", "my-model_v2", long.as_str()] {
            assert_eq!(validate_suffix(ok), Ok(()), "{ok}");
        }
        let too_long = "a".repeat(MAX_SUFFIX_LEN + 1);
        let cases = [
            ("", "got 0"),
            (too_long.as_str(), "got 65"),
            ("a:b", "got ':'"),
            ("sp ace", "got ' '"),
            ("é", "got 'é'"),
        ];
        for (suffix, expected) in cases {
            let error = validate_suffix(suffix).expect_err(suffix);
            assert_eq!(error.param, "suffix");
            assert!(error.message.contains(expected), "{suffix}: {error}");
            assert!(error.message.starts_with("`suffix`"), "{error}");
        }
    }
}
