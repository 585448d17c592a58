//! `POST /v1/question_answering`: answer spans from a fine-tuned extractive QA model, like
//! transformers' question-answering pipeline (character offsets into the context; an empty
//! answer when the model says the context does not answer the question).

use axum::extract::State;
use axum::http::Method;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ApiError, ApiJson};
use super::wire::required_model;
use super::AppState;
use crate::domain::ids::random_base62;
use crate::infer::{QaPrediction, QaQuestion};

pub const ROUTES: &[(Method, &str)] = &[(Method::POST, "/v1/question_answering")];

/// Questions per request (each may span several windows of a long context).
pub const MAX_QUESTIONS: usize = 256;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/question_answering", post(answer))
}

#[derive(Debug, Deserialize)]
pub struct QuestionAnsweringBody {
    model: Option<Value>,
    question: Option<Value>,
    context: Option<Value>,
    input: Option<Value>,
}

#[derive(Debug, PartialEq)]
struct ValidQuestions {
    model: String,
    questions: Vec<QaQuestion>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct QuestionAnsweringResponse {
    pub id: String,
    pub object: String,
    pub model: String,
    pub data: Vec<Answer>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub index: usize,
    pub answer: String,
    pub score: f32,
    /// Character offsets into the context (`start == end` for no answer).
    pub start: usize,
    pub end: usize,
}

fn non_empty_text(value: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match value {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.clone()),
        _ => Err(
            ApiError::bad_request(format!("`{param}` must be a non-empty string."))
                .with_param(param),
        ),
    }
}

fn pair(object: &Map<String, Value>, at: usize) -> Result<QaQuestion, ApiError> {
    let field = |key: &str| non_empty_text(object.get(key), &format!("input[{at}].{key}"));
    Ok(QaQuestion {
        question: field("question")?,
        context: field("context")?,
    })
}

fn validate(body: QuestionAnsweringBody) -> Result<ValidQuestions, ApiError> {
    let model = required_model(body.model.as_ref())?;
    let questions = match (&body.input, &body.question, &body.context) {
        (None, Some(_), _) | (None, _, Some(_)) => vec![QaQuestion {
            question: non_empty_text(body.question.as_ref(), "question")?,
            context: non_empty_text(body.context.as_ref(), "context")?,
        }],
        (Some(Value::Array(items)), None, None)
            if !items.is_empty() && items.len() <= MAX_QUESTIONS =>
        {
            items
                .iter()
                .enumerate()
                .map(|(at, item)| match item {
                    Value::Object(object) => pair(object, at),
                    _ => Err(ApiError::bad_request(format!(
                        "`input[{at}]` must be an object with `question` and `context`."
                    ))
                    .with_param(format!("input[{at}]"))),
                })
                .collect::<Result<_, _>>()?
        }
        (Some(_), None, None) | (None, None, None) => {
            return Err(ApiError::bad_request(format!(
                "Give `question` and `context`, or `input`: a list of 1 to {MAX_QUESTIONS} \
                 {{\"question\", \"context\"}} objects."
            ))
            .with_param("input"))
        }
        (Some(_), _, _) => {
            return Err(ApiError::bad_request(
                "Give either `question` and `context` or `input`, not both.",
            )
            .with_param("input"))
        }
    };
    Ok(ValidQuestions { model, questions })
}

fn to_wire(index: usize, answer: QaPrediction) -> Answer {
    Answer {
        index,
        answer: answer.text,
        score: answer.score,
        start: answer.start,
        end: answer.end,
    }
}

async fn answer(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<QuestionAnsweringBody>,
) -> Result<ApiJson<QuestionAnsweringResponse>, ApiError> {
    let request = validate(body)?;
    let answers = state
        .inference
        .answer_questions(request.model.clone(), request.questions)
        .await?;
    Ok(ApiJson(QuestionAnsweringResponse {
        id: format!("qa-{}", random_base62(24)),
        object: "list".to_string(),
        model: request.model,
        data: answers
            .into_iter()
            .enumerate()
            .map(|(i, a)| to_wire(i, a))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> QuestionAnsweringBody {
        serde_json::from_value(value).expect("shape")
    }

    fn question(q: &str, c: &str) -> QaQuestion {
        QaQuestion {
            question: q.into(),
            context: c.into(),
        }
    }

    #[test]
    fn one_question_or_a_list() {
        let one = validate(body(
            json!({"model": "m", "question": "q?", "context": "c"}),
        ));
        assert_eq!(one.expect("one").questions, [question("q?", "c")]);
        let many = validate(body(json!({"model": "m", "input": [
            {"question": "a?", "context": "x"}, {"question": "b?", "context": "y"}
        ]})));
        assert_eq!(
            many.expect("many").questions,
            [question("a?", "x"), question("b?", "y")]
        );
    }

    #[test]
    fn bad_requests_name_their_param() {
        let too_many = vec![json!({"question": "q", "context": "c"}); MAX_QUESTIONS + 1];
        for (input, param) in [
            (json!({"question": "q", "context": "c"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "question": "q"}), "context"),
            (
                json!({"model": "m", "question": " ", "context": "c"}),
                "question",
            ),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": too_many}), "input"),
            (json!({"model": "m", "input": ["q"]}), "input[0]"),
            (
                json!({"model": "m", "input": [{"question": "q"}]}),
                "input[0].context",
            ),
            (
                json!({"model": "m", "question": "q", "context": "c", "input": []}),
                "input",
            ),
        ] {
            let err = validate(body(input.clone())).expect_err("invalid");
            assert_eq!(err.param.as_deref(), Some(param), "{input}");
        }
    }
}
