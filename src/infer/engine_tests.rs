//! Engine tests with a fake backend: batching rounds, back-pressure, shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;

use super::engine::{plan_batches, prediction, thread_name};
use super::{ClassifierBackend, Engine, EngineConfig, InferError};
use crate::tasks::serve::ServeError;

/// Tokens = one id per word (its length); logits depend only on the sequence, so any
/// batching must give the same answer as one text at a time.
struct FakeBackend {
    labels: Vec<String>,
    /// Sizes of every `logits` call and the lengths in it, in call order.
    batches: Arc<Mutex<Vec<Vec<usize>>>>,
    /// When set, every `logits` call first reports on `entered` then waits for a release.
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    dropped: Arc<AtomicBool>,
}

impl FakeBackend {
    fn new() -> Self {
        Self {
            labels: vec!["neg".into(), "neu".into(), "pos".into()],
            batches: Arc::default(),
            gate: None,
            dropped: Arc::default(),
        }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

fn fake_logits(seq: &[u32]) -> Vec<f32> {
    let total: u32 = seq.iter().sum();
    vec![seq.len() as f32 * 0.5, (total % 7) as f32, 1.0]
}

impl ClassifierBackend for FakeBackend {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, ServeError> {
        if text == "untokenizable" {
            return Err(ServeError::failed("bad text"));
        }
        Ok(text.split_whitespace().map(|w| w.len() as u32).collect())
    }

    fn logits(&mut self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ServeError> {
        if let Some((entered, release)) = &self.gate {
            entered.send(()).expect("test listens");
            release.recv().expect("test releases");
        }
        // A 14-letter word stands for a text the model cannot run (e.g. device OOM).
        if seqs.iter().any(|s| s.contains(&14)) {
            return Err(ServeError::failed("forward failed"));
        }
        let lengths = seqs.iter().map(|s| s.len()).collect();
        self.batches.lock().expect("batches lock").push(lengths);
        Ok(seqs.iter().map(|s| fake_logits(s)).collect())
    }

    fn parameter_bytes(&self) -> usize {
        1234
    }
}

/// A gated backend plus the test's ends of the gate.
fn gated_backend() -> (FakeBackend, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let mut backend = FakeBackend::new();
    backend.gate = Some((entered_tx, release_rx));
    (backend, entered_rx, release_tx)
}

fn texts(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn expected(text: &str) -> super::ClassPrediction {
    let ids: Vec<u32> = text.split_whitespace().map(|w| w.len() as u32).collect();
    let labels = texts(&["neg", "neu", "pos"]);
    prediction(&labels, &fake_logits(&ids)).expect("prediction")
}

#[test]
fn batches_are_sorted_by_length_and_bounded() {
    let plan = plan_batches(&[5, 1, 3, 2, 4], 2);
    assert_eq!(plan, vec![vec![1, 3], vec![2, 4], vec![0]]);
}

#[test]
fn prediction_is_softmax_with_argmax_label() {
    let labels = texts(&["a", "b", "c"]);
    let p = prediction(&labels, &[1.0, 3.0, 2.0]).expect("prediction");
    let total: f32 = p.scores.iter().map(|(_, s)| s).sum();
    assert!((total - 1.0).abs() < 1e-6);
    assert_eq!(p.label, "b");
    // softmax(1,3,2)[1] = e^3 / (e + e^3 + e^2)
    let e = std::f64::consts::E;
    let want = e.powi(3) / (e + e.powi(3) + e.powi(2));
    assert!((p.score as f64 - want).abs() < 1e-6);
    assert_eq!(p.scores[0].0, "a");
    assert!(prediction(&labels, &[1.0]).is_err());
}

#[tokio::test]
async fn queued_requests_share_one_sorted_forward_pass() {
    let (backend, entered, release) = gated_backend();
    let batches = backend.batches.clone();
    let config = EngineConfig {
        max_batch_texts: 64,
        max_queued_texts: 64,
    };
    let engine = Engine::spawn("fake", Box::new(backend), config).expect("engine");
    let mut first = Box::pin(engine.classify(texts(&["one"])));
    assert!(matches!(futures::poll!(&mut first), Poll::Pending));
    entered.recv().expect("first round started");
    // While the thread is busy, three more requests queue up.
    let later = [
        texts(&["a b c d", "a b"]),
        texts(&["x y z"]),
        texts(&["p q r s t", "u"]),
    ];
    let mut pending: Vec<_> = later
        .iter()
        .map(|t| Box::pin(engine.classify(t.clone())))
        .collect();
    for request in &mut pending {
        assert!(matches!(futures::poll!(request), Poll::Pending));
    }
    release.send(()).expect("release first");
    release.send(()).expect("release second");
    assert_eq!(first.await.expect("first"), vec![expected("one")]);
    for (request, sent) in pending.into_iter().zip(&later) {
        let got = request.await.expect("answered");
        let want: Vec<_> = sent.iter().map(|t| expected(t)).collect();
        assert_eq!(got, want);
    }
    let batches = batches.lock().expect("batches").clone();
    assert_eq!(batches, vec![vec![1], vec![1, 2, 3, 4, 5]]);
}

#[tokio::test]
async fn a_full_queue_answers_overloaded() {
    let (backend, entered, release) = gated_backend();
    let config = EngineConfig {
        max_batch_texts: 4,
        max_queued_texts: 4,
    };
    let engine = Engine::spawn("fake", Box::new(backend), config).expect("engine");
    let mut holding = Box::pin(engine.classify(texts(&["a", "b", "c"])));
    assert!(matches!(futures::poll!(&mut holding), Poll::Pending));
    entered.recv().expect("round started");
    let refused = engine.classify(texts(&["d", "e"])).await;
    assert_eq!(refused, Err(InferError::Overloaded));
    let mut fits = Box::pin(engine.classify(texts(&["f"])));
    assert!(matches!(futures::poll!(&mut fits), Poll::Pending));
    let too_big = engine.classify(texts(&["1", "2", "3", "4", "5"])).await;
    assert!(
        matches!(too_big, Err(InferError::InvalidRequest { ref param, .. }) if param == "input")
    );
    release.send(()).expect("release");
    release.send(()).expect("release");
    assert_eq!(holding.await.expect("held").len(), 3);
    assert_eq!(fits.await.expect("fits").len(), 1);
    // Permits came back with the replies: a full-size request is accepted again.
    let mut full = Box::pin(engine.classify(texts(&["1", "2", "3", "4"])));
    assert!(matches!(futures::poll!(&mut full), Poll::Pending));
    release.send(()).expect("release");
    assert_eq!(full.await.expect("full").len(), 4);
}

#[tokio::test]
async fn a_failing_text_fails_only_its_request() {
    let engine = Engine::spawn(
        "fake",
        Box::new(FakeBackend::new()),
        EngineConfig::default(),
    )
    .expect("e");
    let (bad, good) = tokio::join!(
        engine.classify(texts(&["fine", "untokenizable"])),
        engine.classify(texts(&["also fine"]))
    );
    assert_eq!(bad, Err(InferError::engine("bad text")));
    assert_eq!(good.expect("good"), vec![expected("also fine")]);
}

#[tokio::test]
async fn dropping_the_engine_ends_and_joins_its_thread() {
    let backend = FakeBackend::new();
    let dropped = backend.dropped.clone();
    let engine = Engine::spawn("fake", Box::new(backend), EngineConfig::default()).expect("e");
    assert_eq!(super::Servable::parameter_bytes(&engine), 1234);
    engine.classify(texts(&["warm up"])).await.expect("answer");
    assert!(!dropped.load(Ordering::SeqCst));
    drop(engine);
    // Drop returned only after the thread exited, which dropped the backend.
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_failed_forward_fails_its_request_and_the_engine_keeps_serving() {
    let config = EngineConfig {
        max_batch_texts: 1,
        max_queued_texts: 8,
    };
    let engine = Engine::spawn("fake", Box::new(FakeBackend::new()), config).expect("e");
    let failed = engine.classify(texts(&["fine", "fourteenletter"])).await;
    assert_eq!(failed, Err(InferError::engine("forward failed")));
    let after = engine.classify(texts(&["still fine"])).await;
    assert_eq!(after.expect("served"), vec![expected("still fine")]);
}

#[test]
fn thread_names_never_carry_nul_or_whitespace() {
    assert_eq!(thread_name("ft:tiny:x\0y z"), "infer-ft:tiny:x_y_z");
}
