//! `weft`: the CNI plugin binary. stdout carries only the protocol; diagnostics go to stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

use weft_cni::error::code;
use weft_cni::request::MAX_STDIN;
use weft_cni::{status, version, CniError, Command, Request};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // Read one byte past the limit so an oversized config is reported, not truncated.
    let read = std::io::stdin()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin);
    let result = match read {
        Err(e) => Err(CniError::new(code::IO, "cannot read stdin", e.to_string())),
        Ok(_) => Request::parse(&|k| std::env::var(k).ok(), &stdin).and_then(|req| run(&req)),
    };
    let mut out = std::io::stdout().lock();
    match result {
        Ok(Some(text)) => {
            let _ = writeln!(out, "{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            // The error is reported in the version the runtime asked for, when it said one.
            let asked = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(|s| s.as_str())
                        .map(str::to_string)
                })
                .filter(|v| version::is_supported(v))
                .unwrap_or_else(|| version::LATEST.to_string());
            eprintln!("weft: {e}");
            let _ = writeln!(out, "{}", e.to_json(&asked));
            ExitCode::FAILURE
        }
    }
}

fn run(req: &Request) -> Result<Option<String>, CniError> {
    match req.command {
        Command::Version => Ok(Some(version::version_json())),
        Command::Status => {
            let conf = req.conf.as_ref().expect("parsed with a config");
            status::read_subnet(&conf.subnet_file).map(|_| None)
        }
        Command::Add | Command::Del | Command::Check | Command::Gc => {
            let conf = req.conf.as_ref().expect("parsed with a config");
            if req.command == Command::Add {
                status::read_subnet(&conf.subnet_file)?;
            }
            Err(CniError::new(
                code::NOT_AVAILABLE,
                "this weft build cannot attach pods yet",
                format!(
                    "{:?} arrives with the CNI plugin's IPAM and data path",
                    req.command
                ),
            ))
        }
    }
}
