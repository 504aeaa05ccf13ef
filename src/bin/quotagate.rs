//! `quotagate`: the command-line tool.
//!
//! - `quotagate demo`: a tagging script against the built-in simulator, with a summary
//!   of what the quotas allowed and what the client and the server saw.
//! - `quotagate sim`: serves the simulator for one's own scripts.
//! - `quotagate call`: one call (or every page of a list) to a real tenant.
//!
//! It uses the library's public Rust API only.

// A crate root in src/bin/ looks for its modules beside it; ours live in quotagate/.
#[path = "quotagate/call.rs"]
mod call;
#[path = "quotagate/demo.rs"]
mod demo;
#[path = "quotagate/exit.rs"]
mod exit;
#[path = "quotagate/logger.rs"]
mod logger;
#[path = "quotagate/progress.rs"]
mod progress;
#[path = "quotagate/report.rs"]
mod report;
#[path = "quotagate/serve.rs"]
mod serve;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Parses a flag that takes a positive, finite number (seconds, a time scale).
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number, got {s:?}")),
    }
}

const ABOUT: &str = "Keeps scripts inside the Microsoft Defender for Endpoint API quotas.";

const EXAMPLES: &str = "\
Examples:
  quotagate demo                      tag 1,400 simulated machines from 8 threads, no 429s
  quotagate sim --time-scale 0.1      serve the simulator (a minute lasts 6 s) until Ctrl+C
  quotagate call GET /api/machines --all --query '$top=1000'

Exit codes:
  0  success
  1  the server answered with an error status (or the demo's checks failed)
  2  usage or configuration error, including missing credentials
  3  still throttled when the quota budget ran out
  4  transport failure or timeout
  5  no access token (credentials refused, token endpoint unreachable)";

#[derive(Parser)]
#[command(name = "quotagate", version, about = ABOUT, after_help = EXAMPLES)]
struct Cli {
    /// Log the client's decisions (waits, 429s, retries) on stderr; twice for more.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a tagging script against the built-in simulator and show that it stays within the quotas.
    #[command(after_help = demo::EXAMPLES)]
    Demo(demo::Args),
    /// Serve the Defender API simulator for your own scripts, until Ctrl+C.
    #[command(after_help = serve::EXAMPLES)]
    Sim(serve::Args),
    /// Send one call (or follow every page of a list) to the Defender API, within its quotas.
    #[command(after_help = call::EXAMPLES)]
    Call(call::Args),
}

/// Parses the arguments; every usage error shows the usage line of its command, exit 2.
fn parse() -> Result<Cli, ExitCode> {
    let error = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => e,
    };
    let mut text = error.render().to_string();
    if !text.contains("Usage:") {
        let mut command = Cli::command();
        command.build();
        let name = std::env::args()
            .skip(1)
            .find(|a| !a.starts_with('-'))
            .unwrap_or_default();
        let usage = match command.find_subcommand_mut(&name) {
            Some(sub) => sub.render_usage(),
            None => command.render_usage(),
        };
        let hint = "For more information, try '--help'.";
        text = match text.find(hint) {
            Some(at) => format!("{}{usage}\n\n{}", &text[..at], &text[at..]),
            None => format!("{}\n\n{usage}\n", text.trim_end()),
        };
    }
    eprint!("{text}");
    Err(ExitCode::from(exit::USAGE))
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    logger::init(cli.verbose);
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Sim(args) => serve::run(&args),
        Command::Call(args) => call::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("quotagate: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
