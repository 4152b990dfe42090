//! `--tick-ms`: how late a ticker on the node's thread runs, the measure of
//! whether a large frame stalls the node (BENCH.md, DESIGN.md "Threads").

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Lateness of every tick so far, in microseconds.
#[derive(Clone, Default)]
pub struct Ticks(Rc<RefCell<Vec<u64>>>);

impl Ticks {
    /// Starts a ticker every `period` on this thread (an actix arbiter).
    pub fn start(period: Duration) -> Ticks {
        let ticks = Ticks::default();
        let record = ticks.clone();
        actix_rt::spawn(async move {
            loop {
                let asked = Instant::now();
                tokio::time::sleep(period).await;
                let late = asked.elapsed().saturating_sub(period);
                record.0.borrow_mut().push(late.as_micros() as u64);
            }
        });
        ticks
    }

    /// `"ticks":..,"tick_p99_ms":..,"tick_max_ms":..` of the ticks so far.
    pub fn json_fields(&self) -> String {
        let mut late = self.0.borrow().clone();
        late.sort_unstable();
        let p99 = match late.len() {
            0 => 0,
            n => late[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1],
        };
        let max = late.last().copied().unwrap_or(0);
        format!(
            r#""ticks":{},"tick_p99_ms":{:.3},"tick_max_ms":{:.3}"#,
            late.len(),
            p99 as f64 / 1000.0,
            max as f64 / 1000.0
        )
    }
}
