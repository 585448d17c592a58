//! The fine-tuning job state machine, with OpenAI's states plus `pausing`/`paused`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Pausing,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

/// How many jobs are in each status (a status without jobs may be missing), and how many
/// wait for a worker: `validating_files` or `queued`, and not claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub by_status: Vec<(JobStatus, i64)>,
    pub waiting: i64,
}

impl JobCounts {
    /// The jobs in `status`.
    pub fn of(&self, status: JobStatus) -> i64 {
        self.by_status
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::ValidatingFiles,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Pausing,
        JobStatus::Paused,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Pausing => "pausing",
            JobStatus::Paused => "paused",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Finished jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// States from which a user's cancel is accepted.
    pub fn can_cancel(self) -> bool {
        !self.is_terminal()
    }

    /// Only a job that is waiting or training can be paused.
    pub fn can_pause(self) -> bool {
        matches!(
            self,
            JobStatus::ValidatingFiles | JobStatus::Queued | JobStatus::Running
        )
    }

    /// Only a paused job resumes: a pausing one still has a worker writing its checkpoint.
    pub fn can_resume(self) -> bool {
        self == JobStatus::Paused
    }

    /// A job in these states holds (or waits for) a worker; its files may not be deleted.
    pub fn is_unfinished(self) -> bool {
        !self.is_terminal()
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_its_wire_name() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }

    #[test]
    fn transitions_follow_the_openai_lifecycle() {
        assert!(JobStatus::Running.can_cancel());
        assert!(!JobStatus::Succeeded.can_cancel());
        assert!(JobStatus::Running.can_pause());
        assert!(!JobStatus::Paused.can_pause());
        assert!(JobStatus::Paused.can_resume());
        assert!(!JobStatus::Running.can_resume());
        assert!(!JobStatus::Pausing.can_resume());
        assert!(JobStatus::Failed.is_terminal());
        assert!(!JobStatus::Pausing.is_terminal());
    }
}
