//! The DAG's shape on petgraph: which node reads which, in what order nodes can run, cycles,
//! and the ancestors and descendants that `--only`, `--force` and staleness follow.

use std::collections::BTreeSet;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Bfs, Reversed};

/// Nodes `0..n` and edges from each input to the node that reads it.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    graph: DiGraph<(), ()>,
}

impl Graph {
    /// A graph of `n` nodes where `inputs[i]` lists the nodes node `i` reads.
    pub fn new(inputs: &[Vec<usize>]) -> Self {
        let mut graph = DiGraph::with_capacity(inputs.len(), inputs.iter().map(Vec::len).sum());
        for _ in inputs {
            graph.add_node(());
        }
        for (i, ins) in inputs.iter().enumerate() {
            for &j in ins {
                graph.add_edge(NodeIndex::new(j), NodeIndex::new(i), ());
            }
        }
        Self { graph }
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// An order in which every node comes after its inputs, ties broken by index (file order),
    /// so the order is stable; or one cycle, as a path `a, b, …, a` that starts with its
    /// lowest-index node and follows the data (producer before consumer).
    pub fn topological_order(&self) -> Result<Vec<usize>, Vec<usize>> {
        let n = self.len();
        let mut pending: Vec<usize> =
            (0..n).map(|i| self.graph.neighbors_directed(NodeIndex::new(i), Direction::Incoming).count()).collect();
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for c in self.graph.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
                pending[c.index()] -= 1;
                if pending[c.index()] == 0 {
                    ready.insert(c.index());
                }
            }
        }
        if order.len() == n { Ok(order) } else { Err(self.cycle()) }
    }

    /// One cycle of the graph (it has one when a topological order does not exist).
    fn cycle(&self) -> Vec<usize> {
        // Strongly connected components with more than one node, or with a self-loop, hold
        // the cycles; take the one with the lowest node and walk it.
        let component = petgraph::algo::tarjan_scc(&self.graph)
            .into_iter()
            .filter(|c| c.len() > 1 || self.graph.contains_edge(c[0], c[0]))
            .min_by_key(|c| c.iter().map(|n| n.index()).min())
            .unwrap_or_default();
        let members: BTreeSet<usize> = component.iter().map(|n| n.index()).collect();
        let Some(&start) = members.first() else { return Vec::new() };
        // Follow edges inside the component (lowest successor first) until a node repeats.
        let mut path = vec![start];
        loop {
            let last = *path.last().unwrap_or(&start);
            let next = self
                .graph
                .neighbors_directed(NodeIndex::new(last), Direction::Outgoing)
                .map(|n| n.index())
                .filter(|j| members.contains(j))
                .min()
                .unwrap_or(start);
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut cycle = path[pos..].to_vec();
                let first = cycle.iter().enumerate().min_by_key(|(_, n)| **n).map_or(0, |(i, _)| i);
                cycle.rotate_left(first);
                cycle.push(cycle[0]);
                return cycle;
            }
            path.push(next);
        }
    }

    /// `targets` and every node they read from, directly or not.
    pub fn with_ancestors(&self, targets: &[usize]) -> BTreeSet<usize> {
        self.reachable(targets, Direction::Incoming)
    }

    /// `sources` and every node that reads from them, directly or not.
    pub fn with_descendants(&self, sources: &[usize]) -> BTreeSet<usize> {
        self.reachable(sources, Direction::Outgoing)
    }

    fn reachable(&self, from: &[usize], direction: Direction) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for &start in from {
            let start = NodeIndex::new(start);
            match direction {
                Direction::Outgoing => {
                    let mut bfs = Bfs::new(&self.graph, start);
                    while let Some(n) = bfs.next(&self.graph) {
                        out.insert(n.index());
                    }
                }
                Direction::Incoming => {
                    let reversed = Reversed(&self.graph);
                    let mut bfs = Bfs::new(reversed, start);
                    while let Some(n) = bfs.next(reversed) {
                        out.insert(n.index());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keeps_file_order_for_ties() {
        // 0 reads nothing, 1 reads 2, 2 reads 0.
        assert_eq!(Graph::new(&[vec![], vec![2], vec![0]]).topological_order(), Ok(vec![0, 2, 1]));
    }

    #[test]
    fn cycle_is_reported_as_a_path() {
        // a(0) reads b(1), b reads a.
        let cycle = Graph::new(&[vec![1], vec![0]]).topological_order().unwrap_err();
        assert_eq!(cycle, vec![0, 1, 0]);
        assert_eq!(Graph::new(&[vec![0]]).topological_order().unwrap_err(), vec![0, 0]);
        // A cycle downstream of a sound node: 0 ← 1 ← 2 ← 1.
        let cycle = Graph::new(&[vec![], vec![0, 2], vec![1]]).topological_order().unwrap_err();
        assert_eq!(cycle, vec![1, 2, 1]);
    }

    #[test]
    fn ancestors_and_descendants() {
        // 0 → 1 → 3, 2 → 3, 4 alone.
        let g = Graph::new(&[vec![], vec![0], vec![], vec![1, 2], vec![]]);
        assert_eq!(g.with_ancestors(&[3]), BTreeSet::from([0, 1, 2, 3]));
        assert_eq!(g.with_descendants(&[0]), BTreeSet::from([0, 1, 3]));
        assert_eq!(g.with_descendants(&[4]), BTreeSet::from([4]));
    }
}
