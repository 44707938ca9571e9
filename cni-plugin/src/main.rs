//! `weft`: the CNI plugin binary. stdout carries only the protocol; diagnostics go to stderr
//! and, when the config names one, to a log file.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use weft_cni::error::code;
use weft_cni::request::MAX_STDIN;
use weft_cni::{cmd, report, usage, version, CniError, Request};

fn main() -> ExitCode {
    let started = Instant::now();
    let env = |k: &str| std::env::var(k).ok();
    let by_runtime = std::env::var_os("CNI_COMMAND").is_some();
    if !by_runtime {
        // Run by a person: answer --version and --help; anything else is the spec's error
        // for a missing CNI_COMMAND, without waiting for a config on stdin.
        let args: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if let Some(text) = usage::answer(&args) {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
    }
    let mut stdin = Vec::new();
    // Read one byte past the limit so an oversized config is reported, not truncated.
    let read = if by_runtime {
        std::io::stdin()
            .take(MAX_STDIN as u64 + 1)
            .read_to_end(&mut stdin)
            .map(drop)
    } else {
        Ok(())
    };
    let request = match read {
        Err(e) => Err(CniError::new(code::IO, "cannot read stdin", e.to_string())),
        Ok(()) => Request::parse(&env, &stdin),
    };
    if let Some(conf) = request.as_ref().ok().and_then(|r| r.conf()) {
        for w in &conf.warnings {
            eprintln!("{}", report::warning_line(w));
        }
    }
    let result = request.as_ref().map_err(Clone::clone).and_then(cmd::run);
    if let Ok(req) = &request {
        log_to_file(req, &result, started);
    }
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
            eprintln!("{}", report::error_line(request.as_ref().ok(), &e));
            let _ = writeln!(out, "{}", e.to_json(&asked));
            ExitCode::FAILURE
        }
    }
}

/// The call's lines in the config's `logFile`, if it names one. Logging never fails a call.
fn log_to_file(req: &Request, result: &Result<Option<String>, CniError>, started: Instant) {
    let Some(path) = req.conf().and_then(|c| c.log_file.as_ref()) else {
        return;
    };
    let lines = report::log_lines(SystemTime::now(), req, result, started.elapsed());
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(lines.as_bytes()));
    if let Err(e) = written {
        eprintln!("weft: cannot write log file {}: {e}", path.display());
    }
}
