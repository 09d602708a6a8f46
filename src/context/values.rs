//! Request-scoped values: deriving contexts that carry them, and looking them up.

use std::any::{Any, TypeId};
use std::sync::Arc;

use super::Context;
use crate::tree::node::{Detached, Label, Node, ValueNode};
use crate::value::{Key, key_bit, key_id};

impl Context {
    /// Derives a child that carries `value`, looked up by its type with [`Context::value`].
    ///
    /// The child is done exactly when this context is. A lookup finds the innermost binding of
    /// a type, so a child can shadow its parent's value. Values are for request-scoped data
    /// that crosses API boundaries (a request id, the caller's identity, a trace handle), not
    /// for optional function arguments. Deriving costs two allocations, the node and the boxed
    /// value (one for a zero-sized value); lookups through it allocate nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// #[derive(Debug, PartialEq)]
    /// struct TenantId(u32);
    ///
    /// let ctx = Context::background().with_value(TenantId(4));
    /// assert_eq!(ctx.value::<TenantId>(), Some(&TenantId(4)));
    /// let inner = ctx.with_value(TenantId(9));
    /// assert_eq!(inner.value::<TenantId>(), Some(&TenantId(9)), "innermost wins");
    /// assert_eq!(ctx.value::<TenantId>(), Some(&TenantId(4)));
    /// ```
    pub fn with_value<T: Send + Sync + 'static>(&self, value: T) -> Context {
        self.with_node(
            TypeId::of::<T>(),
            Label::Type(std::any::type_name::<T>()),
            value,
        )
    }

    /// Derives a child that carries `value` under the typed key `K`, looked up with
    /// [`Context::get`].
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Key};
    ///
    /// struct Deadline;
    /// impl Key for Deadline {
    ///     type Value = &'static str;
    /// }
    ///
    /// let ctx = Context::background().with_key::<Deadline>("soft");
    /// assert_eq!(ctx.get::<Deadline>(), Some(&"soft"));
    /// ```
    pub fn with_key<K: Key>(&self, value: K::Value) -> Context {
        self.with_node(key_id::<K>(), Label::Key(std::any::type_name::<K>()), value)
    }

    fn with_node<T: Send + Sync + 'static>(&self, key: TypeId, label: Label, value: T) -> Context {
        let node = Arc::new(ValueNode {
            parent: self.node.clone(),
            scope: self.scope().cloned(),
            keys: self.keys_above() | key_bit(key),
            key,
            label,
            value: Box::new(value),
        });
        Context {
            node: Node::Value(node),
        }
    }

    /// The innermost value of type `T` this context carries, if any.
    ///
    /// The lookup walks up the chain of derived contexts; it never allocates or locks. Each
    /// value layer keeps a 64-bit mask of the keys held from it up, so a type that no layer
    /// holds is usually answered at the first value layer, however deep the chain.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let ctx = Context::background().with_value(42u8);
    /// let (child, _cancel) = ctx.with_cancel();
    /// assert_eq!(child.value::<u8>(), Some(&42));
    /// assert_eq!(child.value::<u16>(), None);
    /// ```
    #[inline]
    pub fn value<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.lookup(TypeId::of::<T>())?.downcast_ref()
    }

    /// The innermost value stored under the key `K`, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::{Context, Key};
    ///
    /// struct Locale;
    /// impl Key for Locale {
    ///     type Value = String;
    /// }
    ///
    /// let ctx = Context::background();
    /// assert_eq!(ctx.get::<Locale>(), None);
    /// let ctx = ctx.with_key::<Locale>("pt-BR".into());
    /// assert_eq!(ctx.get::<Locale>().map(String::as_str), Some("pt-BR"));
    /// ```
    #[inline]
    pub fn get<K: Key>(&self) -> Option<&K::Value> {
        self.lookup(key_id::<K>())?.downcast_ref()
    }

    /// The key mask of the nearest value layer at or above this context (see `ValueNode::keys`).
    fn keys_above(&self) -> u64 {
        let mut current = &self.node;
        loop {
            current = match current {
                Node::Value(node) => return node.keys,
                Node::Scope(scope) => scope.parent(),
                Node::Detached(node) => &node.parent,
                Node::Background | Node::Todo => return 0,
            };
        }
    }

    #[inline]
    fn lookup(&self, key: TypeId) -> Option<&(dyn Any + Send + Sync)> {
        let bit = key_bit(key);
        // One match per layer: this loop is the whole cost of a deep lookup. A miss ends at the
        // first value layer whose mask says that no layer from it up holds the key.
        let mut current = &self.node;
        loop {
            current = match current {
                Node::Value(node) if node.key == key => return Some(&*node.value),
                Node::Value(node) if node.keys & bit == 0 => return None,
                Node::Value(node) => &node.parent,
                Node::Scope(scope) => scope.parent(),
                Node::Detached(node) => &node.parent,
                Node::Background | Node::Todo => return None,
            };
        }
    }

    /// Derives a child that keeps this context's values but none of its cancellation: it is
    /// never done and has no deadline, whatever happens to this context.
    ///
    /// Go's `WithoutCancel`, for work that must outlive the request that started it (an audit
    /// write, a cache fill). Give such work its own bound: derive a timeout from the result.
    ///
    /// # Examples
    ///
    /// ```
    /// use taskctx::Context;
    ///
    /// let (request, cancel) = Context::background().with_value("req-1").with_cancel();
    /// let detached = request.without_cancel();
    /// cancel.cancel();
    /// assert!(request.is_done());
    /// assert!(!detached.is_done());
    /// assert_eq!(detached.err(), None);
    /// assert!(detached.cause().is_none());
    /// assert_eq!(detached.value::<&str>(), Some(&"req-1"));
    /// ```
    pub fn without_cancel(&self) -> Context {
        Context {
            node: Node::Detached(Arc::new(Detached {
                parent: self.node.clone(),
            })),
        }
    }
}
