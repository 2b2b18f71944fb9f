//! The `edge` binary: `edge segment | eval | bench | demo | doctor` (see `edge --help`).

mod cli;

use std::process::ExitCode;

/// The error and its causes on one line, skipping a cause its parent already spells out.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    fss_runtime::one_line(&line)
}

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}
