//! `weft`: the CNI plugin binary. stdout carries only the protocol; diagnostics go to stderr
//! and, when the config names one, to a log file.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use weft_cni::error::code;
use weft_cni::request::MAX_STDIN;
use weft_cni::{cmd, version, CniError, Request};

fn main() -> ExitCode {
    let started = Instant::now();
    let mut stdin = Vec::new();
    // Read one byte past the limit so an oversized config is reported, not truncated.
    let read = std::io::stdin()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin);
    let request = match read {
        Err(e) => Err(CniError::new(code::IO, "cannot read stdin", e.to_string())),
        Ok(_) => Request::parse(&|k| std::env::var(k).ok(), &stdin),
    };
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
            eprintln!("weft: {e}");
            let _ = writeln!(out, "{}", e.to_json(&asked));
            ExitCode::FAILURE
        }
    }
}

/// One line per call in the config's `logFile`, if it names one. Logging never fails a call.
fn log_to_file(req: &Request, result: &Result<Option<String>, CniError>, started: Instant) {
    let Some(path) = req.conf.as_ref().and_then(|c| c.log_file.as_ref()) else {
        return;
    };
    let outcome = match result {
        // Every address of the result (one per family), comma-separated.
        Ok(Some(out)) => serde_json::from_str::<serde_json::Value>(out)
            .ok()
            .and_then(|v| {
                let ips: Vec<&str> = v["ips"]
                    .as_array()?
                    .iter()
                    .filter_map(|ip| ip["address"].as_str())
                    .collect();
                (!ips.is_empty()).then(|| format!("ok ip={}", ips.join(",")))
            })
            .unwrap_or_else(|| "ok".into()),
        Ok(None) => "ok".into(),
        Err(e) => format!(
            "error code={} msg={:?} details={:?}",
            e.code, e.msg, e.details
        ),
    };
    let line = format!(
        "{} {:?} container={} ifname={} netns={} took={:.1}ms {}\n",
        humantime::format_rfc3339_millis(SystemTime::now()),
        req.command,
        req.container_id.as_deref().unwrap_or("-"),
        req.ifname.as_deref().unwrap_or("-"),
        req.netns
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into()),
        started.elapsed().as_secs_f64() * 1e3,
        outcome
    );
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("weft: cannot write log file {}: {e}", path.display());
    }
}
