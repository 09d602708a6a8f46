//! The tower server layer, driven directly (no network): which budget a request gets, which
//! requests are refused without calling the service, and the cause its context is cancelled
//! with. Paused clock: a budget read at the start of a request is exact.
#![cfg(feature = "tower")]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use taskctx::service::{BudgetError, ClientGone, Responded, ServerLayer};
use taskctx::{Context, Error};
use tower::{Layer, Service, ServiceExt};

/// A service that answers with its request's context, and counts its calls.
fn echo_context(
    calls: &Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<Option<Context>>, Error = Infallible> + Clone {
    let calls = calls.clone();
    tower::service_fn(move |req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let ctx = req.extensions().get::<Context>().cloned();
        async move { Ok(Response::new(ctx)) }
    })
}

/// Calls `svc` once it is ready.
async fn call<S, B>(svc: &mut S, req: Request<()>) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

/// Where `stuck` leaves the context of the last request it saw.
type Seen = Arc<std::sync::Mutex<Option<Context>>>;

/// A service that never answers, and hands over each request's context.
fn stuck(
    root: &Context,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = Infallible>,
    Seen,
) {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let keep = seen.clone();
    let svc = ServerLayer::new(root).layer(tower::service_fn(move |req: Request<()>| {
        *keep.lock().unwrap() = req.extensions().get::<Context>().cloned();
        std::future::pending::<Result<Response<()>, Infallible>>()
    }));
    (svc, seen)
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder();
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

async fn budget_of(layer: &ServerLayer, headers: &[(&str, &str)]) -> Option<Duration> {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(echo_context(&calls));
    let response = call(&mut svc, request(headers)).await;
    let ctx = response.into_body().expect("the service got a context");
    // A context keeps its deadline after it is cancelled.
    ctx.deadline().map(|at| at - tokio::time::Instant::now())
}

#[tokio::test(start_paused = true)]
async fn budget_is_the_shortest_header_capped_by_the_maximum() {
    let root = Context::background();
    let custom = HeaderName::from_static("x-budget-ms");
    let all = ServerLayer::new(&root)
        .envoy_timeout_header()
        .millis_header(custom.clone());
    let headers = [
        ("grpc-timeout", "10S"),
        ("x-envoy-expected-rq-timeout-ms", "5000"),
        ("x-budget-ms", "7000"),
    ];
    assert_eq!(
        budget_of(&all, &headers).await,
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        budget_of(&all, &[("x-budget-ms", "7000")]).await,
        Some(Duration::from_secs(7))
    );
    let capped = all.clone().max_timeout(Duration::from_secs(3));
    assert_eq!(
        budget_of(&capped, &headers).await,
        Some(Duration::from_secs(3))
    );
    assert_eq!(budget_of(&capped, &[]).await, Some(Duration::from_secs(3)));

    // The default applies only to a request that states no budget.
    let defaulted = ServerLayer::new(&root).default_timeout(Duration::from_secs(2));
    assert_eq!(
        budget_of(&defaulted, &[]).await,
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        budget_of(&defaulted, &[("grpc-timeout", "9S")]).await,
        Some(Duration::from_secs(9))
    );
    // Opt-in headers are ignored unless turned on, and grpc-timeout can be turned off.
    let plain = ServerLayer::new(&root);
    assert_eq!(
        budget_of(&plain, &[("x-envoy-expected-rq-timeout-ms", "5")]).await,
        None
    );
    let no_grpc = ServerLayer::new(&root).ignore_grpc_timeout();
    assert_eq!(budget_of(&no_grpc, &[("grpc-timeout", "1S")]).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_route_layer_below_a_server_layer_only_shortens_the_budget() {
    let (root, _stop) = Context::background().with_cancel();
    let calls = Arc::new(AtomicUsize::new(0));
    let outer = ServerLayer::new(&root).max_timeout(Duration::from_secs(5));
    let route = ServerLayer::new(&Context::background()).default_timeout(Duration::from_secs(60));
    let mut svc = outer.layer(route.layer(echo_context(&calls)));
    let response = call(&mut svc, request(&[])).await;
    let ctx = response.into_body().unwrap();
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(5)));
    drop(ctx);
    taskctx::testing::assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn refusals_do_not_call_the_service() {
    let (root, shutdown) = Context::background().with_cancel();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ServerLayer::new(&root).envoy_timeout_header();
    let mut svc = layer.layer(echo_context(&calls));
    let grpc = ("content-type", "application/grpc+proto");
    for (headers, status, grpc_status) in [
        (vec![("grpc-timeout", "1 S")], StatusCode::BAD_REQUEST, "13"),
        (
            vec![("grpc-timeout", "123456789n")],
            StatusCode::BAD_REQUEST,
            "13",
        ),
        (vec![("grpc-timeout", "")], StatusCode::BAD_REQUEST, "13"),
        (
            vec![("x-envoy-expected-rq-timeout-ms", "-5")],
            StatusCode::BAD_REQUEST,
            "13",
        ),
        (
            vec![("x-envoy-expected-rq-timeout-ms", "99999999999999999999")],
            StatusCode::BAD_REQUEST,
            "13",
        ),
        (
            vec![("grpc-timeout", "1S"), ("grpc-timeout", "2S")],
            StatusCode::BAD_REQUEST,
            "13",
        ),
        (
            vec![("grpc-timeout", "0n")],
            StatusCode::GATEWAY_TIMEOUT,
            "4",
        ),
        (
            vec![("grpc-timeout", "0H")],
            StatusCode::GATEWAY_TIMEOUT,
            "4",
        ),
    ] {
        let response = call(&mut svc, request(&headers)).await;
        assert_eq!(response.status(), status, "{headers:?}");
        let mut with_grpc = headers.clone();
        with_grpc.push(grpc);
        let response = call(&mut svc, request(&with_grpc)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "gRPC answers in grpc-status"
        );
        assert_eq!(
            response.headers()["grpc-status"],
            grpc_status,
            "{headers:?}"
        );
        assert!(response.headers().contains_key("grpc-message"));
    }
    let response = call(&mut svc, request(&[("grpc-timeout", "S")])).await;
    let err = response.extensions().get::<BudgetError>().unwrap();
    assert_eq!(
        err.to_string(),
        "malformed grpc-timeout: no digits before the unit"
    );

    shutdown.cancel();
    let response = call(&mut svc, request(&[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.extensions().get::<Error>(), Some(&Error::Canceled));
    let response = call(&mut svc, request(&[grpc])).await;
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_context_is_cancelled_when_the_response_is_returned_or_the_request_dropped() {
    let (root, _stop) = Context::background().with_cancel();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServerLayer::new(&root)
        .default_timeout(Duration::from_secs(10))
        .layer(echo_context(&calls));
    let response = call(&mut svc, request(&[])).await;
    let ctx = response.into_body().unwrap();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(ctx.cause().unwrap().is::<Responded>());

    // A service that never answers: its future is dropped, as hyper drops it when the
    // client goes away.
    let (mut stuck, seen) = stuck(&root);
    let future = stuck.ready().await.unwrap().call(request(&[]));
    let ctx = seen.lock().unwrap().take().unwrap();
    assert!(!ctx.is_done());
    drop(future);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(ctx.cause().unwrap().is::<ClientGone>());
    drop(ctx);
    taskctx::testing::assert_no_leaks(&root).await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_cause_reaches_the_requests_in_flight() {
    let token = tokio_util::sync::CancellationToken::new();
    let root = Context::background().with_token_cause(token.clone(), "shutting down");
    let (mut stuck, seen) = stuck(&root);
    let _future = stuck.ready().await.unwrap().call(request(&[]));
    let ctx = seen.lock().unwrap().take().unwrap();
    token.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(ctx.cause().unwrap().to_string(), "shutting down");
}

#[cfg(feature = "axum")]
#[tokio::test(start_paused = true)]
async fn a_canceled_response_takes_the_status_the_server_chose() {
    use axum::response::IntoResponse;
    let root = Context::background();
    let handler = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Error::Canceled.into_response())
    });
    let mut default = ServerLayer::new(&root).layer(handler);
    let response = call(&mut default, request(&[])).await;
    assert_eq!(response.status().as_u16(), 499);
    let mut chosen = ServerLayer::new(&root)
        .canceled_status(StatusCode::SERVICE_UNAVAILABLE)
        .layer(handler);
    let response = call(&mut chosen, request(&[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
