//! Which nodes of a simulated network can reach each other.

use std::collections::HashMap;

/// Nodes split into groups: two nodes reach each other only if they are
/// in the same group. Nodes not named in any group are together in one
/// more group; with no groups at all, everyone reaches everyone.
#[derive(Default)]
pub(crate) struct Partition {
    /// Group of each named node, from 1; 0 is the unnamed rest.
    groups: HashMap<String, usize>,
}

impl Partition {
    /// Nodes split into `groups`. A node named twice belongs to the last
    /// group naming it.
    pub(crate) fn new<G, A>(groups: impl IntoIterator<Item = G>) -> Partition
    where
        G: IntoIterator<Item = A>,
        A: Into<String>,
    {
        let mut map = HashMap::new();
        for (index, group) in groups.into_iter().enumerate() {
            for node in group {
                map.insert(node.into(), index + 1);
            }
        }
        Partition { groups: map }
    }

    /// Whether `from` and `to` are cut from each other.
    pub(crate) fn separates(&self, from: &str, to: &str) -> bool {
        !self.groups.is_empty() && self.group(from) != self.group(to)
    }

    fn group(&self, node: &str) -> usize {
        self.groups.get(node).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_groups_separate_nobody() {
        assert!(!Partition::default().separates("a", "b"));
    }

    #[test]
    fn groups_and_the_rest_are_cut_from_each_other() {
        let split = Partition::new([vec!["a", "b"], vec!["c"]]);
        assert!(!split.separates("a", "b"));
        assert!(split.separates("a", "c"));
        assert!(split.separates("c", "b"));
        // d and e are not named: together, apart from both groups.
        assert!(!split.separates("d", "e"));
        assert!(split.separates("d", "a"));
        assert!(split.separates("c", "e"));
    }
}
