//! Labelled images: a `.zip` or `.tar` archive of class folders (`label/name.png`, the
//! ImageFolder convention), or JSONL rows `{"image": "data:image/png;base64,…" | "<base64>",
//! "label": …}` (OpenAI's content-part convention for images).
//!
//! Archives are read entry by entry from the stored upload and never extracted: an entry
//! with `..` or an absolute path is refused by name all the same, since a user who made
//! one meant something else. Each image is decoded (with size limits) so a bad one is named
//! at upload, not found mid-training.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Cursor, Read, Seek};
use std::path::{Component, Path};

use base64::Engine;
use serde_json::{Map, Value};

use super::lines::{for_each_object, ScanError};
use super::{json_type, DatasetError, ExampleAt, MAX_LABELS, MAX_LABEL_BYTES};

/// The extensions an archive's images may have (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// Largest encoded image an archive entry may hold.
pub const MAX_IMAGE_BYTES: u64 = 32 * 1024 * 1024;

/// Largest width or height a decoded image may have, and the most memory its decoding may
/// take: what keeps a small "decompression bomb" from taking the service's memory.
pub const MAX_IMAGE_SIDE: u32 = 8192;
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;

/// How the images of a file are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageContainer {
    Zip,
    Tar,
    Jsonl,
}

/// One image with its class, and where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct LabeledImage {
    pub label: String,
    pub bytes: Vec<u8>,
    pub at: ImageAt,
}

/// An archive entry (1-based number and path) or a JSONL example.
#[derive(Debug, Clone)]
pub enum ImageAt {
    Entry { number: usize, path: String },
    Example(ExampleAt),
}

impl ImageAt {
    pub fn error(&self, rest: impl std::fmt::Display) -> DatasetError {
        match self {
            ImageAt::Entry { number, path } => DatasetError {
                line: *number,
                message: format!("Invalid file format. Archive entry {number} `{path}`{rest}"),
            },
            ImageAt::Example(at) => at.error(rest),
        }
    }
}

/// A zip or tar archive, told by its magic bytes; `None` for anything else.
pub fn archive_kind<R: Read + Seek>(reader: &mut R) -> io::Result<Option<ImageContainer>> {
    reader.rewind()?;
    let mut head = [0u8; 262];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    reader.rewind()?;
    if filled >= 4 && (&head[..4] == b"PK\x03\x04" || &head[..4] == b"PK\x05\x06") {
        return Ok(Some(ImageContainer::Zip));
    }
    if filled >= 262 && &head[257..262] == b"ustar" {
        return Ok(Some(ImageContainer::Tar));
    }
    Ok(None)
}

/// Calls `each` with every image of the file, in file order.
pub fn for_each_image<R: Read + Seek>(
    mut reader: R,
    container: ImageContainer,
    mut each: impl FnMut(LabeledImage) -> Result<(), DatasetError>,
) -> Result<(), ScanError> {
    reader.rewind()?;
    match container {
        ImageContainer::Zip => {
            let mut archive =
                zip::ZipArchive::new(reader).map_err(|e| unreadable_archive("zip", e))?;
            for index in 0..archive.len() {
                let mut entry = archive
                    .by_index(index)
                    .map_err(|e| unreadable_archive("zip", e))?;
                if entry.is_dir() {
                    continue;
                }
                let path = entry
                    .name()
                    .map_err(|e| unreadable_archive("zip", e))?
                    .to_string();
                let size = entry.size();
                if let Some(image) = archive_image(index + 1, &path, size, &mut entry)? {
                    each(image)?;
                }
            }
        }
        ImageContainer::Tar => {
            let mut archive = tar::Archive::new(reader);
            for (index, entry) in archive.entries()?.enumerate() {
                let mut entry = entry?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let size = entry.size();
                if let Some(image) = archive_image(index + 1, &path, size, &mut entry)? {
                    each(image)?;
                }
            }
        }
        ImageContainer::Jsonl => {
            for_each_object(BufReader::new(reader), |at, object| {
                each(jsonl_image(at, &object)?)
            })?;
        }
    }
    Ok(())
}

fn unreadable_archive(kind: &str, error: impl std::fmt::Display) -> ScanError {
    ScanError::Invalid(DatasetError {
        line: 0,
        message: format!("Invalid file format. The {kind} archive cannot be read: {error}."),
    })
}

/// The image an archive entry holds, its class from its folder; `None` for the metadata
/// archivers add (`__MACOSX/`, dot files).
fn archive_image(
    number: usize,
    path: &str,
    size: u64,
    entry: &mut impl Read,
) -> Result<Option<LabeledImage>, ScanError> {
    let at = ImageAt::Entry {
        number,
        path: path.to_string(),
    };
    let parts: Vec<Component> = Path::new(path).components().collect();
    if parts.iter().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        return Err(at
            .error(" has an absolute path or `..`: images must sit in class folders inside the archive.")
            .into());
    }
    let names: Vec<&str> = parts
        .iter()
        .filter_map(|c| match c {
            Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect();
    if names.iter().any(|n| n.starts_with('.') || *n == "__MACOSX") {
        return Ok(None);
    }
    let extension = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !IMAGE_EXTENSIONS.contains(&extension.as_str()) {
        return Err(at
            .error(format_args!(
                " is not an image ({}).",
                IMAGE_EXTENSIONS.join(", ")
            ))
            .into());
    }
    let [.., label, _file] = names.as_slice() else {
        return Err(at
            .error(" has no label folder: put each image in a folder named after its class (`cat/1.png`).")
            .into());
    };
    let label = checked_label(&at, label)?;
    if size > MAX_IMAGE_BYTES {
        return Err(at
            .error(format_args!(
                " is {size} bytes; an image may be at most {MAX_IMAGE_BYTES} bytes."
            ))
            .into());
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry.take(MAX_IMAGE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(Some(LabeledImage { label, bytes, at }))
}

fn checked_label(at: &ImageAt, label: &str) -> Result<String, DatasetError> {
    let label = label.trim();
    if label.is_empty() {
        return Err(at.error(": the label is empty."));
    }
    if label.len() > MAX_LABEL_BYTES {
        return Err(at.error(format_args!(
            ": the label is {} bytes long; a label is a class name of at most {MAX_LABEL_BYTES} bytes.",
            label.len()
        )));
    }
    Ok(label.to_string())
}

/// `{"image": "data:image/…;base64,…" | "<base64>", "label": "…" | integer}`.
fn jsonl_image(at: ExampleAt, object: &Map<String, Value>) -> Result<LabeledImage, DatasetError> {
    let image_at = ImageAt::Example(at);
    let image = match object.get("image") {
        None | Some(Value::Null) => return Err(at.missing_key("image")),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(at.error(format_args!(
                ": 'image' must be a base64 string or a data URL, got {}.",
                json_type(other)
            )))
        }
    };
    let label = match object.get("label") {
        None | Some(Value::Null) => return Err(at.missing_key("label")),
        Some(Value::String(label)) => label.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            return Err(at.error(format_args!(
                ": 'label' must be a string or an integer, got {}.",
                json_type(other)
            )))
        }
    };
    let bytes =
        decode_image_payload(image).map_err(|e| at.error(format_args!(": 'image' {e}.")))?;
    Ok(LabeledImage {
        label: checked_label(&image_at, &label)?,
        bytes,
        at: image_at,
    })
}

/// The bytes of a `data:image/…;base64,…` URL or of plain base64. An `http(s)` URL is
/// refused: temper never fetches.
pub fn decode_image_payload(payload: &str) -> Result<Vec<u8>, String> {
    let payload = payload.trim();
    if payload.starts_with("http://") || payload.starts_with("https://") {
        return Err("is a web URL; temper does not fetch images: send the image as a data URL (`data:image/png;base64,…`)".into());
    }
    let data = match payload.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest
                .split_once(',')
                .ok_or("is a data URL without a `,` before its data")?;
            if !meta.ends_with(";base64") {
                return Err("is a data URL that is not base64 (`data:image/png;base64,…`)".into());
            }
            data
        }
        None => payload,
    };
    base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| format!("is not valid base64 ({e})"))
}

/// Decodes an image (format from its bytes) within the size limits.
pub fn decode_image(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("is not a png, jpeg, webp or bmp image".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| format!("cannot be decoded: {e}"))
}

/// What validating an image file found: images and the count of each class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub examples: usize,
    pub classes: BTreeMap<String, usize>,
}

/// Decodes every image of the file once, and checks the classes: at least 2, each with at
/// least 2 images, at most [`MAX_LABELS`].
pub fn scan_images<R: Read + Seek>(
    reader: R,
    container: ImageContainer,
) -> Result<ImageSummary, ScanError> {
    let mut summary = ImageSummary {
        examples: 0,
        classes: BTreeMap::new(),
    };
    for_each_image(reader, container, |image| {
        decode_image(&image.bytes).map_err(|e| image.at.error(format_args!(": the image {e}.")))?;
        if !summary.classes.contains_key(&image.label) && summary.classes.len() == MAX_LABELS {
            return Err(image.at.error(format_args!(
                " brings class number {}; a file may have at most {MAX_LABELS} classes.",
                MAX_LABELS + 1
            )));
        }
        *summary.classes.entry(image.label).or_default() += 1;
        summary.examples += 1;
        Ok(())
    })?;
    check_classes(&summary.classes)?;
    Ok(summary)
}

fn check_classes(classes: &BTreeMap<String, usize>) -> Result<(), DatasetError> {
    let whole_file = |message: String| DatasetError { line: 0, message };
    if classes.is_empty() {
        return Err(whole_file(
            "Invalid file format. The file has no images.".into(),
        ));
    }
    if let Some((label, _)) = classes.iter().find(|(_, &n)| n < 2) {
        return Err(whole_file(format!(
            "Invalid file format. Class `{label}` has only 1 image; every class needs at least 2."
        )));
    }
    if classes.len() < 2 {
        return Err(whole_file(
            "Invalid file format. Image classification needs at least 2 classes, the file has 1."
                .into(),
        ));
    }
    Ok(())
}

/// Whether the first record of a JSONL file is an image row.
pub(crate) fn is_image_record(record: &Map<String, Value>) -> bool {
    record.contains_key("image")
}

/// Reads the whole file's images in order (the job's data).
pub fn read_images<R: Read + Seek>(
    reader: R,
    container: ImageContainer,
) -> Result<Vec<LabeledImage>, ScanError> {
    let mut images = Vec::new();
    for_each_image(reader, container, |image| {
        images.push(image);
        Ok(())
    })?;
    Ok(images)
}

/// The container of a file whose format is `Images`: its magic bytes, else JSONL.
pub fn image_container<R: Read + Seek>(reader: &mut R) -> io::Result<ImageContainer> {
    Ok(archive_kind(reader)?.unwrap_or(ImageContainer::Jsonl))
}

#[cfg(test)]
#[path = "tests/images.rs"]
mod tests;
