use super::*;

/// `[CLS] q [SEP] <context tokens at `spans`> [SEP]`.
fn window(spans: &[(usize, usize)]) -> QaWindow {
    let n = spans.len() + 4;
    let mut offsets = vec![(0, 0), (0, 3), (0, 0)];
    offsets.extend_from_slice(spans);
    offsets.push((0, 0));
    let mut sequence_ids = vec![None, Some(0), None];
    sequence_ids.extend(std::iter::repeat_n(Some(1), spans.len()));
    sequence_ids.push(None);
    QaWindow {
        input_ids: vec![7; n],
        type_ids: vec![0; n],
        offsets,
        sequence_ids,
        cls_index: 0,
    }
}

const CONTEXT: &str = "alpha bravo cat delta";
const WORDS: [(usize, usize); 4] = [(0, 5), (6, 11), (12, 15), (16, 21)];

/// Logits for `[CLS] q [SEP] c0 c1 c2 c3 [SEP]`.
type Logits = [f32; 8];

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn the_best_valid_span_wins_across_windows() {
    let (a, b) = (window(&WORDS), window(&WORDS[2..]));
    // Window A: the question token (10 + 10) and the end-before-start pairs (c1, c0) and
    // (c2, c0) score highest but are not answers; (c1, c2) scores 5 + 4.
    let a_start: Logits = [0.0, 10.0, 0.0, 0.0, 5.0, 3.0, 0.0, 0.0];
    let a_end: Logits = [0.0, 10.0, 0.0, 6.0, 0.0, 4.0, 0.0, 0.0];
    // Window B (c2, c3 only, at 3 and 4): (c3, c3) scores 5 + 5.
    let b_start = [0.0, 0.0, 0.0, 0.0, 5.0, 0.0];
    let b_end = [0.0, 0.0, 0.0, 0.0, 5.0, 0.0];
    let logits = [
        WindowLogits {
            window: &a,
            start: &a_start,
            end: &a_end,
        },
        WindowLogits {
            window: &b,
            start: &b_start,
            end: &b_end,
        },
    ];
    let settings = AnswerSettings::default();
    let answer = best_answer(CONTEXT, &logits, &settings);
    assert_eq!(
        (answer.text.as_str(), answer.start, answer.end),
        ("delta", 16, 21)
    );
    // The pipeline's score: softmax over CLS + c2 + c3 (logits 0, 0, 5), squared.
    let p = 5f32.exp() / (5f32.exp() + 2.0);
    assert!(close(answer.score, p * p), "{} vs {}", answer.score, p * p);

    // Without window B, window A's best valid pair is (c1, c2): "bravo cat".
    let answer = best_answer(CONTEXT, &logits[..1], &settings);
    assert_eq!(
        (answer.text.as_str(), answer.start, answer.end),
        ("bravo cat", 6, 15)
    );
    // With spans of one token at most, (c2, c2) (3 + 4) beats (c0, c0) (0 + 6).
    let one_token = AnswerSettings {
        max_answer_length: 1,
        ..settings
    };
    let answer = best_answer(CONTEXT, &logits[..1], &one_token);
    assert_eq!(answer.text, "cat");
    // Only the top start and top end (the question token) considered: nothing valid.
    let top_one = AnswerSettings {
        n_best: 1,
        ..settings
    };
    let answer = best_answer(CONTEXT, &logits[..1], &top_one);
    assert_eq!((answer.text.as_str(), answer.start, answer.end), ("", 0, 0));
}

#[test]
fn the_null_score_decides_unanswerable_questions_when_allowed() {
    let w = window(&WORDS);
    let end: Logits = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0];
    let answer_for = |cls: f32, allow_no_answer: bool| {
        let start: Logits = [cls, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0];
        let end = {
            let mut e = end;
            e[0] = cls;
            e
        };
        let logits = [WindowLogits {
            window: &w,
            start: &start,
            end: &end,
        }];
        let settings = AnswerSettings {
            allow_no_answer,
            ..AnswerSettings::default()
        };
        best_answer(CONTEXT, &logits, &settings)
    };
    // Null 5 + 5 = 10 > best span 4 + 4 = 8: unanswered when allowed.
    let unanswered = answer_for(5.0, true);
    assert_eq!((unanswered.text.as_str(), unanswered.start), ("", 0));
    // Its score: P(CLS) squared, softmax over CLS (5), c0..c2 (0) and c3 (4).
    let z = 5f32.exp() + 3.0 + 4f32.exp();
    let p_null = 5f32.exp() / z;
    assert!(close(unanswered.score, p_null * p_null));
    assert_eq!(answer_for(5.0, false).text, "delta");
    // Null 3.9 + 3.9 < 8: answered.
    assert_eq!(answer_for(3.9, true).text, "delta");
}

#[test]
fn offsets_are_characters_and_the_text_is_sliced_by_them() {
    let context = "Zürich café au lait";
    let w = window(&[(0, 6), (7, 11), (12, 14), (15, 19)]);
    let start: Logits = [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0];
    let end: Logits = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0];
    let logits = [WindowLogits {
        window: &w,
        start: &start,
        end: &end,
    }];
    let answer = best_answer(context, &logits, &AnswerSettings::default());
    assert_eq!(
        (answer.text.as_str(), answer.start, answer.end),
        ("café au lait", 7, 19)
    );
}
