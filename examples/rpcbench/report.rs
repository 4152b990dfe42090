//! Latency figures and the final JSON line.

use std::time::Duration;

/// What one run measured.
pub struct Report {
    pub rpc: String,
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of every successful call, in microseconds.
    pub latencies_us: Vec<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// More `"name":value` fields for the end of the line.
    pub extra: Option<String>,
}

impl Report {
    /// The report of `calls` round trips of `request_len` bytes out and
    /// `reply_len` back, from what each worker measured: its latencies
    /// and its failures.
    pub fn round_trips(
        rpc: &str,
        calls: u64,
        workers: impl IntoIterator<Item = (Vec<u64>, u64)>,
        elapsed: Duration,
        request_len: usize,
        reply_len: usize,
    ) -> Report {
        let mut report = Report {
            rpc: rpc.into(),
            calls,
            errors: 0,
            elapsed,
            latencies_us: Vec::with_capacity(calls as usize),
            bytes_in: 0,
            bytes_out: 0,
            extra: None,
        };
        for (latencies, errors) in workers {
            report.latencies_us.extend(latencies);
            report.errors += errors;
        }
        let ok = calls - report.errors;
        report.bytes_out = ok * request_len as u64;
        report.bytes_in = ok * reply_len as u64;
        report
    }

    /// `{"rpc":..,"calls":..,...}` as BENCH.md gives it.
    pub fn json(mut self) -> String {
        self.latencies_us.sort_unstable();
        let at = |q: f64| -> u64 {
            if self.latencies_us.is_empty() {
                return 0;
            }
            let index = ((self.latencies_us.len() as f64 * q).ceil() as usize)
                .clamp(1, self.latencies_us.len());
            self.latencies_us[index - 1]
        };
        let secs = self.elapsed.as_secs_f64();
        let ok = self.calls - self.errors;
        let extra = self
            .extra
            .map(|fields| format!(",{fields}"))
            .unwrap_or_default();
        format!(
            r#"{{"rpc":"{}","calls":{},"errors":{},"secs":{:.3},"rpcs_per_s":{:.0},"p50_us":{},"p99_us":{},"max_us":{},"bytes_in":{},"bytes_out":{}{}}}"#,
            self.rpc,
            self.calls,
            self.errors,
            secs,
            ok as f64 / secs,
            at(0.50),
            at(0.99),
            self.latencies_us.last().copied().unwrap_or(0),
            self.bytes_in,
            self.bytes_out,
            extra,
        )
    }
}
