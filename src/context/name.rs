//! A context's name: Go's `context.Background.WithCancel…` form, written without recursion.

use std::fmt;

use tokio::time::Instant;

use super::Context;
use crate::tree::Kind;
use crate::tree::node::{Label, Node};

impl Node {
    /// The other parent of a merge: its name goes inside this context's `.Merge(…)`.
    fn merged_with(&self) -> Option<&Node> {
        match self {
            Node::Scope(scope) => match scope.kind() {
                Kind::Merge(merge) => Some(&merge.other),
                _ => None,
            },
            _ => None,
        }
    }

    /// Writes this node's layer of the Go-style name (after its parent's). A merge writes
    /// only `.Merge(`: the caller writes the other parent's name and the `)`.
    fn fmt_link(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Background => f.write_str("context.Background"),
            Node::Todo => f.write_str("context.TODO"),
            Node::Detached(_) => f.write_str(".WithoutCancel"),
            Node::Value(node) => match node.label {
                Label::Type(name) => write!(f, ".WithValue(type {name})"),
                Label::Key(name) => write!(f, ".WithValue(key {name})"),
            },
            Node::Scope(scope) => match scope.kind() {
                Kind::Cancel => f.write_str(".WithCancel"),
                Kind::Deadline { at, .. } => {
                    let left = at.saturating_duration_since(Instant::now());
                    write!(f, ".WithDeadline([{left:?}])")
                }
                Kind::Merge(_) => f.write_str(".Merge("),
                Kind::Token => f.write_str(".WithToken"),
            },
        }
    }
}

/// The most layers a context's name shows (see `Display for Context`).
const NAME_LAYERS: usize = 256;

/// One chain of a name being written: what is left to write of it, root first.
struct NameChain<'a> {
    /// The layers still to write.
    shown: std::vec::IntoIter<&'a Node>,
    /// How many layers follow them that are left out.
    left_out: usize,
}

impl<'a> NameChain<'a> {
    /// The chain that ends at `ctx`, of which the `room` layers nearest the root are kept.
    ///
    /// Only those are collected, so that a long chain costs two walks and no more memory.
    fn new(ctx: &'a Node, room: usize) -> Self {
        let chain = || std::iter::successors(Some(ctx), |ctx| ctx.parent());
        let depth = chain().count();
        let left_out = depth.saturating_sub(room);
        let mut shown: Vec<_> = chain().skip(left_out).collect();
        shown.reverse();
        NameChain {
            shown: shown.into_iter(),
            left_out,
        }
    }
}

impl fmt::Display for Context {
    /// Go's form, such as `context.Background.WithCancel.WithValue(type my_app::User)`.
    ///
    /// Values show their type (or key type) only, never their contents: a value may hold a
    /// credential. A deadline shows the time left in brackets. A merge shows the name of its
    /// other parent in parentheses: `context.Background.WithCancel.Merge(context.TODO)`.
    ///
    /// A name shows at most 256 layers: the root and each `.With…` or `.Merge(`, counting those
    /// inside a merge's parentheses. Past that, `…(N more)` ends each chain that has layers left
    /// out, N of them (a merge among them counts as one, whatever its other parent holds), and
    /// every open `Merge(` is closed. Merges can make a name of exponential length (a context
    /// merged with itself 64 times names 2^64 layers); this bound keeps every name short.
    /// Writing a name uses no more stack however deep its chains and merges, and time linear in
    /// the layers shown and the depth of the chains they are in.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (ctx, _cancel) = Context::background().with_cancel();
    /// let ctx = ctx.with_value(String::from("hunter2")).without_cancel();
    /// assert_eq!(
    ///     ctx.to_string(),
    ///     "context.Background.WithCancel.WithValue(type alloc::string::String).WithoutCancel",
    /// );
    /// assert!(!ctx.to_string().contains("hunter2"));
    ///
    /// let mut deep = Context::background();
    /// for _ in 0..300 {
    ///     deep = deep.with_value(0u8);
    /// }
    /// assert!(deep.to_string().ends_with(".WithValue(type u8)…(45 more)"));
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An explicit stack of the chains being written, one more for each open `Merge(`, so
        // that no nesting of merges can overflow the thread's stack; and a budget of layers,
        // as the work would double with each merge of a context with itself. Pinned by the
        // `display_of_*` tests in `tests/bad_input.rs` and by
        // `display_names_at_most_256_layers_and_counts_the_rest_of_the_chain`.
        let mut room = NAME_LAYERS;
        let mut chains = vec![NameChain::new(&self.node, room)];
        while let Some(chain) = chains.last_mut() {
            match chain.shown.next() {
                Some(ctx) if room > 0 => {
                    room -= 1;
                    ctx.fmt_link(f)?;
                    if let Some(other) = ctx.merged_with() {
                        chains.push(NameChain::new(other, room));
                    }
                }
                unwritten => {
                    let more =
                        chain.left_out + chain.shown.len() + usize::from(unwritten.is_some());
                    if more > 0 {
                        write!(f, "…({more} more)")?;
                    }
                    chains.pop();
                    if !chains.is_empty() {
                        f.write_str(")")?;
                    }
                }
            }
        }
        Ok(())
    }
}
