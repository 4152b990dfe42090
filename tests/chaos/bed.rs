//! The chaos bed's network: one network namespace per node, all on one
//! bridge, with faults set by iptables (partitions) and tc (a slow link).
//!
//! ```text
//!   n1 (10.88.0.1) --+
//!   n2 (10.88.0.2) --+-- bridge (in its own namespace)
//!   ...              |
//!   n5 (10.88.0.5) --+
//! ```
//! Namespaces, links and every process in them are removed when the bed
//! is dropped; beds of runs killed before their cleanup are removed by the
//! next run.

use std::process::Command;

/// See the module docs.
pub struct Bed {
    /// Prefix of this run's namespaces and links.
    prefix: String,
    nodes: usize,
}

/// Runs `program` with `args`; panics with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Bed {
    /// A bed of `nodes` namespaces (at most 254), numbered from 1.
    pub fn up(nodes: usize) -> Bed {
        remove_stale_beds();
        let bed = Bed {
            prefix: format!("bc{}", std::process::id()),
            nodes,
        };
        let switch = bed.namespace_of("sw");
        run("ip", &["netns", "add", &switch]);
        bed.in_switch(&["ip", "link", "add", "br0", "type", "bridge"]);
        bed.in_switch(&["ip", "link", "set", "br0", "up"]);
        for node in 1..=nodes {
            let ns = bed.namespace(node);
            let (inside, outside) = bed.link_names(node);
            run("ip", &["netns", "add", &ns]);
            run(
                "ip",
                &[
                    "link", "add", &inside, "type", "veth", "peer", "name", &outside,
                ],
            );
            run("ip", &["link", "set", &inside, "netns", &ns]);
            run("ip", &["link", "set", &outside, "netns", &switch]);
            bed.in_switch(&["ip", "link", "set", &outside, "master", "br0"]);
            bed.in_switch(&["ip", "link", "set", &outside, "up"]);
            let addr = format!("{}/24", bed.ip(node));
            bed.in_node(node, &["ip", "addr", "add", &addr, "dev", &inside]);
            bed.in_node(node, &["ip", "link", "set", &inside, "up"]);
            bed.in_node(node, &["ip", "link", "set", "lo", "up"]);
        }
        bed
    }

    /// Node `node`'s IP address.
    pub fn ip(&self, node: usize) -> String {
        format!("10.88.0.{node}")
    }

    /// `command` to run inside node `node`'s namespace.
    pub fn command(&self, node: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(node)])
            .arg(program);
        command
    }

    /// Cuts the nodes of `one` from those of `other`: each side silently
    /// drops what arrives from the other, as a broken route would.
    pub fn partition(&self, one: &[usize], other: &[usize]) {
        for (side, far) in [(one, other), (other, one)] {
            for &node in side {
                for &peer in far {
                    let ip = self.ip(peer);
                    self.in_node(node, &["iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"]);
                }
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        for node in 1..=self.nodes {
            self.in_node(node, &["iptables", "-F", "INPUT"]);
        }
    }

    /// Limits node `node`'s link to `rate` (tc syntax, such as "1mbit") in
    /// both directions, with a token bucket.
    pub fn throttle(&self, node: usize, rate: &str) {
        let (inside, outside) = self.link_names(node);
        let tbf = [
            "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
        ];
        let mut args = vec!["tc", "qdisc", "add", "dev", &inside];
        args.extend(tbf);
        self.in_node(node, &args);
        let mut args = vec!["tc", "qdisc", "add", "dev", &outside];
        args.extend(tbf);
        self.in_switch(&args);
    }

    /// Gives node `node`'s link its full speed back.
    pub fn unthrottle(&self, node: usize) {
        let (inside, outside) = self.link_names(node);
        self.in_node(node, &["tc", "qdisc", "del", "dev", &inside, "root"]);
        self.in_switch(&["tc", "qdisc", "del", "dev", &outside, "root"]);
    }

    fn namespace(&self, node: usize) -> String {
        self.namespace_of(&format!("n{node}"))
    }

    fn namespace_of(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The two ends of node `node`'s link: in its namespace, at the bridge.
    fn link_names(&self, node: usize) -> (String, String) {
        (
            format!("{}n{node}i", self.prefix),
            format!("{}n{node}o", self.prefix),
        )
    }

    fn in_node(&self, node: usize, args: &[&str]) {
        let ns = self.namespace(node);
        let mut all = vec!["netns", "exec", &ns];
        all.extend(args);
        run("ip", &all);
    }

    fn in_switch(&self, args: &[&str]) {
        let ns = self.namespace_of("sw");
        let mut all = vec!["netns", "exec", &ns];
        all.extend(args);
        run("ip", &all);
    }

    fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = (1..=self.nodes).map(|n| self.namespace(n)).collect();
        names.push(self.namespace_of("sw"));
        names
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            kill_all_in(&ns);
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Kills every process left in namespace `ns`.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
}

/// Removes the namespaces of beds whose run is gone.
fn remove_stale_beds() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("bc") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !pid.is_empty() && !alive {
            kill_all_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
