use candle_core::Device;
use tokenizers::Tokenizer;

use super::*;
use crate::domain::dataset::QaAnswer;
use crate::tasks::question_answering::head::QaModelSpec;
use crate::tasks::question_answering::windows::WindowSettings;

fn example(id: &str, question: &str, context: &str, answer: Option<&str>) -> QaExample {
    let answers = answer.map(|text| QaAnswer {
        text: text.into(),
        answer_start: context.find(text).expect("answer in context"),
    });
    QaExample {
        id: Some(id.into()),
        question: question.into(),
        context: context.into(),
        answers: answers.into_iter().collect(),
    }
}

fn examples() -> Vec<QaExample> {
    vec![
        example(
            "1",
            "what was good?",
            "the movie was good and the food was bad",
            Some("movie"),
        ),
        example(
            "2",
            "what was bad?",
            "the movie was good and the food was bad",
            Some("food"),
        ),
        example(
            "3",
            "who was happy?",
            "he was happy but she was sad",
            Some("he"),
        ),
        example(
            "4",
            "what was fun?",
            "the story was boring but the music was really fun",
            Some("the music"),
        ),
        example("5", "who was sad?", "the film was great", None),
    ]
}

#[test]
fn windows_carry_labels_and_their_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::zoo::testing::write_tiny_bert(dir.path(), 5).expect("tiny bert");
    let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer");
    let settings = WindowSettings {
        max_seq_len: 16,
        doc_stride: 2,
    };
    let qa = QaTokenizer::new(&tokenizer, settings).expect("qa tokenizer");
    let windows = labelled_windows(&qa, &examples()).expect("windows");
    // Questions of 4 tokens leave 9 context tokens: example 4 (10 tokens) needs two windows,
    // the second of context tokens 7-9 (a step of 9 - 2).
    assert_eq!(windows.example_of, [0, 1, 2, 3, 3, 4]);
    let labels: Vec<(usize, usize)> = windows.labels.iter().map(|l| (l.start, l.end)).collect();
    // "movie" is context token 1 after [CLS] + 4 + [SEP]; "the music" is tokens 5-6, only in
    // the first window of example 4; example 5 is unanswerable.
    assert_eq!(labels, [(7, 7), (12, 12), (6, 6), (11, 12), (0, 0), (0, 0)]);
    assert_eq!(squad_version(&examples()), SquadVersion::V2);
    assert_eq!(squad_version(&examples()[..4]), SquadVersion::V1);
}

/// Trains the tiny model on the five questions with candle's AdamW, then evaluates on them.
#[test]
fn a_model_that_memorised_the_questions_answers_them_all() {
    use candle_nn::Optimizer;
    let dir = tempfile::tempdir().expect("tempdir");
    crate::zoo::testing::write_tiny_bert(dir.path(), 5).expect("tiny bert");
    let tokenizer = Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer");
    let qa = QaTokenizer::new(&tokenizer, WindowSettings::default()).expect("qa tokenizer");
    let examples = examples();
    let windows = labelled_windows(&qa, &examples).expect("windows");
    let model = QuestionAnsweringModel::from_pretrained(
        dir.path(),
        &QaModelSpec::default(),
        &Device::Cpu,
        0,
    )
    .expect("model");
    let settings = AnswerSettings {
        allow_no_answer: true,
        ..AnswerSettings::default()
    };
    let before =
        evaluate(&model, &examples, &windows, &settings, 2, 0, &Device::Cpu).expect("evaluate");
    let vars = model.trainable_vars().into_iter().map(|v| v.var).collect();
    let params = candle_nn::ParamsAdamW {
        lr: 3e-3,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut optimizer = candle_nn::AdamW::new(vars, params).expect("adamw");
    let refs: Vec<&QaWindow> = windows.windows.iter().collect();
    let batch = collate_windows(&refs, 0, &Device::Cpu).expect("batch");
    for _ in 0..60 {
        let logits = model.forward(&batch, true).expect("forward");
        let loss = QuestionAnsweringModel::loss(&logits, &batch, &windows.labels).expect("loss");
        optimizer.backward_step(&loss).expect("step");
    }
    let after =
        evaluate(&model, &examples, &windows, &settings, 2, 0, &Device::Cpu).expect("evaluate");
    eprintln!(
        "loss {} -> {}, EM {} -> {}",
        before.loss, after.loss, before.scores.all.exact, after.scores.all.exact
    );
    assert!(
        before.loss > 1.5 && after.loss < 0.5,
        "{} -> {}",
        before.loss,
        after.loss
    );
    let texts: Vec<&str> = after.predictions.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["movie", "food", "he", "the music", ""]);
    assert_eq!(
        (after.scores.all.exact, after.scores.all.f1),
        (100.0, 100.0)
    );
    let has = after.scores.has_answer.expect("HasAns");
    assert_eq!(
        (has.total, after.scores.no_answer.expect("NoAns").total),
        (4, 1)
    );
    // Offsets point into the context.
    let music = &after.predictions[3];
    assert_eq!((music.start, music.end), (25, 34));
    assert!(music.score > 0.5 && music.score <= 1.0, "{}", music.score);
}
