//! Helpers over [`Path`], [`PathSegment`] and [`Connection`]: the current, previous and next hop.
//!
//! `Path.index` points at the current hop and `Connection.id` equals the current segment's `id` (see the
//! control-plane reference §1.3); these helpers never panic on a malformed path, they return `None`.

use crate::connection::{Connection, Path, PathSegment};

impl PathSegment {
    /// A segment with a name and id and no token yet.
    pub fn new(name: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            id: id.into(),
            ..Default::default()
        }
    }
}

impl Path {
    /// The segment at `index`, if it exists.
    pub fn current(&self) -> Option<&PathSegment> {
        self.path_segments.get(self.index as usize)
    }

    /// Mutable access to the segment at `index`.
    pub fn current_mut(&mut self) -> Option<&mut PathSegment> {
        self.path_segments.get_mut(self.index as usize)
    }

    /// The segment before `index` (the caller's hop).
    pub fn previous(&self) -> Option<&PathSegment> {
        let i = (self.index as usize).checked_sub(1)?;
        self.path_segments.get(i)
    }

    /// Mutable access to the segment before `index`.
    pub fn previous_mut(&mut self) -> Option<&mut PathSegment> {
        let i = (self.index as usize).checked_sub(1)?;
        self.path_segments.get_mut(i)
    }

    /// The segment after `index` (the next hop), once it has answered.
    pub fn next(&self) -> Option<&PathSegment> {
        self.path_segments.get(self.index as usize + 1)
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.path_segments.len()
    }

    /// True if there are no segments.
    pub fn is_empty(&self) -> bool {
        self.path_segments.is_empty()
    }

    /// The hop names in order, e.g. `["nsc", "nsmgr-1", "forwarder-1", "nse"]`.
    pub fn names(&self) -> Vec<&str> {
        self.path_segments.iter().map(|s| s.name.as_str()).collect()
    }
}

impl Connection {
    /// The path, or an empty one.
    pub fn path_or_default(&self) -> &Path {
        static EMPTY: Path = Path {
            index: 0,
            path_segments: Vec::new(),
        };
        self.path.as_ref().unwrap_or(&EMPTY)
    }

    /// The current hop's segment.
    pub fn current_segment(&self) -> Option<&PathSegment> {
        self.path.as_ref()?.current()
    }

    /// The previous hop's segment.
    pub fn previous_segment(&self) -> Option<&PathSegment> {
        self.path.as_ref()?.previous()
    }

    /// The next hop's segment.
    pub fn next_segment(&self) -> Option<&PathSegment> {
        self.path.as_ref()?.next()
    }

    /// The IP context, created empty if absent.
    pub fn ip_context_mut(&mut self) -> &mut crate::connectioncontext::IpContext {
        self.context
            .get_or_insert_with(Default::default)
            .ip_context
            .get_or_insert_with(Default::default)
    }

    /// The connection context, created empty if absent.
    pub fn context_mut(&mut self) -> &mut crate::connectioncontext::ConnectionContext {
        self.context.get_or_insert_with(Default::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(index: u32, names: &[&str]) -> Path {
        Path {
            index,
            path_segments: names.iter().map(|n| PathSegment::new(*n, *n)).collect(),
        }
    }

    #[test]
    fn hops_around_the_index() {
        let p = path(1, &["nsc", "nsmgr", "fwd"]);
        assert_eq!(p.previous().map(|s| s.name.as_str()), Some("nsc"));
        assert_eq!(p.current().map(|s| s.name.as_str()), Some("nsmgr"));
        assert_eq!(p.next().map(|s| s.name.as_str()), Some("fwd"));
        let first = path(0, &["nsc"]);
        assert!(first.previous().is_none());
        assert!(first.next().is_none());
    }

    #[test]
    fn out_of_range_index_is_none_not_panic() {
        let p = path(7, &["nsc"]);
        assert!(p.current().is_none());
        assert!(p.previous().is_none());
        let p = path(u32::MAX, &["nsc"]);
        assert!(p.next().is_none());
    }
}
