//! One check's result: its status (ok, warning, failure, skipped), what it found, and how to
//! fix it.

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Pods run, with a caveat.
    Warn,
    /// Pods cannot run (as configured).
    Fail,
    /// Not run (said why).
    Skipped,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Outcome {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Outcome {
        Outcome { check, status: Status::Ok, detail: detail.into(), fix: None }
    }
    pub fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Outcome {
        Outcome { check, status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }
    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Outcome {
        Outcome { check, status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
    pub fn skipped(check: &'static str, why: impl Into<String>) -> Outcome {
        Outcome { check, status: Status::Skipped, detail: why.into(), fix: None }
    }
}
