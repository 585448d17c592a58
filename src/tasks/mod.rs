//! tasks: one folder per task — its data preparation, head, metric names, report and
//! serving pieces — on the generic trainer core (`train`) and model bodies (`zoo`).
//! No tokio, sqlx or axum here.

pub mod question_answering;
