//! `temper chat MODEL`: each stdin line is a user turn sent with the whole conversation to
//! `/chat/completions` with `stream: true`; the reply's deltas print as they arrive and the
//! reply joins the conversation. EOF ends the chat; an error ends it with exit code 1.

use std::io::{IsTerminal, Write};

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::client::ApiClient;
use super::error::CliError;
use crate::config::client::ChatArgs;

pub async fn run(client: &ApiClient, args: ChatArgs) -> Result<(), CliError> {
    let mut conversation = Conversation::new(args.system.as_deref());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // The prompt goes to stderr, and only for a person typing: stdout holds the replies.
    let interactive = std::io::stdin().is_terminal();
    loop {
        if interactive {
            eprint!("> ");
        }
        let line = lines
            .next_line()
            .await
            .map_err(|error| CliError::ReadFile {
                path: "stdin".to_string(),
                detail: error.to_string(),
            })?;
        let Some(line) = line else {
            return Ok(());
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        conversation.add_user(line);
        let body = conversation.request(&args.model, &args.sampling());
        let response = client.stream_chat(&body).await?;
        let bytes = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|error| client.transport_error(&error)));
        let reply = print_stream(bytes, &mut std::io::stdout().lock()).await?;
        conversation.add_assistant(reply);
    }
}

/// The request options every turn repeats.
#[derive(Debug, Default)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

impl ChatArgs {
    fn sampling(&self) -> Sampling {
        Sampling {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        }
    }
}

/// The messages so far, in OpenAI's shape.
#[derive(Debug, Default)]
pub struct Conversation {
    messages: Vec<Value>,
}

impl Conversation {
    pub fn new(system: Option<&str>) -> Conversation {
        let mut conversation = Conversation::default();
        if let Some(system) = system {
            conversation.add("system", system);
        }
        conversation
    }

    fn add(&mut self, role: &str, content: &str) {
        self.messages
            .push(json!({"role": role, "content": content}));
    }

    pub fn add_user(&mut self, content: &str) {
        self.add("user", content);
    }

    pub fn add_assistant(&mut self, content: String) {
        self.add("assistant", &content);
    }

    /// The streamed request for the whole conversation.
    pub fn request(&self, model: &str, sampling: &Sampling) -> Value {
        let mut body = json!({"model": model, "messages": self.messages, "stream": true});
        if let Some(max_tokens) = sampling.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = sampling.temperature {
            body["temperature"] = json!(temperature);
        }
        body
    }
}

/// What one SSE `data:` payload carries.
#[derive(Debug, PartialEq)]
enum StreamItem {
    Text(String),
    /// `[DONE]`: the reply is complete.
    Done,
    /// A chunk with no text (the role chunk, the finish reason, usage).
    Empty,
}

fn read_chunk(data: &str) -> Result<StreamItem, CliError> {
    if data.trim() == "[DONE]" {
        return Ok(StreamItem::Done);
    }
    let chunk: Value = serde_json::from_str(data).map_err(|error| CliError::Stream {
        message: format!("a chunk is not JSON ({error})"),
        code: None,
        param: None,
    })?;
    if let Some(error) = chunk.get("error") {
        let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_string);
        return Err(CliError::Stream {
            message: text("message").unwrap_or_else(|| error.to_string()),
            code: text("code"),
            param: text("param"),
        });
    }
    Ok(match chunk["choices"][0]["delta"]["content"].as_str() {
        Some(text) if !text.is_empty() => StreamItem::Text(text.to_string()),
        _ => StreamItem::Empty,
    })
}

/// Prints each delta of an SSE body as it arrives, then a newline; returns the whole text.
async fn print_stream<B: AsRef<[u8]>>(
    bytes: impl Stream<Item = Result<B, CliError>> + Unpin,
    out: &mut impl Write,
) -> Result<String, CliError> {
    let mut events = bytes.eventsource();
    let mut reply = String::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| match error {
            eventsource_stream::EventStreamError::Transport(error) => error,
            other => CliError::Stream {
                message: other.to_string(),
                code: None,
                param: None,
            },
        })?;
        match read_chunk(&event.data)? {
            StreamItem::Text(text) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
                reply.push_str(&text);
            }
            StreamItem::Done => break,
            StreamItem::Empty => {}
        }
    }
    writeln!(out)?;
    out.flush()?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_whole_conversation() {
        let mut conversation = Conversation::new(Some("Be brief."));
        conversation.add_user("hi");
        conversation.add_assistant("hello".into());
        conversation.add_user("again");
        let sampling = Sampling {
            max_tokens: Some(16),
            temperature: Some(0.0),
        };
        assert_eq!(
            conversation.request("ft:m", &sampling),
            json!({"model": "ft:m", "stream": true, "max_tokens": 16, "temperature": 0.0,
                   "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ]})
        );
        let plain = Conversation::new(None).request("m", &Sampling::default());
        assert_eq!(plain, json!({"model": "m", "stream": true, "messages": []}));
    }

    fn chunk(content: Option<&str>) -> String {
        let delta = match content {
            Some(text) => json!({"content": text}),
            None => json!({"role": "assistant"}),
        };
        format!(
            "data: {}\n\n",
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
        )
    }

    async fn printed(body: &str, split_every: usize) -> (Result<String, CliError>, String) {
        // The body cut into pieces that split lines and events, as a network would.
        let pieces: Vec<Result<Vec<u8>, CliError>> = body
            .as_bytes()
            .chunks(split_every)
            .map(|piece| Ok(piece.to_vec()))
            .collect();
        let mut out = Vec::new();
        let result = print_stream(futures::stream::iter(pieces), &mut out).await;
        (result, String::from_utf8(out).expect("utf-8"))
    }

    #[tokio::test]
    async fn deltas_print_in_order_and_stop_at_done() {
        let body = [
            chunk(None),
            chunk(Some("blue")),
            chunk(Some(" sky")),
            "data: [DONE]\n\n".to_string(),
            chunk(Some("after done")),
        ]
        .concat();
        for split in [1, 7, body.len()] {
            let (reply, out) = printed(&body, split).await;
            assert_eq!(reply.expect("a reply"), "blue sky", "split {split}");
            assert_eq!(out, "blue sky\n", "split {split}");
        }
    }

    #[tokio::test]
    async fn an_error_event_ends_the_reply_with_the_servers_message() {
        let body = [
            chunk(Some("bl")),
            "data: {\"error\":{\"message\":\"engine stopped\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n".to_string(),
        ]
        .concat();
        let (reply, out) = printed(&body, 5).await;
        let error = reply.expect_err("the stream failed");
        assert_eq!(error.to_string(), "the reply stream failed: engine stopped");
        assert_eq!(out, "bl");
        assert!(matches!(
            read_chunk("{not json"),
            Err(CliError::Stream { .. })
        ));
    }
}
