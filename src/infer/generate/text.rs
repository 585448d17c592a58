//! From token ids to the text a client sees, one token at a time.
//!
//! The engine decodes the whole list of generated ids after each token and hands the
//! text here; this module decides which new suffix is safe to emit:
//! - a trailing U+FFFD is held back (a multi-byte character whose remaining bytes are in
//!   tokens not generated yet), so streams never carry broken UTF-8;
//! - a suffix that could be the beginning of a stop string is held back until the next
//!   tokens show whether the stop string follows;
//! - when a stop string appears, the text ends just before it.

const REPLACEMENT: char = '\u{FFFD}';

/// What one new token did to the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextUpdate {
    /// Text that may be emitted now (possibly empty).
    Delta(String),
    /// A stop string was found: emit this last piece and finish.
    Stopped(String),
}

pub(crate) struct TextTracker {
    stops: Vec<String>,
    /// The latest decoded text.
    text: String,
    /// Bytes of `text` already emitted (always a char boundary).
    emitted: usize,
}

impl TextTracker {
    /// Empty stop strings are ignored (they would stop before the first token).
    pub(crate) fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Takes the decoded text of every id generated so far.
    pub(crate) fn update(&mut self, text: String) -> TextUpdate {
        self.text = text;
        if self.text.get(self.emitted..).is_none() {
            // The decoder rewrote text already sent (not prefix-stable); what was sent
            // stays sent, and later text is measured from the end of the new text.
            self.emitted = self.text.len();
        }
        if let Some(at) = self.first_stop() {
            let last = self.text[self.emitted..at].to_string();
            self.emitted = at;
            self.text.truncate(at);
            return TextUpdate::Stopped(last);
        }
        let end = self.safe_end().max(self.emitted);
        let delta = self.text[self.emitted..end].to_string();
        self.emitted = end;
        TextUpdate::Delta(delta)
    }

    /// Everything not emitted yet (the sequence ended for another reason than a stop
    /// string, so held-back text is final).
    pub(crate) fn flush(&mut self) -> String {
        let rest = self.text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = self.text.len();
        rest
    }

    /// Byte offset of the earliest stop string in the text. A stop string can only
    /// start in the unemitted part: any suffix that could begin one was held back.
    fn first_stop(&self) -> Option<usize> {
        let unsent = &self.text[self.emitted..];
        self.stops
            .iter()
            .filter_map(|stop| unsent.find(stop.as_str()))
            .min()
            .map(|at| self.emitted + at)
    }

    /// End of the text that is safe to emit: before a trailing replacement character
    /// and before the longest suffix that is a proper prefix of a stop string.
    fn safe_end(&self) -> usize {
        let text = self.text.trim_end_matches(REPLACEMENT);
        let mut end = text.len();
        for stop in &self.stops {
            for (k, _) in stop.char_indices().skip(1) {
                if text.ends_with(&stop[..k]) {
                    end = end.min(text.len() - k);
                    break;
                }
            }
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Feeds growing prefixes of `pieces` and returns (deltas, stopped).
    fn run(tracker: &mut TextTracker, pieces: &[&str]) -> (Vec<String>, bool) {
        let mut text = String::new();
        let mut deltas = Vec::new();
        for piece in pieces {
            text.push_str(piece);
            match tracker.update(text.clone()) {
                TextUpdate::Delta(d) => deltas.push(d),
                TextUpdate::Stopped(d) => {
                    deltas.push(d);
                    return (deltas, true);
                }
            }
        }
        (deltas, false)
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_never_emitted() {
        let mut tracker = TextTracker::new(&stops(&["STOP"]));
        let (deltas, stopped) = run(&mut tracker, &["Hi", " S", "T", "OP", "more"]);
        assert!(stopped);
        assert_eq!(deltas, ["Hi", " ", "", ""]);
    }

    #[test]
    fn a_false_start_is_released_when_the_stop_string_does_not_follow() {
        let mut tracker = TextTracker::new(&stops(&["STOP"]));
        let (deltas, stopped) = run(&mut tracker, &["a S", "T", "x"]);
        assert!(!stopped);
        assert_eq!(deltas, ["a ", "", "STx"]);
        // A held-back prefix at the very end is flushed when the sequence ends.
        let mut tracker = TextTracker::new(&stops(&["STOP"]));
        let (deltas, _) = run(&mut tracker, &["a ST"]);
        assert_eq!(deltas, ["a "]);
        assert_eq!(tracker.flush(), "ST");
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let mut tracker = TextTracker::new(&stops(&["world", "o"]));
        let (deltas, stopped) = run(&mut tracker, &["Hello world"]);
        assert!(stopped);
        assert_eq!(deltas, ["Hell"]);
    }

    #[test]
    fn a_trailing_replacement_character_is_held_back() {
        let mut tracker = TextTracker::new(&[]);
        assert_eq!(
            tracker.update("ab\u{FFFD}".into()),
            TextUpdate::Delta("ab".into())
        );
        assert_eq!(tracker.update("abé".into()), TextUpdate::Delta("é".into()));
        assert_eq!(tracker.flush(), "");
    }

    #[test]
    fn multibyte_stop_prefixes_are_cut_on_char_boundaries() {
        let mut tracker = TextTracker::new(&stops(&["éé"]));
        let (deltas, stopped) = run(&mut tracker, &["xé", "y", "é", "é"]);
        assert!(stopped);
        assert_eq!(deltas, ["x", "éy", "", ""]);
    }
}
