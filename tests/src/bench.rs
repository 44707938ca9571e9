//! Shared pieces of the benchmark binaries: where they write (docs/benchmarks.md, one marked
//! section per benchmark) and small statistics.

use std::path::Path;

/// "YYYY-MM-DD, N cores" for the section headers.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{date}, {cores} cores")
}

/// Replace the section between `<!-- {tag}:begin -->` and `<!-- {tag}:end -->` in
/// docs/benchmarks.md (appending it if absent). `section` includes both markers.
pub fn write_section(tag: &str, section: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# weft benchmarks\n\nEach section is written by the benchmark named in it; rerun it to refresh the figures.\n\n".into()
    });
    let (begin, end) = (
        format!("<!-- {tag}:begin -->"),
        format!("<!-- {tag}:end -->\n"),
    );
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).expect("write docs/benchmarks.md");
    eprintln!("updated {}", path.display());
}

/// The `q` quantile (0..=1) of `samples` by nearest rank; 0 for no samples.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
