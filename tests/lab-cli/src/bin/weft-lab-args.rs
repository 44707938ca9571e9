//! weft-lab-args: checks the lab's command line before `tests/lab.sh` installs or builds
//! anything. Prints the help (exit 0) or a usage error (exit 2) as `weft-lab` would, and for
//! a valid command line prints the action on stdout: `run`, `probe` or `teardown`.

use std::process::ExitCode;

use clap::Parser;
use weft_lab_cli::Cli;

fn main() -> ExitCode {
    match Cli::parse().action() {
        Ok(action) => {
            println!("{}", action.verb());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
