#![allow(clippy::unwrap_used)]

use super::*;

const LABELS: [&str; 7] = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"];

/// Whole words of the tiny vocabulary, so every token's offsets cover one word.
const TEXTS: [&str; 3] = [
    "the movie was really great fun",
    "bad film",
    "i love the food and the music",
];

fn tagger(max_len: usize) -> (tempfile::TempDir, TokenTagger) {
    let labels = LABELS.iter().map(|s| s.to_string()).collect();
    tiny_tagger(labels, max_len)
}

fn inputs(aggregation: Aggregation) -> Vec<TextToTag> {
    TEXTS
        .iter()
        .map(|text| TextToTag {
            text: text.to_string(),
            aggregation,
        })
        .collect()
}

fn serve(
    backend: &mut TokenTagger,
    inputs: &[TextToTag],
    max_batch: usize,
) -> Vec<Vec<TokenEntity>> {
    let prepared: Vec<EncodedText> = inputs.iter().map(|i| backend.prepare(i).unwrap()).collect();
    let round: Vec<(&TextToTag, &EncodedText)> = inputs.iter().zip(&prepared).collect();
    backend
        .serve_round(&round, max_batch)
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn slice(text: &str, entity: &TokenEntity) -> String {
    text.chars()
        .skip(entity.start)
        .take(entity.end - entity.start)
        .collect()
}

#[test]
fn entity_offsets_slice_the_text_to_their_word() {
    let (_dir, mut backend) = tagger(64);
    assert_eq!(backend.labels().len(), 7);
    for aggregation in [Aggregation::None, Aggregation::Simple] {
        let tagged = serve(&mut backend, &inputs(aggregation), 8);
        assert_eq!(tagged.len(), 3);
        let found: usize = tagged.iter().map(Vec::len).sum();
        assert!(found > 0, "{aggregation:?}: a random head tags something");
        for (text, entities) in TEXTS.iter().zip(&tagged) {
            for entity in entities {
                assert_eq!(slice(text, entity), entity.word, "{entity:?}");
                assert_ne!(entity.label, "O");
                assert!(entity.score > 0.0 && entity.score <= 1.0);
                match aggregation {
                    // Whole-word tokens: the first word's token is at index 1 ([CLS] = 0).
                    Aggregation::None => {
                        let words_before = text[..entity.start].split_whitespace().count();
                        assert_eq!(entity.index, Some(words_before + 1), "{entity:?}");
                        assert!(LABELS.contains(&entity.label.as_str()));
                    }
                    Aggregation::Simple => {
                        assert_eq!(entity.index, None);
                        assert!(["LOC", "ORG", "PER"].contains(&entity.label.as_str()));
                    }
                }
            }
        }
    }
}

#[test]
fn batched_texts_get_the_entities_they_get_alone() {
    let (_dir, mut backend) = tagger(64);
    let mixed: Vec<TextToTag> = inputs(Aggregation::None)
        .into_iter()
        .zip(inputs(Aggregation::Simple))
        .flat_map(|(none, simple)| [none, simple])
        .collect();
    let together = serve(&mut backend, &mixed, 8);
    for (input, batched) in mixed.iter().zip(&together) {
        let alone = serve(&mut backend, std::slice::from_ref(input), 1);
        assert_eq!(alone[0].len(), batched.len(), "{input:?}");
        for (a, b) in alone[0].iter().zip(batched) {
            assert_eq!(
                (&a.label, a.index, a.start, a.end),
                (&b.label, b.index, b.start, b.end)
            );
            assert!((a.score - b.score).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn long_texts_are_truncated_to_the_model_length() {
    // [CLS] the movie [SEP]: only the first two words can be tagged.
    let (_dir, mut backend) = tagger(4);
    let long = &inputs(Aggregation::None)[0];
    assert_eq!(backend.prepare(long).unwrap().ids.len(), 4);
    let (_full_dir, full) = tagger(64);
    assert_eq!(full.prepare(long).unwrap().ids.len(), 8);
    let tagged = serve(&mut backend, &inputs(Aggregation::None), 8);
    assert!(
        tagged[0].iter().all(|e| e.end <= "the movie".len()),
        "{:?}",
        tagged[0]
    );
}
