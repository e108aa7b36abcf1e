//! `robert`: the one binary of the ROBERT implementation (DESIGN §5).
//!
//! Subcommands land with their issues; today: `crypto` (byte-level tool), `serve`, `keygen`,
//! `authority`, `bench`, `phone`, `audit`.

mod audit;
mod bench;
mod crypto;
mod phone;
mod serve;
mod simulate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: under ESR load glibc's took 10 % of all CPU (arena
/// locks, free-list consolidation), with requests allocated on one worker thread and freed on
/// another.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ROBERT v1.1 (ROBust and privacy-presERving proximity Tracing) in Rust.
#[derive(Debug, Parser)]
#[command(name = "robert", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Byte-level protocol operations for auditors: SKINNY, EBID, ECC, HELLO, request MACs.
    ///
    /// Every byte string is lowercase or uppercase hex in, lowercase hex out; numbers are decimal.
    /// `--json` prints one JSON object instead of bare hex.
    Crypto(crypto::CryptoArgs),
    /// Runs the back-end server (HTTP API v1) for one country.
    Serve(serve::ServeArgs),
    /// Creates the server's keys: K_G, (sk_S, pk_S), the key-encryption key and the federation signing key,
    /// as files (--dir) or inside a PKCS#11 security module (--pkcs11).
    Keygen(serve::KeygenArgs),
    /// Health-authority keys and single-use tokens (made offline; the server only verifies).
    #[command(subcommand)]
    Authority(serve::AuthorityCommand),
    /// Reproducible throughput benchmarks of the server (DESIGN §6): upload, status, register, storage.
    Bench(bench::BenchArgs),
    /// One virtual phone with an encrypted state file: register, hello, receive, report, status,
    /// ack, reset, unregister, delete-history (against a running `robert serve`).
    Phone(phone::PhoneArgs),
    /// The population simulator: real Apps against a real server, measured against ground truth
    /// (recall, precision, epidemic with and without tracing, attacks). Every knob is a flag.
    Simulate(Box<simulate::SimulateArgs>),
    /// A one-minute demonstration: a small town through the whole protocol, told in plain words.
    Demo(simulate::DemoArgs),
    /// Audit logs (Annex B): `robert audit verify FILE` checks a hash-chained log and names the
    /// first edited, deleted, inserted or reordered line (exit status 1).
    Audit(audit::AuditArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs its life at `info`; the commands that run a server in-process as a means
    // (demo, simulate, bench) keep their own output readable and show warnings only. `RUST_LOG`
    // overrides both.
    let default_level = match cli.command {
        Command::Demo(_) | Command::Simulate(_) | Command::Bench(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Crypto(args) => crypto::run(&args, &mut std::io::stdout().lock()),
        Command::Serve(args) => serve::serve(&args),
        Command::Keygen(args) => serve::keygen(&args),
        Command::Authority(cmd) => serve::authority(&cmd),
        Command::Bench(args) => bench::run(&args),
        Command::Phone(args) => phone::run(&args, &mut std::io::stdout().lock()),
        Command::Simulate(args) => simulate::simulate(&args, &mut std::io::stdout().lock()),
        Command::Demo(args) => simulate::demo(&args, &mut std::io::stdout().lock()),
        Command::Audit(args) => audit::run(&args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("robert: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
