//! Image files: zip and tar archives of class folders, image JSONL, and the first bad
//! entry named for each rule.
#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Write};

use base64::Engine;

use super::*;
use crate::domain::dataset::DataFormat;

pub(crate) fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([shade, 255 - shade, 40]));
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

pub(crate) fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn scan_bytes(bytes: &[u8]) -> Result<ImageSummary, DatasetError> {
    let mut cursor = Cursor::new(bytes);
    let container = image_container(&mut cursor).unwrap();
    scan_images(cursor, container).map_err(ScanError::into_dataset_error)
}

fn four_images() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("cat/1.png", png(4, 4, 10)),
        ("cat/2.PNG", png(5, 3, 20)),
        ("dog/a.png", png(4, 4, 200)),
        ("dog/b.png", png(6, 6, 220)),
    ]
}

#[test]
fn zip_and_tar_archives_of_class_folders_give_classes_and_counts() {
    let mut entries = four_images();
    // Metadata macOS adds is skipped; a nested root folder is fine (the parent names the class).
    entries.push(("__MACOSX/cat/._1.png", vec![0, 1, 2]));
    entries.push(("train/dog/c.png", png(3, 3, 230)));
    for bytes in [zip_of(&entries), tar_of(&entries)] {
        let summary = scan_bytes(&bytes).unwrap();
        assert_eq!(summary.examples, 5);
        assert_eq!(
            summary.classes.into_iter().collect::<Vec<_>>(),
            [("cat".to_string(), 2), ("dog".to_string(), 3)]
        );
    }
}

#[test]
fn the_whole_file_is_detected_as_images_and_summarised() {
    let summary = crate::domain::dataset::scan(Cursor::new(zip_of(&four_images()))).unwrap();
    assert_eq!(summary.format, DataFormat::Images);
    assert_eq!(summary.examples, 4);
    assert_eq!(summary.labels, ["cat", "dog"]);
}

#[test]
fn jsonl_rows_take_data_urls_or_plain_base64() {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let rows = [
        format!(
            r#"{{"image": "data:image/png;base64,{}", "label": "cat"}}"#,
            b64(&png(4, 4, 1))
        ),
        format!(r#"{{"image": "{}", "label": "cat"}}"#, b64(&png(4, 4, 2))),
        format!(r#"{{"image": "{}", "label": 7}}"#, b64(&png(4, 4, 3))),
        format!(r#"{{"image": "{}", "label": 7}}"#, b64(&png(4, 4, 4))),
    ];
    let file = rows.join("\n");
    let summary = crate::domain::dataset::scan(Cursor::new(file.as_bytes())).unwrap();
    assert_eq!(summary.format, DataFormat::Images);
    assert_eq!(summary.labels, ["7", "cat"]);
}

#[test]
fn each_bad_entry_is_named() {
    let mut traversal = four_images();
    traversal.push(("../evil/x.png", png(2, 2, 1)));
    let mut loose = four_images();
    loose.push(("x.png", png(2, 2, 1)));
    let mut not_image = four_images();
    not_image.push(("cat/notes.txt", b"hello".to_vec()));
    let mut broken = four_images();
    broken.insert(1, ("cat/3.png", b"\x89PNG\r\n\x1a\n broken".to_vec()));
    let mut lonely = four_images();
    lonely.push(("bird/1.png", png(2, 2, 9)));
    for (entries, needle) in [
        (traversal, "`../evil/x.png` has an absolute path or `..`"),
        (loose, "`x.png` has no label folder"),
        (not_image, "`cat/notes.txt` is not an image"),
        (
            broken,
            "Archive entry 2 `cat/3.png`: the image cannot be decoded",
        ),
        (lonely, "Class `bird` has only 1 image"),
    ] {
        let error = scan_bytes(&zip_of(&entries)).unwrap_err();
        assert!(
            error.message.contains(needle),
            "{needle}: {}",
            error.message
        );
    }
    let one_class = vec![("cat/1.png", png(2, 2, 1)), ("cat/2.png", png(2, 2, 2))];
    let error = scan_bytes(&zip_of(&one_class)).unwrap_err();
    assert!(
        error.message.contains("at least 2 classes"),
        "{}",
        error.message
    );
}

#[test]
fn jsonl_errors_name_the_example() {
    for (row, needle) in [
        (
            r#"{"image": "https://x.org/a.png", "label": "a"}"#,
            "does not fetch images",
        ),
        (r#"{"image": "@@@", "label": "a"}"#, "not valid base64"),
        (r#"{"image": 3, "label": "a"}"#, "must be a base64 string"),
        (r#"{"image": "UE5H"}"#, "missing key 'label'"),
    ] {
        let error = scan_bytes(row.as_bytes()).unwrap_err();
        assert!(
            error.message.starts_with("Invalid file format. Example 1"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains(needle),
            "{needle}: {}",
            error.message
        );
    }
    // Valid base64 that is no image: the decode check names it.
    let error = scan_bytes(br#"{"image": "UE5HUE5H", "label": "a"}"#).unwrap_err();
    assert!(
        error
            .message
            .contains("is not a png, jpeg, webp or bmp image"),
        "{}",
        error.message
    );
}

#[test]
fn oversized_images_are_refused_before_decoding_their_pixels() {
    // A 9000×1 PNG is tiny on disk but over the side limit.
    let wide = png(MAX_IMAGE_SIDE + 1, 1, 5);
    let error = decode_image(&wide).unwrap_err();
    assert!(error.contains("cannot be decoded"), "{error}");
}
