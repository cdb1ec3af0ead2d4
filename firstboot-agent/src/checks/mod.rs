//! Findings (pass/warn/fail lines) shared by every step, and the network
//! and DNS preflight ([`network`]).

pub mod network;

use std::fmt;

use serde::Serialize;

/// How a finding affects the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Pass => "pass",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of a check table: what was looked at, what was found, and what
/// to change when it is not a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

impl Finding {
    pub fn pass(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            level: Level::Pass,
            what: what.into(),
            detail: detail.into(),
            advice: None,
        }
    }

    pub fn warn(
        what: impl Into<String>,
        detail: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Self {
            level: Level::Warn,
            what: what.into(),
            detail: detail.into(),
            advice: Some(advice.into()),
        }
    }

    pub fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Self {
            level: Level::Fail,
            what: what.into(),
            detail: detail.into(),
            advice: Some(advice.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)?;
        if let Some(a) = &self.advice {
            write!(f, " — {a}")?;
        }
        Ok(())
    }
}

/// The failures among `findings`, joined into one message.
pub fn failures(findings: &[Finding]) -> Option<String> {
    let fails: Vec<String> = findings
        .iter()
        .filter(|f| f.level == Level::Fail)
        .map(ToString::to_string)
        .collect();
    (!fails.is_empty()).then(|| fails.join("; "))
}

/// Render findings as an aligned table, one line each.
pub fn render_table(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.what.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{:<4}  {:<width$}  {}",
            f.level.as_str(),
            f.what,
            f.detail
        ));
        if let Some(a) = &f.advice {
            out.push_str(&format!("\n      {:<width$}  -> {a}", ""));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_failures() {
        let f = vec![
            Finding::pass("cgroup", "v2, memory controller on"),
            Finding::fail(
                "dns",
                "github.com does not resolve",
                "check /etc/resolv.conf",
            ),
        ];
        let t = render_table(&f);
        assert!(
            t.contains("pass  cgroup") && t.contains("FAIL  dns   ") && t.contains("-> check"),
            "{t}"
        );
        assert_eq!(
            failures(&f).unwrap(),
            "dns: github.com does not resolve — check /etc/resolv.conf"
        );
        assert!(failures(&f[..1]).is_none());
    }
}
