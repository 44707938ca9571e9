//! What a call tells the operator besides its answer on stdout: a line on stderr for each
//! config warning and for a failure, and, when the config names a `logFile`, the same warnings
//! and one line per call there. Every line about a call names it the same way, pod included.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::conf::ConfWarning;
use crate::{CniError, Request};

/// The words that identify a call: `ADD container=… ifname=… netns=… pod=…` (`-` for what
/// the call does not have).
pub fn call_context(req: &Request) -> String {
    let mut s = format!(
        "{} container={} ifname={} netns={}",
        req.command(),
        req.container_id().unwrap_or("-"),
        req.ifname().unwrap_or("-"),
        req.netns()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into()),
    );
    match req.pod() {
        Some(pod) => write!(s, " pod={pod}"),
        None => write!(s, " pod=-"),
    }
    .expect("writing to a String");
    s
}

/// stderr's line for a config warning.
pub fn warning_line(w: &ConfWarning) -> String {
    format!("weft: warning: {w}")
}

/// stderr's line for a failed call; `req` is `None` when the call could not even be parsed.
pub fn error_line(req: Option<&Request>, e: &CniError) -> String {
    match req {
        Some(req) => format!("weft: {}: {e}", call_context(req)),
        None => format!("weft: {e}"),
    }
}

/// The log file's lines for a finished call: one per config warning, then the call's own
/// (its context, how long it took, and the outcome: `ok`, `ok ip=<every address>`, or
/// `error code=… msg="…" details="…"`).
pub fn log_lines(
    now: SystemTime,
    req: &Request,
    result: &Result<Option<String>, CniError>,
    took: Duration,
) -> String {
    let stamp = humantime::format_rfc3339_millis(now);
    let context = call_context(req);
    let mut out = String::new();
    for w in req.conf().iter().flat_map(|c| &c.warnings) {
        writeln!(out, "{stamp} {context} warning: {w}").expect("writing to a String");
    }
    let outcome = match result {
        Ok(Some(answer)) => serde_json::from_str::<serde_json::Value>(answer)
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
    writeln!(
        out,
        "{stamp} {context} took={:.1}ms {outcome}",
        took.as_secs_f64() * 1e3
    )
    .expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn request(args: &str, conf: &str) -> Request {
        let env = |k: &str| {
            match k {
                "CNI_COMMAND" => Some("ADD"),
                "CNI_CONTAINERID" => Some("ctr1"),
                "CNI_NETNS" => Some("/run/netns/p1"),
                "CNI_IFNAME" => Some("eth0"),
                "CNI_ARGS" => Some(args),
                _ => None,
            }
            .map(String::from)
        };
        Request::parse(&env, conf.as_bytes()).unwrap()
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"weft","type":"weft"}"#;

    #[test]
    fn every_line_names_the_call_and_the_pod() {
        let req = request(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d4b9",
            r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","subnetFil":"/x"}"#,
        );
        let now = humantime::parse_rfc3339("2026-11-24T10:00:00.250Z").unwrap();
        let answer = r#"{"ips":[{"address":"10.244.3.7/24"},{"address":"fd00::7/64"}]}"#;
        let lines = log_lines(
            now,
            &req,
            &Ok(Some(answer.into())),
            Duration::from_micros(2_340),
        );
        assert_eq!(
            lines,
            "2026-11-24T10:00:00.250Z ADD container=ctr1 ifname=eth0 netns=/run/netns/p1 pod=shop/cart-7d4b9 warning: config key \"subnetFil\" is not one weft knows and is ignored; did you mean \"subnetFile\"?\n\
             2026-11-24T10:00:00.250Z ADD container=ctr1 ifname=eth0 netns=/run/netns/p1 pod=shop/cart-7d4b9 took=2.3ms ok ip=10.244.3.7/24,fd00::7/64\n"
        );
        let e = CniError::new(
            code::TRY_AGAIN_LATER,
            "no pod address left",
            "10.244.3.0/24 is full",
        );
        assert_eq!(
            error_line(Some(&req), &e),
            "weft: ADD container=ctr1 ifname=eth0 netns=/run/netns/p1 pod=shop/cart-7d4b9: no pod address left: 10.244.3.0/24 is full"
        );
        assert_eq!(
            error_line(None, &e),
            "weft: no pod address left: 10.244.3.0/24 is full"
        );
        let plain = request("", CONF);
        assert_eq!(
            log_lines(now, &plain, &Err(e), Duration::from_millis(1)),
            "2026-11-24T10:00:00.250Z ADD container=ctr1 ifname=eth0 netns=/run/netns/p1 pod=- took=1.0ms error code=11 msg=\"no pod address left\" details=\"10.244.3.0/24 is full\"\n"
        );
    }
}
