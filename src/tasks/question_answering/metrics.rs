//! Exact match and F1 as the official SQuAD evaluation scripts compute them (v1.1's
//! `evaluate-v1.1.py`, v2.0's `evaluate-v2.0.py`, which Hugging Face's `squad` and
//! `squad_v2` metrics wrap): answers are normalised (lower case, ASCII punctuation removed,
//! the articles a/an/the removed, whitespace collapsed), each prediction is scored against
//! every gold answer and the best score counts; results are percentages.

use std::collections::HashMap;

use serde::Serialize;

/// Which script's rules: they differ only on answers that normalise to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquadVersion {
    /// Every question has answers; gold answers are used as they are.
    V1,
    /// Unanswerable questions count as the gold answer "" (and gold answers that normalise
    /// to "" are dropped); two empty answers agree (F1 1).
    V2,
}

/// SQuAD's `normalize_answer`.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    // Python's `string.punctuation` is exactly ASCII punctuation.
    let without_punctuation: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let without_articles = remove_articles(&without_punctuation);
    without_articles
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `re.sub(r"\b(a|an|the)\b", " ", text)`: a match is a whole run of word characters.
fn remove_articles(text: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn tokens(text: &str) -> Vec<String> {
    normalize_answer(text)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// 1.0 when the normalised answers are equal.
pub fn exact_match(gold: &str, prediction: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(gold) == normalize_answer(prediction),
    ))
}

/// Token-overlap F1 of the normalised answers (multiset intersection).
pub fn f1_score(gold: &str, prediction: &str, version: SquadVersion) -> f64 {
    let gold = tokens(gold);
    let predicted = tokens(prediction);
    if version == SquadVersion::V2 && (gold.is_empty() || predicted.is_empty()) {
        return f64::from(u8::from(gold == predicted));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for token in &gold {
        *counts.entry(token).or_default() += 1;
    }
    let mut same = 0usize;
    for token in &predicted {
        if let Some(count) = counts.get_mut(token.as_str()).filter(|c| **c > 0) {
            *count -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / predicted.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// One question: its gold answer texts (none: unanswerable) and the predicted text.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredQuestion<'a> {
    pub gold: Vec<&'a str>,
    pub prediction: &'a str,
}

/// Exact match and F1 (percentages) over some questions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SplitScores {
    pub exact: f64,
    pub f1: f64,
    pub total: usize,
}

/// The script's output: all questions, and for v2 the `HasAns_*` / `NoAns_*` splits (a
/// split is absent when it has no questions, as in the script).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SquadScores {
    pub all: SplitScores,
    pub has_answer: Option<SplitScores>,
    pub no_answer: Option<SplitScores>,
}

/// The best exact match and F1 of one prediction over its gold answers.
fn question_scores(question: &ScoredQuestion, version: SquadVersion) -> (f64, f64) {
    let mut gold: Vec<&str> = match version {
        SquadVersion::V1 => question.gold.clone(),
        SquadVersion::V2 => question
            .gold
            .iter()
            .copied()
            .filter(|g| !normalize_answer(g).is_empty())
            .collect(),
    };
    if gold.is_empty() {
        gold.push("");
    }
    let best = |score: &dyn Fn(&str) -> f64| gold.iter().map(|g| score(g)).fold(0.0, f64::max);
    (
        best(&|g| exact_match(g, question.prediction)),
        best(&|g| f1_score(g, question.prediction, version)),
    )
}

fn split(scores: &[(f64, f64)]) -> Option<SplitScores> {
    if scores.is_empty() {
        return None;
    }
    let total = scores.len();
    let mean = |sum: f64| 100.0 * sum / total as f64;
    Some(SplitScores {
        exact: mean(scores.iter().map(|s| s.0).sum()),
        f1: mean(scores.iter().map(|s| s.1).sum()),
        total,
    })
}

/// Scores a set of questions; `None` when there are none.
pub fn squad_scores(questions: &[ScoredQuestion], version: SquadVersion) -> Option<SquadScores> {
    let scored: Vec<(bool, (f64, f64))> = questions
        .iter()
        .map(|q| (!q.gold.is_empty(), question_scores(q, version)))
        .collect();
    let pick = |answerable: bool| -> Vec<(f64, f64)> {
        scored
            .iter()
            .filter(|(has, _)| *has == answerable)
            .map(|(_, s)| *s)
            .collect()
    };
    let all: Vec<(f64, f64)> = scored.iter().map(|(_, s)| *s).collect();
    let (has_answer, no_answer) = match version {
        SquadVersion::V1 => (None, None),
        SquadVersion::V2 => (split(&pick(true)), split(&pick(false))),
    };
    Some(SquadScores {
        all: split(&all)?,
        has_answer,
        no_answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_the_official_script() {
        assert_eq!(normalize_answer("The Cat's  hat!"), "cats hat");
        assert_eq!(normalize_answer("An apple, a day"), "apple day");
        // Articles only as whole words; "the-end" loses its hyphen first.
        assert_eq!(normalize_answer("Theory of the-end"), "theory of theend");
        assert_eq!(normalize_answer("Théâtre à l'an"), "théâtre à lan");
        // Non-ASCII punctuation stays, and is a word boundary for the articles.
        assert_eq!(normalize_answer("«the» ANSWER"), "« » answer");
        assert_eq!(normalize_answer("  "), "");
    }

    #[test]
    fn exact_match_and_f1_of_single_answers() {
        assert_eq!(exact_match("The Broncos", "broncos."), 1.0);
        assert_eq!(exact_match("Denver Broncos", "Broncos"), 0.0);
        // gold {cat, sat, on, mat}, prediction {cat, on, mat}: P 1, R 3/4, F1 6/7.
        let f1 = f1_score("the cat sat on the mat", "cat on mat", SquadVersion::V2);
        assert!((f1 - 6.0 / 7.0).abs() < 1e-12, "{f1}");
        // Tokens count as often as both sides have them: "x x y" vs "x z" share one x,
        // P 1/2, R 1/3, F1 0.4.
        let f1 = f1_score("x x y", "x z", SquadVersion::V1);
        assert!((f1 - 0.4).abs() < 1e-12, "{f1}");
        assert_eq!(f1_score("", "", SquadVersion::V2), 1.0);
        assert_eq!(f1_score("", "", SquadVersion::V1), 0.0);
        assert_eq!(f1_score("", "Levi", SquadVersion::V2), 0.0);
    }

    #[test]
    fn v2_scores_with_has_answer_and_no_answer_splits() {
        let questions = [
            ScoredQuestion {
                gold: vec!["Denver Broncos", "Broncos"],
                prediction: "broncos",
            },
            // gold "santa clara california", prediction "clara california": F1 0.8.
            ScoredQuestion {
                gold: vec!["Santa Clara, California"],
                prediction: "Clara California",
            },
            ScoredQuestion {
                gold: vec![],
                prediction: "",
            },
            ScoredQuestion {
                gold: vec![],
                prediction: "Levi",
            },
        ];
        let scores = squad_scores(&questions, SquadVersion::V2).expect("scores");
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(scores.all.exact, 50.0) && close(scores.all.f1, 70.0));
        assert_eq!(scores.all.total, 4);
        let has = scores.has_answer.expect("HasAns");
        assert!(close(has.exact, 50.0) && close(has.f1, 90.0) && has.total == 2);
        let no = scores.no_answer.expect("NoAns");
        assert!(close(no.exact, 50.0) && close(no.f1, 50.0) && no.total == 2);

        let v1 = squad_scores(&questions[..2], SquadVersion::V1).expect("scores");
        assert!(close(v1.all.exact, 50.0) && close(v1.all.f1, 90.0));
        assert_eq!((v1.has_answer, v1.no_answer), (None, None));
        assert_eq!(squad_scores(&[], SquadVersion::V2), None);
    }

    #[test]
    fn a_gold_answer_that_normalises_to_nothing_is_dropped_in_v2_only() {
        let question = [ScoredQuestion {
            gold: vec!["The", "Broncos"],
            prediction: "a",
        }];
        // v1 compares "" with "": EM 1; v2 drops "The" and compares with "broncos".
        let v1 = squad_scores(&question, SquadVersion::V1).expect("v1");
        assert_eq!(v1.all.exact, 100.0);
        let v2 = squad_scores(&question, SquadVersion::V2).expect("v2");
        assert_eq!((v2.all.exact, v2.all.f1), (0.0, 0.0));
    }
}
