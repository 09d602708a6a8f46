//! Request-scoped values: the nodes that carry them and the typed keys that name them.

use std::any::TypeId;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// A typed key for request-scoped values: a type that names one value slot.
///
/// Go keys values by any comparable value, so two packages can collide on the same key, and a
/// lookup hands back an untyped `any`. Here a key is a type you own: no other crate can name it,
/// and the compiler knows the type of the value it stores. Use a key when the value's own type
/// is too general to be unique (two `String`s, a `u64` user id next to a `u64` tenant id); when
/// the type is yours and says what it holds, [`Context::with_value`](crate::Context::with_value) keyed by the type alone
/// is simpler.
///
/// # Examples
///
/// ```
/// use taskctx::{Context, Key};
///
/// /// The request id, as the load balancer sent it.
/// struct RequestId;
/// impl Key for RequestId {
///     type Value = String;
/// }
///
/// /// The user the request acts for.
/// struct UserName;
/// impl Key for UserName {
///     type Value = String;
/// }
///
/// let ctx = Context::background()
///     .with_key::<RequestId>("req-7".to_string())
///     .with_key::<UserName>("ana".to_string());
/// assert_eq!(ctx.get::<RequestId>().map(String::as_str), Some("req-7"));
/// assert_eq!(ctx.get::<UserName>().map(String::as_str), Some("ana"));
/// // A value stored by key is not visible by type, and the other way round.
/// assert_eq!(ctx.value::<String>(), None);
/// ```
pub trait Key: 'static {
    /// The type of the value stored under this key.
    type Value: Send + Sync + 'static;
}

/// Keeps keyed values apart from values keyed by their own type, even if a key type is also
/// used as a value type.
pub(crate) struct KeyTag<K>(PhantomData<K>);

/// The bit of `key` in a `ValueNode::keys` mask. A `TypeId` is already a hash of its type;
/// its own `Hash` hands this the bits to pick from.
#[inline]
pub(crate) fn key_bit(key: TypeId) -> u64 {
    /// Keeps what `TypeId::hash` writes.
    #[derive(Default)]
    struct Bits(u64);
    impl Hasher for Bits {
        fn write(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(byte);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 ^= n;
        }
        fn finish(&self) -> u64 {
            self.0
        }
    }
    let mut bits = Bits::default();
    key.hash(&mut bits);
    // Fold the word so that every bit of it picks the slot.
    let word = bits.finish();
    1 << ((word ^ (word >> 32) ^ (word >> 16)) % 64)
}

pub(crate) fn key_id<K: Key>() -> TypeId {
    TypeId::of::<KeyTag<K>>()
}
