//! The matrix's results, as the table docs/SECURITY.md carries: written
//! there by every run, between two markers.

use std::fmt::Write as _;
use std::path::Path;

const START: &str = "<!-- hostile-matrix: start (written by tests/hostile_matrix.rs) -->";
const END: &str = "<!-- hostile-matrix: end -->";

/// One cell: an attack from one or many sources against one transport.
pub struct Cell {
    pub attack: &'static str,
    pub sources: &'static str,
    pub transport: &'static str,
    pub outcome: Outcome,
}

/// What a cell came to.
pub enum Outcome {
    /// The honest peer's calls served of those made, and the node's peak
    /// memory growth in bytes against the bound.
    Ran {
        served: usize,
        calls: usize,
        growth: u64,
        bound: u64,
    },
    /// The attack does not apply to the transport, and why.
    NotApplicable(&'static str),
}

impl Cell {
    /// Whether the cell holds: every honest call served, memory within
    /// the bound.
    pub fn holds(&self) -> bool {
        match self.outcome {
            Outcome::Ran {
                served,
                calls,
                growth,
                bound,
            } => served == calls && growth <= bound,
            Outcome::NotApplicable(_) => true,
        }
    }

    fn text(&self) -> String {
        match &self.outcome {
            Outcome::Ran {
                served,
                calls,
                growth,
                ..
            } => format!(
                "{served}/{calls} served, +{:.1} MiB{}",
                *growth as f64 / (1 << 20) as f64,
                if self.holds() { "" } else { " **FAILS**" }
            ),
            Outcome::NotApplicable(why) => format!("n/a: {why}"),
        }
    }
}

/// The table of `cells`, rows by attack and sources, a column per
/// transport in the order they first appear.
pub fn markdown(cells: &[Cell], bound: &str) -> String {
    let mut transports: Vec<&str> = Vec::new();
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for cell in cells {
        if !transports.contains(&cell.transport) {
            transports.push(cell.transport);
        }
        if !rows.contains(&(cell.attack, cell.sources)) {
            rows.push((cell.attack, cell.sources));
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "Peak memory growth is bounded by {bound}.\n");
    let _ = writeln!(out, "| attack | from | {} |", transports.join(" | "));
    let _ = writeln!(out, "|---|---|{}", "---|".repeat(transports.len()));
    for (attack, sources) in rows {
        let texts: Vec<String> = transports
            .iter()
            .map(|transport| {
                cells
                    .iter()
                    .find(|c| {
                        c.attack == attack && c.sources == sources && c.transport == *transport
                    })
                    .map_or("(not run)".to_owned(), Cell::text)
            })
            .collect();
        let _ = writeln!(out, "| {attack} | {sources} | {} |", texts.join(" | "));
    }
    out
}

/// Puts `table` between the markers of `doc` (added at its end if
/// missing).
pub fn write_into(doc: &Path, table: &str) {
    let text = std::fs::read_to_string(doc).unwrap_or_default();
    let block = format!("{START}\n{table}{END}");
    let updated = match (text.find(START), text.find(END)) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{block}{}", &text[..start], &text[end + END.len()..])
        }
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(doc, updated).expect("the doc is writable");
}
