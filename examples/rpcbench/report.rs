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
