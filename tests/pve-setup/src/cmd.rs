//! The one place this crate runs programs (tar, ssh-keygen, openssl,
//! objdump, lxc-start --version).

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub stdout: String,
}

/// A command line quoted for error messages.
pub(crate) fn quoted(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@+,".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Where a command's stdin comes from.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    Null,
    File(File),
    Text(&'a str),
}

/// Run `argv`, fail with the command line and the tail of stderr unless it
/// exits 0.
pub(crate) fn run(argv: &[String], input: Input<'_>) -> Result<Output, String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| "internal error: empty command".to_owned())?;
    let mut cmd = Command::new(prog);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut text = None;
    match input {
        Input::Null => {
            cmd.stdin(Stdio::null());
        }
        Input::File(f) => {
            cmd.stdin(Stdio::from(f));
        }
        Input::Text(t) => {
            cmd.stdin(Stdio::piped());
            text = Some(t);
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (is it installed?)"
        } else {
            ""
        };
        format!("failed to run {}: {e}{hint}", quoted(argv))
    })?;
    if let (Some(t), Some(mut stdin)) = (text, child.stdin.take()) {
        stdin
            .write_all(t.as_bytes())
            .map_err(|e| format!("writing to {}: {e}", quoted(argv)))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", quoted(argv)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "command {} failed ({}):\n{}",
            quoted(argv),
            out.status,
            tail(&stderr)
        ));
    }
    Ok(Output { stdout })
}

/// `argv` as owned strings.
pub(crate) fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_the_command_and_stderr() {
        let e = run(&argv(&["sh", "-c", "echo boom >&2; exit 3"]), Input::Null).unwrap_err();
        assert!(e.contains("sh -c 'echo boom >&2; exit 3'"), "{e}");
        assert!(e.contains("boom"), "{e}");
        let e = run(&argv(&["/nonexistent/prog"]), Input::Null).unwrap_err();
        assert!(e.contains("is it installed"), "{e}");
    }
}
