//! Log lines captured in memory, for the tests that check what a request or a job logs.
#![allow(clippy::unwrap_used)]

use std::io::{self, Write};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;
use tracing::subscriber::{DefaultGuard, NoSubscriber};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Everything written to it, shared by its clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct CapturedLogs {
    written: Arc<Mutex<Vec<u8>>>,
}

impl Write for CapturedLogs {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.written.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}

impl CapturedLogs {
    /// The subscriber `--log-format json` installs, filtered by `filter`, writing here.
    pub(crate) fn json_subscriber(&self, filter: &str) -> impl Subscriber + Send + Sync {
        super::subscriber(self.clone(), EnvFilter::new(filter), LogFormat::Json, false).0
    }

    /// Makes [`Self::json_subscriber`] this thread's subscriber until the guard drops.
    ///
    /// Tests on other threads, without a subscriber, hit callsites meanwhile, and
    /// tracing-core caches each callsite's interest (and the global maximum level) from
    /// the subscribers it knows. While only one is registered it asks the *calling
    /// thread's* default instead (none, on those threads), which would switch this test's
    /// lines off. A second subscriber kept registered for good makes it combine every
    /// registered one; the rebuild then covers callsites first hit during `set_default`.
    pub(crate) fn install_json(&self, filter: &str) -> DefaultGuard {
        static SECOND_SUBSCRIBER: LazyLock<Dispatch> =
            LazyLock::new(|| Dispatch::new(NoSubscriber::default()));
        LazyLock::force(&SECOND_SUBSCRIBER);
        let guard = tracing::subscriber::set_default(self.json_subscriber(filter));
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// Every line written so far, each parsed as JSON (a line that is not fails the test).
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        let bytes = self.written.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        text.lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect()
    }
}

/// `field` of the outermost span of `line` that has it (`spans` lists them outermost first).
pub(crate) fn span_field<'a>(line: &'a Value, field: &str) -> Option<&'a str> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|span| span[field].as_str())
}
