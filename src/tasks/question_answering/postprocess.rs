//! From per-window start/end logits to one answer per question, as transformers'
//! `postprocess_qa_predictions` (run_qa's `utils_qa.py`) picks it: in every window, the
//! `n_best` highest start and end logits are paired; a pair is a candidate when both tokens
//! are in the context, start ≤ end and the span is at most `max_answer_length` tokens; the
//! candidate with the highest start + end logit wins across windows. With unanswerable
//! questions (SQuAD v2) the lowest null score (CLS start + end) over the windows competes:
//! the answer is empty when `null − best` exceeds the threshold (0).
//!
//! The answer's `score` is the question-answering pipeline's: the span's start probability
//! times its end probability, each a softmax over its window's context tokens and CLS (for
//! an empty answer, the smallest such null probability over the windows).

use serde::{Deserialize, Serialize};

use super::windows::QaWindow;

/// run_qa's defaults: 20 candidates a side, answers of at most 30 tokens, threshold 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AnswerSettings {
    pub n_best: usize,
    pub max_answer_length: usize,
    /// SQuAD v2: the model may answer "" (it was trained with unanswerable questions).
    pub allow_no_answer: bool,
    pub null_score_diff_threshold: f32,
}

impl Default for AnswerSettings {
    fn default() -> Self {
        Self {
            n_best: 20,
            max_answer_length: 30,
            allow_no_answer: false,
            null_score_diff_threshold: 0.0,
        }
    }
}

/// One window's logits (only its real tokens: `start.len() == window.len()`).
#[derive(Debug, Clone, Copy)]
pub struct WindowLogits<'a> {
    pub window: &'a QaWindow,
    pub start: &'a [f32],
    pub end: &'a [f32],
}

/// The answer to one question: character offsets into the context (`start == end` and an
/// empty text when unanswered).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QaPrediction {
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

/// A candidate span.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    window: usize,
    start_token: usize,
    end_token: usize,
    chars: (usize, usize),
    logit_score: f32,
}

/// Indices of the `n` largest values, largest first (ties: lower index first).
fn top_indices(values: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(n);
    order
}

fn candidates(index: usize, logits: &WindowLogits, settings: &AnswerSettings) -> Vec<Candidate> {
    let w = logits.window;
    let starts = top_indices(logits.start, settings.n_best);
    let ends = top_indices(logits.end, settings.n_best);
    let mut out = Vec::new();
    for &s in &starts {
        for &e in &ends {
            let (Some(first), Some(last)) = (w.context_span(s), w.context_span(e)) else {
                continue;
            };
            if e < s || e - s + 1 > settings.max_answer_length {
                continue;
            }
            out.push(Candidate {
                window: index,
                start_token: s,
                end_token: e,
                chars: (first.0, last.1),
                logit_score: logits.start[s] + logits.end[e],
            });
        }
    }
    out
}

/// Softmax over the window's context tokens and CLS (the pipeline's `p_mask`); others 0.
fn answer_probabilities(window: &QaWindow, logits: &[f32]) -> Vec<f32> {
    let allowed = |i: usize| i == window.cls_index || window.context_span(i).is_some();
    let max = (0..logits.len())
        .filter(|&i| allowed(i))
        .map(|i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = (0..logits.len())
        .map(|i| {
            if allowed(i) {
                (logits[i] - max).exp()
            } else {
                0.0
            }
        })
        .collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Byte range of the characters `[start, end)` of `text`.
fn char_slice(text: &str, start: usize, end: usize) -> &str {
    let byte = |n: usize| text.char_indices().nth(n).map_or(text.len(), |(b, _)| b);
    &text[byte(start)..byte(end)]
}

/// The answer to a question over `context` from the logits of all its windows.
pub fn best_answer(
    context: &str,
    windows: &[WindowLogits],
    settings: &AnswerSettings,
) -> QaPrediction {
    let null_scores = windows.iter().map(|w| {
        let cls = w.window.cls_index;
        w.start[cls] + w.end[cls]
    });
    let min_null = null_scores.fold(f32::INFINITY, f32::min);
    let best = windows
        .iter()
        .enumerate()
        .flat_map(|(i, w)| candidates(i, w, settings))
        .reduce(|best, c| {
            if c.logit_score > best.logit_score {
                c
            } else {
                best
            }
        });
    let null_probability = || {
        windows
            .iter()
            .map(|w| {
                let cls = w.window.cls_index;
                answer_probabilities(w.window, w.start)[cls]
                    * answer_probabilities(w.window, w.end)[cls]
            })
            .fold(f32::INFINITY, f32::min)
    };
    let no_answer = |score: f32| QaPrediction {
        text: String::new(),
        start: 0,
        end: 0,
        score,
    };
    let Some(best) = best else {
        return no_answer(if windows.is_empty() {
            0.0
        } else {
            null_probability()
        });
    };
    if settings.allow_no_answer && min_null - best.logit_score > settings.null_score_diff_threshold
    {
        return no_answer(null_probability());
    }
    let w = &windows[best.window];
    let score = answer_probabilities(w.window, w.start)[best.start_token]
        * answer_probabilities(w.window, w.end)[best.end_token];
    QaPrediction {
        text: char_slice(context, best.chars.0, best.chars.1).to_string(),
        start: best.chars.0,
        end: best.chars.1,
        score,
    }
}

#[cfg(test)]
#[path = "postprocess_tests.rs"]
mod tests;
