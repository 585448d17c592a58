//! Chat templates: the Jinja template a model ships (`tokenizer_config.json`'s
//! `chat_template`, or `chat_template.jinja` as newer transformers write it), rendered the
//! way transformers renders it: `trim_blocks` + `lstrip_blocks`, loop controls,
//! `raise_exception`, `strftime_now`, a Python-style `tojson`, Python string methods
//! (`.strip()`, `.startswith()`…) and the special-token variables (`bos_token`, `eos_token`).

use std::path::Path;

use minijinja::{Environment, Error, ErrorKind, Value};

use super::ZooError;

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template plus the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The model's template, or `None` when it ships none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, ZooError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.exists() {
            serde_json::from_str(&std::fs::read_to_string(&config_path)?)?
        } else {
            serde_json::Value::Null
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = match template_from_config(&config) {
            Some(source) => source,
            None if jinja_path.exists() => std::fs::read_to_string(&jinja_path)?,
            None => return Ok(None),
        };
        let bos = special_token(&config, "bos_token").unwrap_or_default();
        let eos = special_token(&config, "eos_token").unwrap_or_default();
        Ok(Some(Self::new(&source, &bos, &eos)?))
    }

    /// Compiles `source`; a syntax error is reported here, not at the first render.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ZooError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| ZooError::Config(format!("invalid chat template: {e}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template text (exports write it back next to the weights).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders OpenAI-shaped messages. Array contents (`[{"type":"text","text":…}]`) are
    /// joined into one string first: model templates expect plain strings.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ZooError> {
        let messages: Vec<serde_json::Value> = messages.iter().map(flatten_content).collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ZooError::Config(format!("chat template: {e}")))?;
        let context = minijinja::context! {
            messages => Value::from_serialize(&messages),
            tools => tools.map(Value::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        template
            .render(context)
            .map_err(|e| ZooError::Config(format!("chat template failed to render: {e}")))
    }
}

fn template_from_config(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        // Several named templates: transformers picks "default".
        serde_json::Value::Array(items) => items.iter().find_map(|item| {
            (item.get("name")?.as_str()? == "default")
                .then(|| item.get("template")?.as_str().map(str::to_owned))
                .flatten()
        }),
        _ => None,
    }
}

/// `"<s>"` or the AddedToken form `{"content": "<s>", …}`.
pub fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn flatten_content(message: &serde_json::Value) -> serde_json::Value {
    let mut message = message.clone();
    if let Some(parts) = message.get("content").and_then(|c| c.as_array()) {
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect();
        message["content"] = serde_json::Value::String(text);
    }
    message
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `strftime` for the handful of codes chat templates use (Llama 3 prints the
/// date as `%d %b %Y`).
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_date(secs / 86_400, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn format_date(days_since_epoch: u64, format: &str) -> String {
    let (year, month, day) = civil_from_days(days_since_epoch as i64);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent)`, so Python's
/// separators (`", "` and `": "`), no HTML escaping (minijinja's built-in escapes `<`).
fn python_tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(
    value: &serde_json::Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// SmolLM2-Instruct's template (ChatML with a default system prompt).
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn chat() -> Vec<serde_json::Value> {
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Hi"}),
            json!({"role": "assistant", "content": "Hello!", "weight": 1}),
        ]
    }

    #[test]
    fn chatml_renders_exactly_with_and_without_generation_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let full = t.render(&chat(), None, false).unwrap();
        assert_eq!(
            full,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
        let prompt = t.render(&chat()[..2], None, true).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // The prompt is a prefix of the full conversation: SFT masks rely on it.
        assert!(full.starts_with(&prompt));
        let default_system = t.render(&chat()[1..2], None, false).unwrap();
        assert!(default_system.starts_with("<|im_start|>system\nYou are a helpful AI"));
    }

    #[test]
    fn trim_and_lstrip_blocks_match_transformers() {
        let src = "{% for m in messages %}\n  {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&chat(), None, false).unwrap(),
            "  Be brief.\n  Hi\n  Hello!\n"
        );
    }

    #[test]
    fn python_string_methods_special_tokens_and_raise_exception_work() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{{ m.content.strip().upper() }}{% if m.content.startswith(' ') %}!{% endif %}{% endfor %}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let msgs = vec![json!({"role": "user", "content": "  padded "})];
        assert_eq!(t.render(&msgs, None, false).unwrap(), "<s>PADDED!</s>");
        let err = t
            .render(&[json!({"role": "tool", "content": "x"})], None, false)
            .unwrap_err();
        assert!(err.to_string().contains("no tools"), "{err}");
    }

    #[test]
    fn tojson_uses_python_separators_without_html_escaping() {
        let src = "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let tools = json!([{"name": "f<x>", "args": [1, 2]}]);
        let out = t.render(&[], Some(&tools), false).unwrap();
        assert_eq!(
            out,
            "[{\"args\": [1, 2], \"name\": \"f<x>\"}]|{\n  \"args\": [\n    1,\n    2\n  ],\n  \"name\": \"f<x>\"\n}"
        );
    }

    #[test]
    fn array_contents_are_joined_and_loop_controls_work() {
        let src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let msgs = vec![
            json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            json!({"role": "user", "content": "never"}),
        ];
        assert_eq!(t.render(&msgs, None, false).unwrap(), "ab");
    }

    #[test]
    fn dates_format_like_python_strftime() {
        // 2024-07-23 is day 19927 after the epoch.
        assert_eq!(format_date(19_927, "%d %b %Y"), "23 Jul 2024");
        assert_eq!(format_date(0, "%Y-%m-%d %B"), "1970-01-01 January");
        assert_eq!(format_date(11_016, "%d/%m/%Y"), "29/02/2000");
    }

    #[test]
    fn templates_load_from_tokenizer_config_list_or_jinja_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_dir(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                   "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}]})
            .to_string(),
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "<s>D</s>");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            "{\"eos_token\": \"E\"}",
        )
        .unwrap();
        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ eos_token }}").unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "JE");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
