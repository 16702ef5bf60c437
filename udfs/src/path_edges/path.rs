//! One group's path as edges, from its rows sorted by time.

use super::options::PathOptions;

/// An edge: (step, from, to); from and to are event ids.
pub type Edge = (i32, u32, u32);

/// Where the path is anchored: the ids of the start and end events, if the options
/// name them (`Missing` when no row has ever had that event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    None,
    Missing,
    Id(u32),
}

/// The edges of one group's path. `rows` are (ts, event id) in time order; durations
/// in the options are in seconds, `scale` converts them to ts units.
pub fn edges(
    rows: &[(i64, u32)],
    start: Anchor,
    end: Anchor,
    options: &PathOptions,
    scale: i64,
    out: &mut Vec<Edge>,
) {
    out.clear();
    let mut nodes: Vec<(i64, u32)> = Vec::with_capacity(rows.len());
    for &row in rows {
        if options.collapse && nodes.last().is_some_and(|last| last.1 == row.1) {
            continue;
        }
        nodes.push(row);
    }
    let gap = options.session_gap.map(|s| s.saturating_mul(scale));
    let window = options.window.map(|s| s.saturating_mul(scale));
    let too_far = |limit: Option<i64>, from: i64, to: i64| limit.is_some_and(|l| to - from > l);
    let position = |anchor: Anchor| match anchor {
        Anchor::Id(id) => nodes.iter().position(|n| n.1 == id),
        _ => None,
    };
    if start == Anchor::Missing || end == Anchor::Missing {
        return;
    }
    if start == Anchor::None && end != Anchor::None {
        // Anchored at the end only: walk back from the first end event; steps count
        // back from it (-1 is the edge into it).
        let Some(last) = position(end) else { return };
        let mut j = last;
        while j > 0 && last - j < options.max_steps {
            let (from, to) = (nodes[j - 1], nodes[j]);
            if too_far(gap, from.0, to.0) || too_far(window, from.0, nodes[last].0) {
                break;
            }
            j -= 1;
        }
        for i in j..last {
            out.push((i as i32 - last as i32, nodes[i].1, nodes[i + 1].1));
        }
        return;
    }
    let first = match start {
        Anchor::None => 0,
        _ => match position(start) {
            Some(i) => i,
            None => return,
        },
    };
    let mut reached_end = false;
    for j in first + 1..nodes.len() {
        if j - first > options.max_steps {
            break;
        }
        let (from, to) = (nodes[j - 1], nodes[j]);
        if too_far(gap, from.0, to.0) || too_far(window, nodes[first].0, to.0) {
            break;
        }
        out.push(((j - first) as i32, from.1, to.1));
        if end == Anchor::Id(to.1) {
            reached_end = true;
            break;
        }
    }
    // With an end event, only paths that reach it count.
    if end != Anchor::None && !reached_end {
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> PathOptions {
        PathOptions::parse(text).unwrap()
    }

    // Events: 0 home, 1 item, 2 cart, 3 pay. Times in seconds.
    const ROWS: [(i64, u32); 7] = [
        (0, 0),
        (10, 1),
        (20, 1),
        (30, 2),
        (5000, 0),
        (5010, 2),
        (5020, 3),
    ];

    fn run(text: &str, start: Anchor, end: Anchor) -> Vec<Edge> {
        let mut out = vec![];
        edges(&ROWS, start, end, &options(text), 1, &mut out);
        out
    }

    #[test]
    fn whole_paths_collapsed_and_cut() {
        use Anchor::*;
        assert_eq!(
            run("", None, None),
            vec![
                (1, 0, 1),
                (2, 1, 1),
                (3, 1, 2),
                (4, 2, 0),
                (5, 0, 2),
                (6, 2, 3)
            ]
        );
        assert_eq!(
            run("collapse=true", None, None),
            vec![(1, 0, 1), (2, 1, 2), (3, 2, 0), (4, 0, 2), (5, 2, 3)]
        );
        assert_eq!(run("max_steps=2", None, None), vec![(1, 0, 1), (2, 1, 1)]);
        // A pause longer than 30 minutes ends the path; so does leaving a 15 s window.
        assert_eq!(
            run("session_gap=30m", None, None),
            vec![(1, 0, 1), (2, 1, 1), (3, 1, 2)]
        );
        assert_eq!(run("window=15", None, None), vec![(1, 0, 1)]);
    }

    #[test]
    fn anchored_paths() {
        use Anchor::*;
        // From the first cart on.
        assert_eq!(run("", Id(2), None), vec![(1, 2, 0), (2, 0, 2), (3, 2, 3)]);
        // From the first item to the first pay: reached in 4 steps, not within 3.
        assert_eq!(
            run("collapse=true", Id(1), Id(3)),
            vec![(1, 1, 2), (2, 2, 0), (3, 0, 2), (4, 2, 3)]
        );
        assert_eq!(run("max_steps=3; collapse=true", Id(1), Id(3)), vec![]);
        // Back from the first pay: the last two steps, or the session it ends.
        assert_eq!(
            run("max_steps=2", None, Id(3)),
            vec![(-2, 0, 2), (-1, 2, 3)]
        );
        assert_eq!(
            run("session_gap=1h", None, Id(3)),
            vec![(-2, 0, 2), (-1, 2, 3)]
        );
        assert_eq!(run("", None, Id(3)).len(), 6);
        // Events no row has: no path.
        assert_eq!(run("", Missing, None), vec![]);
        assert_eq!(run("", None, Missing), vec![]);
        // An end that never comes after the start: no path.
        assert_eq!(run("", Id(3), Id(0)), vec![]);
    }
}
