//! Prometheus' text exposition format (version 0.0.4) for a snapshot of the registry.
//!
//! Operations an export never saw are left out, so the page grows with what clients did, not
//! with every combination of labels.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::{ConnectionCounts, Counters, OpCounters, BUCKETS_NS, ERRNOS, HAS_BYTES, OPS};

fn get(v: &std::sync::atomic::AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Seconds from nanoseconds, as Prometheus writes floats.
fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

pub(super) fn render(exports: &[(String, Counters)], connections: &ConnectionCounts) -> Vec<u8> {
    // (op, export) label pairs of the operations seen, with their counts.
    let mut seen: Vec<(String, &OpCounters, usize)> = Vec::new();
    for (name, counters) in exports {
        for (op, c) in counters.ops.iter().enumerate() {
            if get(&c.requests) > 0 {
                seen.push((format!("op=\"{}\",export=\"{}\"", OPS[op], escape(name)), c, op));
            }
        }
    }
    let mut out = String::with_capacity(4096 + seen.len() * 2048);

    header(&mut out, "nbdforge_connections_open", "gauge", "Client connections open now.");
    let _ = writeln!(out, "nbdforge_connections_open {}", connections.open);
    header(&mut out, "nbdforge_connections_total", "counter", "Client connections accepted.");
    let _ = writeln!(out, "nbdforge_connections_total {}", connections.total);

    header(&mut out, "nbdforge_requests_total", "counter", "Requests answered, by operation and export.");
    for (labels, c, _) in &seen {
        let _ = writeln!(out, "nbdforge_requests_total{{{labels}}} {}", get(&c.requests));
    }
    header(
        &mut out,
        "nbdforge_bytes_total",
        "counter",
        "Bytes read, written, trimmed, zeroed or cached by requests that succeeded.",
    );
    for (labels, c, op) in &seen {
        if HAS_BYTES[*op] {
            let _ = writeln!(out, "nbdforge_bytes_total{{{labels}}} {}", get(&c.bytes));
        }
    }
    header(&mut out, "nbdforge_errors_total", "counter", "Error replies, by operation, export and errno.");
    for (labels, c, _) in &seen {
        for ((_, name), n) in ERRNOS.iter().zip(&c.errors) {
            let n = get(n);
            if n > 0 {
                let _ = writeln!(out, "nbdforge_errors_total{{{labels},errno=\"{name}\"}} {n}");
            }
        }
    }
    let name = "nbdforge_request_duration_seconds";
    header(&mut out, name, "histogram", "Time from reading a request to sending its reply.");
    for (labels, c, _) in &seen {
        let mut cumulative = 0;
        for (i, n) in c.buckets.iter().enumerate() {
            cumulative += get(n);
            let le = BUCKETS_NS.get(i).map_or_else(|| "+Inf".to_string(), |&ns| seconds(ns));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", seconds(get(&c.duration_ns)));
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_format() {
        let c = Counters::default();
        c.ops[0].requests.store(3, Ordering::Relaxed);
        c.ops[0].bytes.store(1536, Ordering::Relaxed);
        c.ops[0].errors[1].store(1, Ordering::Relaxed);
        c.ops[0].buckets[0].store(2, Ordering::Relaxed);
        c.ops[0].buckets[19].store(1, Ordering::Relaxed);
        c.ops[0].duration_ns.store(1_500_000_000, Ordering::Relaxed);
        let page = render(&[("a\"b\\c\nd".into(), c)], &ConnectionCounts { open: 1, total: 4 });
        let page = String::from_utf8(page).unwrap();
        let labels = r#"op="read",export="a\"b\\c\nd""#;
        for line in [
            "nbdforge_connections_open 1".to_string(),
            "nbdforge_connections_total 4".to_string(),
            format!("nbdforge_requests_total{{{labels}}} 3"),
            format!("nbdforge_bytes_total{{{labels}}} 1536"),
            format!("nbdforge_errors_total{{{labels},errno=\"EIO\"}} 1"),
            format!("nbdforge_request_duration_seconds_bucket{{{labels},le=\"0.00001\"}} 2"),
            format!("nbdforge_request_duration_seconds_bucket{{{labels},le=\"10\"}} 2"),
            format!("nbdforge_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("nbdforge_request_duration_seconds_sum{{{labels}}} 1.5"),
            format!("nbdforge_request_duration_seconds_count{{{labels}}} 3"),
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing from\n{page}");
        }
        assert!(!page.contains("op=\"write\""), "unseen operations are left out");
    }
}
