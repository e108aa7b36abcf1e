//! `robert audit verify FILE`: checks a hash-chained audit log (Annex B, `robert_server::audit`).
//!
//! Prints the chain's head (`seq` and hash of the last line) when every line verifies, so an
//! auditor can anchor it (a truncated tail is only visible against an anchored head); otherwise
//! names the first broken line and exits non-zero.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// `robert audit …`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verifies a hash-chained audit log (the server's `audit.log`, `federation-audit.log`, or a
    /// key directory's `keygen-audit.log`): any edited, deleted, inserted or reordered line is
    /// reported by its number, with exit status 1. On success prints `ok: N lines, head HASH`.
    Verify {
        /// The audit log file.
        file: PathBuf,
        /// Also fail unless the chain has at least this many lines (an anchored count catches a
        /// truncated tail).
        #[arg(long, value_name = "N")]
        min_lines: Option<u64>,
        /// Also fail unless the last line's hash is this (64 hex digits, an anchored head).
        #[arg(long, value_name = "HEX")]
        head: Option<String>,
    },
}

/// Runs `robert audit …`, writing the verdict to `out`.
pub fn run(args: &AuditArgs, out: &mut impl Write) -> Result<()> {
    match &args.command {
        AuditCommand::Verify { file, min_lines, head } => {
            let chain = robert_server::audit::verify(file)
                .map_err(|e| anyhow::anyhow!("{}: audit chain broken: {e}", file.display()))?;
            let hash = hex::encode(chain.hash);
            if let Some(n) = min_lines
                && chain.seq < *n
            {
                bail!("{}: {} lines, fewer than the {n} expected (truncated)", file.display(), chain.seq);
            }
            if let Some(h) = head
                && !h.eq_ignore_ascii_case(&hash)
            {
                bail!("{}: head {hash} is not the expected {h}", file.display());
            }
            writeln!(out, "ok: {} lines, head {hash}", chain.seq)?;
            Ok(())
        }
    }
}
