//! `temper models list`.

use serde_json::Value;

use super::client::{parse, ApiClient, Page};
use super::error::CliError;
use super::output::{self, print};
use crate::api::objects::ModelObject;
use crate::config::client::ModelsCommand;

pub async fn run(client: &ApiClient, command: ModelsCommand) -> Result<(), CliError> {
    match command {
        ModelsCommand::List { output } => {
            let page: Value = client.get("/models").await?;
            if output.json {
                return print(&output::json(&page));
            }
            let page: Page<ModelObject> = parse(page)?;
            print(&models_table(&page.data))
        }
    }
}

fn models_table(models: &[ModelObject]) -> String {
    let rows = models
        .iter()
        .map(|model| {
            vec![
                model.id.clone(),
                model.owned_by.clone(),
                output::optional(model.parent.as_deref()),
                output::time(model.created),
            ]
        })
        .collect();
    output::table(&["ID", "OWNED BY", "PARENT", "CREATED"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn models_show_their_owner_and_parent() {
        let page: Page<ModelObject> = parse(json!({"object": "list", "data": [
            {"id": "ft:org/m:temper:x:ftjob-1", "object": "model", "created": 0, "owned_by": "org-temper"},
            {"id": "my-adapter", "object": "model", "created": 0, "owned_by": "org-temper", "parent": "org/m"},
        ]}))
        .expect("a model list");
        let text = models_table(&page.data);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["ID", "OWNED", "BY", "PARENT", "CREATED"]);
        assert_eq!(
            rows[1],
            [
                "ft:org/m:temper:x:ftjob-1",
                "org-temper",
                "-",
                "1970-01-01T00:00:00Z"
            ]
        );
        assert_eq!(
            rows[2],
            ["my-adapter", "org-temper", "org/m", "1970-01-01T00:00:00Z"]
        );
    }
}
