use std::path::PathBuf;

use tokenizers::Tokenizer;

use super::*;

/// 19 context tokens, one word each in the tiny vocabulary.
const CONTEXT: &str = "the movie was good and the food was great and the music was nice and \
                       the story was fun";
/// 5 tokens: with 3 special tokens, `max_seq_len` 16 leaves 8 context tokens per window.
const QUESTION: &str = "  what was the food?";

fn tiny_tokenizer() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::zoo::testing::write_tiny_bert(dir.path(), 1).expect("tiny bert");
    let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer");
    (dir, tokenizer)
}

fn answer(text: &str, nth: usize) -> QaAnswer {
    let (start, _) = CONTEXT
        .match_indices(text)
        .nth(nth)
        .expect("answer in context");
    QaAnswer {
        text: text.into(),
        answer_start: start,
    }
}

fn tiny_windows() -> Vec<QaWindow> {
    let (_dir, tokenizer) = tiny_tokenizer();
    let settings = WindowSettings {
        max_seq_len: 16,
        doc_stride: 3,
    };
    let qa = QaTokenizer::new(&tokenizer, settings).expect("qa tokenizer");
    qa.windows(QUESTION, CONTEXT).expect("windows")
}

#[test]
fn a_long_context_becomes_overlapping_windows_with_offsets_and_segments() {
    let windows = tiny_windows();
    // Context tokens [0, 8), [5, 13), [10, 18), [15, 19): step 8 - 3 (the windows Python's
    // `tokenizers` makes of the same vocabulary).
    let lengths: Vec<usize> = windows.iter().map(QaWindow::len).collect();
    assert_eq!(lengths, [16, 16, 16, 12]);
    // The last window ends with the context's last word ("fun", token 18).
    let fun = CONTEXT.len() - 3;
    assert_eq!(windows[3].context_span(10), Some((fun, fun + 3)));
    let first = &windows[0];
    assert_eq!(first.cls_index, 0);
    assert_eq!(first.input_ids[0], 2, "[CLS]");
    assert_eq!(first.input_ids[6], 3, "[SEP] after the question");
    let mut sequence_ids = vec![None];
    sequence_ids.extend([Some(0); 5]);
    sequence_ids.push(None);
    sequence_ids.extend([Some(1); 8]);
    sequence_ids.push(None);
    assert_eq!(first.sequence_ids, sequence_ids);
    let mut type_ids = vec![0; 7];
    type_ids.extend([1; 9]);
    assert_eq!(first.type_ids, type_ids);
    // Every window's context and final [SEP] carry segment 1, as transformers' windows do
    // (the post-processor alone gives the overflowing windows segment 0).
    for window in &windows[1..] {
        let mut expected = vec![0; 7];
        expected.resize(window.len(), 1);
        assert_eq!(window.type_ids, expected);
    }
    // The question's offsets are in the stripped question ("what" = 0..4).
    assert_eq!(first.offsets[1], (0, 4));
    assert_eq!(first.context_span(1), None);
    assert_eq!(first.context_span(7), Some((0, 3)));
    // The second window starts at context token 5: the second "the".
    let second_the = CONTEXT.match_indices("the").nth(1).expect("the").0;
    assert_eq!(
        windows[1].context_span(7),
        Some((second_the, second_the + 3))
    );
    assert_eq!(windows[1].context_span(15), None, "final [SEP]");
}

#[test]
fn labels_point_at_the_answer_tokens_or_at_cls() {
    let windows = tiny_windows();
    let labels = |answer: Option<&QaAnswer>| -> Vec<(usize, usize)> {
        windows
            .iter()
            .map(|w| span_label(w, answer))
            .map(|l| (l.start, l.end))
            .collect()
    };
    // "great" is context token 8: only the second window holds it, at 7 + (8 - 5).
    let great = answer("great", 0);
    assert_eq!(labels(Some(&great)), [(0, 0), (10, 10), (0, 0), (0, 0)]);
    // Tokens 8..=11; the third window starts at token 10, so it lacks the start.
    let phrase = answer("great and the music", 0);
    assert_eq!(labels(Some(&phrase)), [(0, 0), (10, 13), (0, 0), (0, 0)]);
    // The second "was" is token 7: the first window's last context token (position 14),
    // and position 7 + 2 in the second.
    let was = answer("was", 1);
    assert_eq!(labels(Some(&was)), [(14, 14), (9, 9), (0, 0), (0, 0)]);
    assert_eq!(labels(None), [(0, 0); 4]);
}

#[test]
fn a_question_that_leaves_no_room_for_the_stride_is_refused() {
    let (_dir, tokenizer) = tiny_tokenizer();
    let settings = WindowSettings {
        max_seq_len: 16,
        doc_stride: 8,
    };
    let qa = QaTokenizer::new(&tokenizer, settings).expect("qa tokenizer");
    let error = qa.windows(QUESTION, CONTEXT).expect_err("no room");
    assert_eq!(
        error.to_string(),
        "unsupported: the question has 5 tokens, which leaves 8 of max_seq_len 16 for the \
         context; that must be more than doc_stride 8"
    );
    // A short context needs no truncation and gives one window.
    let qa = QaTokenizer::new(&tokenizer, WindowSettings::default()).expect("qa tokenizer");
    assert_eq!(qa.windows(QUESTION, CONTEXT).expect("windows").len(), 1);
}

fn minilm_tokenizer() -> Option<Tokenizer> {
    let Some(assets) = std::env::var_os("TEMPER_ASSETS") else {
        eprintln!("TEMPER_ASSETS unset: skipping a real-tokenizer test (scripts/test.sh sets it)");
        return None;
    };
    let path =
        PathBuf::from(assets).join("models/sentence-transformers/all-MiniLM-L6-v2/tokenizer.json");
    Some(Tokenizer::from_file(&path).expect("MiniLM tokenizer.json"))
}

/// SQuAD's first paragraph, with non-ASCII text at its end.
const SUPER_BOWL: &str = "Super Bowl 50 was an American football game to determine the \
champion of the National Football League (NFL) for the 2015 season. The American Football \
Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) \
champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on \
February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California. \
As this was the 50th Super Bowl, the league emphasized the \"golden anniversary\" with various \
gold-themed initiatives, as well as temporarily suspending the tradition of naming each Super \
Bowl game with Roman numerals (under which the game would have been known as \"Super Bowl \
L\"), so that the logo could prominently feature the Arabic numerals 50. Zürich's café \
owners watched it too.";

/// Numbers from `scripts/qa_reference_windows.py` (Python `tokenizers`, run_qa's labelling)
/// on MiniLM's tokenizer.json, `max_seq_len` 64, `doc_stride` 16.
#[test]
fn minilm_windows_and_labels_match_the_python_tokenizer() {
    let Some(tokenizer) = minilm_tokenizer() else {
        return;
    };
    let settings = WindowSettings {
        max_seq_len: 64,
        doc_stride: 16,
    };
    let qa = QaTokenizer::new(&tokenizer, settings).expect("qa tokenizer");
    let question = "  Which NFL team represented the AFC at Super Bowl 50?";
    assert_eq!(
        SUPER_BOWL.chars().count(),
        812,
        "the same text as the Python run"
    );
    let windows = qa.windows(question, SUPER_BOWL).expect("windows");
    let lengths: Vec<usize> = windows.iter().map(QaWindow::len).collect();
    assert_eq!(lengths, [64, 64, 64, 64, 44]);
    assert_eq!(windows[0].input_ids[..4], [101, 2029, 5088, 2136]);
    let first_context: Vec<(usize, usize)> = windows
        .iter()
        .map(|w| {
            let i = w.sequence_ids.iter().position(|s| *s == Some(1));
            w.offsets[i.expect("context part")]
        })
        .collect();
    assert_eq!(
        first_context,
        [(0, 5), (184, 191), (355, 359), (521, 525), (692, 693)]
    );
    // Answer text, its answer_start, and each window's label.
    type Case = (&'static str, usize, [(usize, usize); 5]);
    let cases: [Case; 3] = [
        (
            "Denver Broncos",
            177,
            [(46, 47), (0, 0), (0, 0), (0, 0), (0, 0)],
        ),
        // In two overlapping windows.
        (
            "Levi's Stadium",
            355,
            [(0, 0), (47, 50), (13, 16), (0, 0), (0, 0)],
        ),
        // Character (not byte) offsets.
        (
            "Zürich's café",
            776,
            [(0, 0), (0, 0), (0, 0), (0, 0), (34, 37)],
        ),
    ];
    for (text, answer_start, expected) in cases {
        let answer = QaAnswer {
            text: text.into(),
            answer_start,
        };
        let labels: Vec<(usize, usize)> = windows
            .iter()
            .map(|w| span_label(w, Some(&answer)))
            .map(|l| (l.start, l.end))
            .collect();
        assert_eq!(labels, expected, "{text}");
    }
}
