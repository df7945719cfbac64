//! Counters behind `GET /metrics`, rendered in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the exec duration histogram buckets, in seconds.
const EXEC_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// Every sandbox state, so that the gauge shows zeros too.
const STATES: [&str; 6] = [
    "creating", "running", "paused", "stopped", "deleted", "error",
];

/// Request and exec counters of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    exec_total: AtomicU64,
    exec_failures: AtomicU64,
    exec_duration_micros: AtomicU64,
    exec_buckets: [AtomicU64; EXEC_BUCKETS.len()],
    http_requests: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Metrics {
    /// Records one exec call through the API and its wall time.
    pub fn record_exec(&self, elapsed: Duration, succeeded: bool) {
        self.exec_total.fetch_add(1, Ordering::Relaxed);
        if !succeeded {
            self.exec_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.exec_duration_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);

        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in EXEC_BUCKETS.iter().zip(&self.exec_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records one HTTP response; `route` is the route pattern, such as `/sandboxes/{id}`.
    pub fn record_http(&self, method: &str, route: &str, status: u16) {
        let mut requests = self.http_requests.lock().expect("metrics table poisoned");
        *requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// Renders every metric in the Prometheus text format, with `sandboxes` the number of
    /// sandboxes per state name.
    pub fn render(&self, sandboxes: &BTreeMap<String, i64>) -> String {
        let mut out = String::new();

        out.push_str("# HELP gitvm_sandboxes Sandboxes known to this node, by state.\n");
        out.push_str("# TYPE gitvm_sandboxes gauge\n");
        for state in STATES {
            let count = sandboxes.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "gitvm_sandboxes{{state=\"{state}\"}} {count}");
        }

        let total = self.exec_total.load(Ordering::Relaxed);
        out.push_str("# HELP gitvm_exec_failures_total Exec calls that returned an error instead of a result.\n");
        out.push_str("# TYPE gitvm_exec_failures_total counter\n");
        let _ = writeln!(
            out,
            "gitvm_exec_failures_total {}",
            self.exec_failures.load(Ordering::Relaxed)
        );

        out.push_str(
            "# HELP gitvm_exec_duration_seconds Wall time of exec calls through the API.\n",
        );
        out.push_str("# TYPE gitvm_exec_duration_seconds histogram\n");
        for (bound, bucket) in EXEC_BUCKETS.iter().zip(&self.exec_buckets) {
            let _ = writeln!(
                out,
                "gitvm_exec_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "gitvm_exec_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
        );
        let sum = self.exec_duration_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "gitvm_exec_duration_seconds_sum {sum}");
        let _ = writeln!(out, "gitvm_exec_duration_seconds_count {total}");

        out.push_str(
            "# HELP gitvm_http_requests_total HTTP responses, by method, route and status.\n",
        );
        out.push_str("# TYPE gitvm_http_requests_total counter\n");
        let requests = self.http_requests.lock().expect("metrics table poisoned");
        for ((method, route, status), count) in requests.iter() {
            let _ = writeln!(
                out,
                "gitvm_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        out
    }
}
