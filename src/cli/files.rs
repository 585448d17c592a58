//! `temper files upload|list|delete`.

use serde_json::Value;

use super::client::{parse, segment, ApiClient, Page};
use super::error::CliError;
use super::output::{self, print};
use crate::api::objects::FileObject;
use crate::config::client::FilesCommand;

pub async fn run(client: &ApiClient, command: FilesCommand) -> Result<(), CliError> {
    match command {
        FilesCommand::Upload {
            path,
            purpose,
            output,
        } => {
            let file = client.upload(&path, &purpose).await?;
            if output.json {
                return print(&output::json(&file));
            }
            print(&uploaded(&parse(file)?))
        }
        FilesCommand::List { output } => {
            let page: Value = client.get("/files").await?;
            if output.json {
                return print(&output::json(&page));
            }
            let page: Page<FileObject> = parse(page)?;
            print(&files_table(&page.data))
        }
        FilesCommand::Delete { id, output } => {
            let deleted: Value = client.delete(&format!("/files/{}", segment(&id))).await?;
            if output.json {
                return print(&output::json(&deleted));
            }
            print(&format!("deleted {id}"))
        }
    }
}

pub fn files_table(files: &[FileObject]) -> String {
    let rows = files
        .iter()
        .map(|file| {
            vec![
                file.id.clone(),
                file.filename.clone(),
                file.purpose.clone(),
                file.bytes.to_string(),
                file.status.clone(),
                output::time(file.created_at),
            ]
        })
        .collect();
    output::table(
        &["ID", "FILENAME", "PURPOSE", "BYTES", "STATUS", "CREATED"],
        rows,
    )
}

/// The uploaded file's row, and why the server refused its content when it did (the file
/// is stored either way; a job naming it is refused).
fn uploaded(file: &FileObject) -> String {
    let mut text = files_table(std::slice::from_ref(file));
    if let Some(details) = &file.status_details {
        text.push_str(&format!("\nstatus_details: {details}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_upload_shows_its_row_and_why_it_was_refused() {
        let file: FileObject = parse(json!({
            "id": "file-1", "object": "file", "bytes": 120, "created_at": 0,
            "filename": "train.jsonl", "purpose": "fine-tune", "status": "error",
            "status_details": "line 3: missing `messages`",
        }))
        .expect("a file object");
        let text = uploaded(&file);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID      FILENAME"), "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "file-1",
                "train.jsonl",
                "fine-tune",
                "120",
                "error",
                "1970-01-01T00:00:00Z"
            ]
        );
        assert_eq!(lines[2], "status_details: line 3: missing `messages`");
        let error = parse::<FileObject>(json!({"id": 1})).expect_err("not a file");
        assert!(error.to_string().contains("unexpected reply"), "{error}");
    }
}
