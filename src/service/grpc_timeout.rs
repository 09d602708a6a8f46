//! The `grpc-timeout` header: a budget as gRPC's HTTP/2 protocol writes it.
//!
//! `grpc-timeout` is `TimeoutValue TimeoutUnit`: one to eight ASCII digits, then one of `H`
//! (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n`
//! (nanoseconds). Nothing else is accepted: no sign, no whitespace, no empty value, no other
//! digits than `0`-`9`.
//!
//! Invariants, each pinned by a property test in `tests/service_grpc_timeout.rs`:
//! 1. `decode(encode(d)) <= d` for every `Duration`: a budget never lengthens on the wire.
//! 2. `encode` picks the finest unit whose value fits in eight digits, so what it drops is
//!    less than one unit of a value of at least eight digits (exact below 100 ms).
//! 3. `decode` never panics and refuses every malformed input with a [`GrpcTimeoutError`].

use std::fmt;
use std::time::Duration;

use http::HeaderValue;

/// The header's name, `grpc-timeout`.
///
/// # Examples
///
/// ```
/// use taskctx::service::grpc_timeout::{GRPC_TIMEOUT, encode};
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert(GRPC_TIMEOUT, encode(std::time::Duration::from_secs(2)));
/// assert_eq!(headers["grpc-timeout"], "2000000u");
/// ```
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The largest `TimeoutValue`: eight digits.
const MAX_VALUE: u128 = 99_999_999;

/// The units from finest to coarsest, with their length in nanoseconds.
const UNITS: [(u8, u128); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// Encodes `budget` as a `grpc-timeout` value that is never longer than `budget`.
///
/// The value is in the finest unit that holds it in eight digits, rounded down in that unit.
/// A budget longer than 99,999,999 hours is written as `99999999H`. A zero budget is `0n`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::service::grpc_timeout;
///
/// assert_eq!(grpc_timeout::encode(Duration::from_millis(300)), "300000u");
/// assert_eq!(grpc_timeout::encode(Duration::from_nanos(1_500)), "1500n");
/// assert_eq!(grpc_timeout::encode(Duration::ZERO), "0n");
/// // 100 s + 1 ns does not fit in eight digits of nanoseconds or microseconds:
/// // milliseconds, rounded down.
/// assert_eq!(grpc_timeout::encode(Duration::new(100, 1)), "100000m");
/// ```
pub fn encode(budget: Duration) -> HeaderValue {
    let nanos = budget.as_nanos();
    let (unit, value) = UNITS
        .iter()
        .map(|&(unit, len)| (unit, nanos / len))
        .find(|&(_, value)| value <= MAX_VALUE)
        .unwrap_or((b'H', MAX_VALUE));
    let mut buf = [0u8; 9];
    let mut at = buf.len() - 1;
    buf[at] = unit;
    let mut rest = value;
    loop {
        at -= 1;
        // `rest % 10` is below 10: the cast cannot truncate.
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[at..]).expect("ASCII digits and a letter are a valid header")
}

/// Decodes a `grpc-timeout` value into the budget it states.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use taskctx::service::grpc_timeout;
///
/// assert_eq!(grpc_timeout::decode(b"300m"), Ok(Duration::from_millis(300)));
/// assert_eq!(grpc_timeout::decode(b"2H"), Ok(Duration::from_secs(7_200)));
/// assert!(grpc_timeout::decode(b"123456789m").is_err(), "nine digits");
/// assert!(grpc_timeout::decode(b" 1S").is_err());
/// assert!(grpc_timeout::decode(b"-1S").is_err());
/// assert!(grpc_timeout::decode(b"1s").is_err(), "unknown unit");
/// ```
///
/// # Errors
///
/// A [`GrpcTimeoutError`] that says what is wrong, when `value` is empty, has no digits,
/// more than eight digits, anything but ASCII digits before the unit, or an unknown unit.
pub fn decode(value: &[u8]) -> Result<Duration, GrpcTimeoutError> {
    let Some((&unit, digits)) = value.split_last() else {
        return Err(GrpcTimeoutError(Kind::Empty));
    };
    if digits.is_empty() {
        return Err(GrpcTimeoutError(Kind::NoDigits));
    }
    if digits.len() > 8 {
        return Err(GrpcTimeoutError(Kind::TooLong));
    }
    let mut n: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(GrpcTimeoutError(Kind::NotADigit));
        }
        // At most eight digits: no overflow.
        n = n * 10 + u64::from(digit - b'0');
    }
    // At most 99,999,999 hours, about 3.6e11 seconds: no overflow in any unit.
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3_600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(GrpcTimeoutError(Kind::UnknownUnit)),
    })
}

/// A malformed `grpc-timeout` value, as refused by [`decode`].
///
/// # Examples
///
/// ```
/// use taskctx::service::grpc_timeout;
///
/// let err = grpc_timeout::decode(b"").unwrap_err();
/// assert_eq!(err.to_string(), "malformed grpc-timeout: empty");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcTimeoutError(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Empty,
    NoDigits,
    TooLong,
    NotADigit,
    UnknownUnit,
}

impl fmt::Display for GrpcTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Empty => "malformed grpc-timeout: empty",
            Kind::NoDigits => "malformed grpc-timeout: no digits before the unit",
            Kind::TooLong => "malformed grpc-timeout: more than 8 digits",
            Kind::NotADigit => "malformed grpc-timeout: a value of other than ASCII digits",
            Kind::UnknownUnit => "malformed grpc-timeout: a unit other than H, M, S, m, u or n",
        })
    }
}

impl std::error::Error for GrpcTimeoutError {}
