//! Budgets in request headers: which headers carry one, and how each is read and written.
//!
//! `grpc-timeout` is read and written in gRPC's format (`grpc_timeout`); Envoy's
//! `x-envoy-expected-rq-timeout-ms` and a header of the user's choosing carry a whole number of
//! milliseconds. When several are present, the shortest wins; one malformed header makes the
//! whole request's budget malformed, so that no budget is silently ignored.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::grpc_timeout::{self, GRPC_TIMEOUT, GrpcTimeoutError};

/// Envoy's header: the time the proxy will wait for the response, in milliseconds.
pub(crate) const ENVOY_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// The headers a server layer reads a budget from, or a client layer writes one to.
#[derive(Clone, Debug)]
pub(crate) struct Headers {
    pub(crate) grpc_timeout: bool,
    pub(crate) envoy: bool,
    pub(crate) millis: Option<HeaderName>,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            grpc_timeout: true,
            envoy: false,
            millis: None,
        }
    }
}

impl Headers {
    /// The shortest budget the request's headers state, if any states one.
    pub(crate) fn read(&self, headers: &HeaderMap) -> Result<Option<Duration>, BudgetError> {
        let mut budget: Option<Duration> = None;
        let mut shorten = |found: Duration| {
            budget = Some(budget.map_or(found, |b| b.min(found)));
        };
        if self.grpc_timeout {
            // A repeated header is as malformed as a bad one: which would be meant?
            if let Some(value) = single(headers, &GRPC_TIMEOUT)? {
                shorten(grpc_timeout::decode(value.as_bytes()).map_err(BudgetError::Grpc)?);
            }
        }
        if self.envoy {
            if let Some(value) = single(headers, &ENVOY_TIMEOUT)? {
                shorten(decode_millis(&ENVOY_TIMEOUT, value)?);
            }
        }
        if let Some(name) = &self.millis {
            if let Some(value) = single(headers, name)? {
                shorten(decode_millis(name, value)?);
            }
        }
        Ok(budget)
    }

    /// Writes `remaining` into every header this names, keeping a shorter budget the request
    /// already states in the same header.
    pub(crate) fn write(&self, headers: &mut HeaderMap, remaining: Duration) {
        if self.grpc_timeout {
            let keep = single(headers, &GRPC_TIMEOUT)
                .ok()
                .flatten()
                .and_then(|v| grpc_timeout::decode(v.as_bytes()).ok())
                .is_some_and(|set| set <= remaining);
            if !keep {
                headers.insert(GRPC_TIMEOUT, grpc_timeout::encode(remaining));
            }
        }
        for name in [self.envoy.then_some(&ENVOY_TIMEOUT), self.millis.as_ref()]
            .into_iter()
            .flatten()
        {
            let keep = single(headers, name)
                .ok()
                .flatten()
                .and_then(|v| decode_millis(name, v).ok())
                .is_some_and(|set| set <= remaining);
            if !keep {
                // Rounded down, so that the budget never lengthens.
                let millis = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
                headers.insert(name.clone(), HeaderValue::from(millis));
            }
        }
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, BudgetError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(BudgetError::Repeated(name.clone()));
    }
    Ok(first)
}

/// A whole number of milliseconds: one to twenty ASCII digits that fit in a `u64`.
fn decode_millis(name: &HeaderName, value: &HeaderValue) -> Result<Duration, BudgetError> {
    let bytes = value.as_bytes();
    let malformed = || BudgetError::Millis(name.clone());
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let mut n: u64 = 0;
    for &digit in bytes {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit - b'0')))
            .ok_or_else(malformed)?;
    }
    Ok(Duration::from_millis(n))
}

/// A request whose budget header is malformed; the server layer answers it without calling
/// the service, with `400 Bad Request`, or for a gRPC request the status `INTERNAL`, as gRPC
/// servers answer a malformed `grpc-timeout`.
///
/// # Examples
///
/// ```
/// use taskctx::service::{BudgetError, ServerLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{Service, ServiceExt};
///
/// let layer = ServerLayer::new(&taskctx::Context::background());
/// let mut svc = tower::ServiceBuilder::new().layer(layer).service_fn(
///     |_req: http::Request<String>| async { Ok::<_, std::convert::Infallible>(http::Response::new(String::new())) },
/// );
/// let req = http::Request::builder().header("grpc-timeout", "1 S").body(String::new()).unwrap();
/// let response = svc.ready().await.unwrap().call(req).await.unwrap();
/// assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
/// let err = response.extensions().get::<BudgetError>().unwrap();
/// assert_eq!(err.to_string(), "malformed grpc-timeout: a value of other than ASCII digits");
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetError {
    /// `grpc-timeout` is malformed.
    Grpc(GrpcTimeoutError),
    /// A milliseconds header (Envoy's or the one configured) is not a whole number of
    /// milliseconds.
    Millis(HeaderName),
    /// A budget header appears more than once.
    Repeated(HeaderName),
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetError::Grpc(err) => err.fmt(f),
            BudgetError::Millis(name) => {
                write!(f, "malformed {name}: not a whole number of milliseconds")
            }
            BudgetError::Repeated(name) => write!(f, "malformed {name}: more than one value"),
        }
    }
}

impl std::error::Error for BudgetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BudgetError::Grpc(err) => Some(err),
            _ => None,
        }
    }
}
