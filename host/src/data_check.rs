//! `host data check PATH --format davis|coco|folder`: every problem of a dataset folder, one
//! line each on stdout, then a summary line; exit status 1 when there is any problem. The
//! checks themselves are `fss_lab::data::check` (shared with the edge side).

use crate::cli::{DataArgs, DataCheckArgs, DataCommand};
use anyhow::{bail, Result};
use fss_lab::data::check::check_dataset;

/// Runs a `host data` subcommand.
pub fn run(args: &DataArgs) -> Result<()> {
    match &args.command {
        DataCommand::Check(a) => check(a),
    }
}

/// `host data check`.
pub fn check(args: &DataCheckArgs) -> Result<()> {
    let report = check_dataset(&args.path, args.format);
    for p in &report.problems {
        println!("{p}");
    }
    println!("{}", report.summary());
    if !report.is_ok() {
        bail!(
            "{}: {} problem{} found (listed above)",
            args.path.display(),
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
