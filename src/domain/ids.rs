//! Object ids in OpenAI's shapes: `file-…`, `ftjob-…`, `ftevent-…`, `ftckpt_…`.

use rand::Rng;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Random base62 string of `len` characters.
pub fn random_base62(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| BASE62[rng.random_range(0..BASE62.len())] as char)
        .collect()
}

pub fn new_file_id() -> String {
    format!("file-{}", random_base62(22))
}

pub fn new_job_id() -> String {
    format!("ftjob-{}", random_base62(24))
}

pub fn new_event_id() -> String {
    format!("ftevent-{}", random_base62(24))
}

pub fn new_checkpoint_id() -> String {
    format!("ftckpt_{}", random_base62(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_openai_prefixes_and_lengths() {
        let file = new_file_id();
        assert!(file.starts_with("file-"));
        assert_eq!(file.len(), 5 + 22);
        assert!(new_job_id().starts_with("ftjob-"));
        assert!(new_checkpoint_id().starts_with("ftckpt_"));
        assert_ne!(new_event_id(), new_event_id());
        assert!(random_base62(64).chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
