//! Budgets that cross processes: the client layer alone (paused clock), then client -> A -> B
//! over HTTP on loopback with a 300 ms budget at the client. B must see a smaller budget than
//! A, B's slow work must stop, and the client must get a deadline error, whatever the
//! network's timing: the assertions are orderings and outcomes, never durations.
#![cfg(feature = "axum")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderName, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use taskctx::service::{ClientLayer, ClientService, RequestExt, ServerLayer};
use taskctx::testing::assert_no_leaks;
use taskctx::{Context, Error};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tower::{Layer, Service, ServiceExt};

const WATCHDOG: Duration = Duration::from_secs(20);
const BUDGET_MS: HeaderName = HeaderName::from_static("x-budget-ms");

/// A transport that answers with the request's `grpc-timeout` and budget headers, or never.
fn echo_headers(
    answer: bool,
) -> impl Service<
    Request<()>,
    Response = http::Response<http::HeaderMap>,
    Error = Infallible,
    Future: Send,
> + Clone {
    tower::service_fn(move |req: Request<()>| async move {
        if !answer {
            std::future::pending::<()>().await;
        }
        Ok(http::Response::new(req.headers().clone()))
    })
}

fn with_context(ctx: &Context) -> Request<()> {
    let mut req = Request::new(());
    req.set_context(ctx);
    req
}

#[tokio::test(start_paused = true)]
async fn the_client_layer_sends_no_more_than_the_remaining_budget() {
    let layer = ClientLayer::new().millis_header(BUDGET_MS);
    let mut client = layer.layer(echo_headers(true));
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(1_500));
    tokio::time::advance(Duration::from_micros(200)).await;
    let sent = client
        .ready()
        .await
        .unwrap()
        .call(with_context(&ctx))
        .await
        .unwrap();
    assert_eq!(sent.body()["grpc-timeout"], "1499800u");
    assert_eq!(sent.body()["x-budget-ms"], "1499", "rounded down");

    // A shorter budget already set is kept; a longer one is replaced.
    let mut req = with_context(&ctx);
    req.headers_mut()
        .insert("grpc-timeout", "1S".parse().unwrap());
    req.headers_mut()
        .insert("x-budget-ms", "9000".parse().unwrap());
    let sent = client.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(sent.body()["grpc-timeout"], "1S");
    assert_eq!(sent.body()["x-budget-ms"], "1499");

    // Without a context, nothing is written.
    let sent = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert!(sent.body().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_client_layer_fails_fast_and_drops_the_call_when_the_context_is_done() {
    let mut client = ClientLayer::new().layer(echo_headers(false));
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    let err = client
        .ready()
        .await
        .unwrap()
        .call(with_context(&ctx))
        .await
        .unwrap_err();
    assert_eq!(err.downcast_ref::<Error>(), Some(&Error::DeadlineExceeded));

    let (ctx, cancel) = Context::background().with_cancel();
    let in_flight = client.ready().await.unwrap().call(with_context(&ctx));
    let cancelled = tokio::spawn(in_flight);
    tokio::task::yield_now().await;
    cancel.cancel();
    let err = cancelled.await.unwrap().unwrap_err();
    assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));

    let spent = with_context(&ctx);
    let err = client.ready().await.unwrap().call(spent).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Error>(),
        Some(&Error::Canceled),
        "not sent"
    );
}

type HttpClient = ClientService<Client<HttpConnector, Body>>;

fn http_client() -> HttpClient {
    let client = Client::builder(TokioExecutor::new()).build_http();
    ClientLayer::new()
        .no_grpc_timeout()
        .millis_header(BUDGET_MS)
        .layer(client)
}

/// One hop's view: the budget its handler saw, and how its slow work stopped.
struct Hop {
    budget: Mutex<Option<Duration>>,
    stopped: Semaphore,
    cause: Mutex<Option<String>>,
    next: Option<(SocketAddr, HttpClient)>,
}

impl Hop {
    fn new(next: Option<SocketAddr>) -> Arc<Hop> {
        Arc::new(Hop {
            budget: Mutex::default(),
            stopped: Semaphore::new(0),
            cause: Mutex::default(),
            next: next.map(|addr| (addr, http_client())),
        })
    }
}

/// Records its context's cause when its task is dropped, which happens when the context is
/// done.
struct SlowWork(Context, Arc<Hop>);

impl Drop for SlowWork {
    fn drop(&mut self) {
        *self.1.cause.lock().unwrap() = self.0.cause().map(|c| c.to_string());
        self.1.stopped.add_permits(1);
    }
}

/// Hop A calls the next hop after some work of its own; hop B only does slow work.
async fn hop(ctx: Context, State(hop): State<Arc<Hop>>) -> Result<Response, Error> {
    *hop.budget.lock().unwrap() = ctx.remaining();
    let slow = SlowWork(ctx.clone(), hop.clone());
    let _work = ctx.spawn(move |_ctx| async move {
        let _slow = slow;
        std::future::pending::<()>().await
    });
    let Some((addr, client)) = &hop.next else {
        return Err(ctx.done().await);
    };
    ctx.run_until_cancelled(tokio::time::sleep(Duration::from_millis(20)))
        .await?;
    let mut req = Request::get(format!("http://{addr}/"))
        .body(Body::empty())
        .unwrap();
    req.set_context(&ctx);
    let mut client = client.clone();
    match client.ready().await.unwrap().call(req).await {
        Ok(response) => Ok(response.map(Body::new).into_response()),
        Err(err) => Err(*err
            .downcast::<Error>()
            .expect("only the context fails the call")),
    }
}

async fn serve(hop_state: Arc<Hop>, root: &Context) -> SocketAddr {
    let app = Router::new()
        .route("/", get(hop))
        .with_state(hop_state)
        .layer(ServerLayer::new(root).millis_header(BUDGET_MS));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = root.cancelled_owned();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap();
    });
    addr
}

#[tokio::test]
async fn two_hops_over_http_shrink_the_budget_and_stop_at_the_deadline() {
    let (root_a, stop_a) = Context::background().with_cancel();
    let (root_b, stop_b) = Context::background().with_cancel();
    let b = Hop::new(None);
    let b_addr = serve(b.clone(), &root_b).await;
    let a = Hop::new(Some(b_addr));
    let a_addr = serve(a.clone(), &root_a).await;

    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(300));
    let mut req = Request::get(format!("http://{a_addr}/"))
        .body(Body::empty())
        .unwrap();
    req.set_context(&ctx);
    let mut client = http_client();
    let outcome = timeout(WATCHDOG, client.ready().await.unwrap().call(req))
        .await
        .unwrap();
    // A deadline error either way: the client's own deadline, or A's 504 if it came first.
    match outcome {
        Err(err) => assert_eq!(err.downcast_ref::<Error>(), Some(&Error::DeadlineExceeded)),
        Ok(response) => assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT),
    }

    for hop in [&a, &b] {
        timeout(WATCHDOG, hop.stopped.acquire())
            .await
            .unwrap()
            .unwrap()
            .forget();
    }
    let budget_a = a.budget.lock().unwrap().expect("A got a budget");
    let budget_b = b.budget.lock().unwrap().expect("B got a budget");
    assert!(budget_a <= Duration::from_millis(300));
    assert!(budget_b < budget_a, "B {budget_b:?} < A {budget_a:?}");
    // B's slow work stopped at its own deadline, or when A gave up the call at A's.
    let cause_b = b.cause.lock().unwrap().clone().unwrap();
    assert!(
        [
            "context deadline exceeded",
            "the client went away before the response was ready"
        ]
        .contains(&cause_b.as_str()),
        "{cause_b}"
    );

    drop(stop_a);
    drop(stop_b);
    assert_no_leaks(&root_a).await;
    assert_no_leaks(&root_b).await;
}
