//! Budgets that cross processes: the client layer alone (paused clock), then client -> A -> B
//! on loopback with a 300 ms budget at the client, once over HTTP with a milliseconds header
//! and once over tonic with `grpc-timeout`. B must see a smaller budget than A, B's slow work
//! must stop, and the client must get a deadline error, whatever the network's timing: the
//! assertions are orderings and outcomes, never durations.
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
use taskctx::{CancelHandle, Context, Error};
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

/// What one hop's handler saw: its budget, and how the slow work it spawned stopped.
struct Seen {
    budget: Mutex<Option<Duration>>,
    stopped: Semaphore,
    cause: Mutex<Option<String>>,
}

impl Seen {
    fn new() -> Arc<Seen> {
        Arc::new(Seen {
            budget: Mutex::default(),
            stopped: Semaphore::new(0),
            cause: Mutex::default(),
        })
    }

    /// Records the handler's budget and spawns slow work that runs until `ctx` is done.
    fn start(self: &Arc<Self>, ctx: &Context) {
        *self.budget.lock().unwrap() = ctx.remaining();
        let slow = SlowWork(ctx.clone(), self.clone());
        drop(ctx.spawn(move |_ctx| async move {
            let _slow = slow;
            std::future::pending::<()>().await
        }));
    }
}

/// Records its context's cause when its task is dropped, which happens when the context is
/// done.
struct SlowWork(Context, Arc<Seen>);

impl Drop for SlowWork {
    fn drop(&mut self) {
        *self.1.cause.lock().unwrap() = self.0.cause().map(|c| c.to_string());
        self.1.stopped.add_permits(1);
    }
}

/// The outcome every two-hop run must have, once the client has its answer.
async fn check_two_hops(a: &Seen, b: &Seen, roots: [(Context, CancelHandle); 2]) {
    for hop in [a, b] {
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
    for (root, stop) in roots {
        drop(stop);
        assert_no_leaks(&root).await;
    }
}

type HttpClient = ClientService<Client<HttpConnector, Body>>;

fn http_client() -> HttpClient {
    let client = Client::builder(TokioExecutor::new()).build_http();
    ClientLayer::new()
        .no_grpc_timeout()
        .millis_header(BUDGET_MS)
        .layer(client)
}

/// An HTTP hop, and the one it calls.
struct HttpHop {
    seen: Arc<Seen>,
    next: Option<(SocketAddr, HttpClient)>,
}

/// Hop A calls the next hop after some work of its own; hop B only does slow work.
async fn http_hop(ctx: Context, State(hop): State<Arc<HttpHop>>) -> Result<Response, Error> {
    hop.seen.start(&ctx);
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

async fn serve_http(seen: &Arc<Seen>, next: Option<SocketAddr>, root: &Context) -> SocketAddr {
    let hop = Arc::new(HttpHop {
        seen: seen.clone(),
        next: next.map(|addr| (addr, http_client())),
    });
    let app = Router::new()
        .route("/", get(http_hop))
        .with_state(hop)
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
    let roots = [(); 2].map(|()| Context::background().with_cancel());
    let (a, b) = (Seen::new(), Seen::new());
    let b_addr = serve_http(&b, None, &roots[1].0).await;
    let a_addr = serve_http(&a, Some(b_addr), &roots[0].0).await;

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
    check_two_hops(&a, &b, roots).await;
}

/// The same two hops over gRPC, with a hand-written message and service (no `protoc`).
#[cfg(feature = "tonic")]
mod over_tonic {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use http::uri::PathAndQuery;
    use tonic::body::Body;
    use tonic::transport::Channel;
    use tonic::{Code, Status};
    use tonic_prost::ProstCodec;

    use super::*;

    const CALL: &str = "/test.Hop/Call";

    /// The request and the answer: empty, the budget travels in the headers.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Empty {}

    type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
    type GrpcClient = tonic::client::Grpc<ClientService<Channel>>;

    async fn call(client: &GrpcClient, ctx: &Context) -> Result<Empty, Status> {
        let mut client = client.clone();
        client
            .ready()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        let mut req = tonic::Request::new(Empty {});
        req.set_context(ctx);
        let path = PathAndQuery::from_static(CALL);
        let response = client.unary(req, path, ProstCodec::default()).await?;
        Ok(response.into_inner())
    }

    /// A gRPC hop: the server side of `test.Hop/Call`, written by hand.
    #[derive(Clone)]
    struct GrpcHop {
        seen: Arc<Seen>,
        next: Option<GrpcClient>,
    }

    impl GrpcHop {
        async fn handle(self, req: tonic::Request<Empty>) -> Result<Empty, Status> {
            let ctx = req.context()?;
            self.seen.start(&ctx);
            let Some(next) = &self.next else {
                return Err(ctx.done().await.into());
            };
            ctx.run_until_cancelled(tokio::time::sleep(Duration::from_millis(20)))
                .await?;
            call(next, &ctx).await
        }
    }

    impl tonic::server::NamedService for GrpcHop {
        const NAME: &'static str = "test.Hop";
    }

    impl tonic::server::UnaryService<Empty> for GrpcHop {
        type Response = Empty;
        type Future = BoxFuture<Result<tonic::Response<Empty>, Status>>;

        fn call(&mut self, req: tonic::Request<Empty>) -> Self::Future {
            let hop = self.clone();
            Box::pin(async move { hop.handle(req).await.map(tonic::Response::new) })
        }
    }

    impl tower::Service<http::Request<Body>> for GrpcHop {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let hop = self.clone();
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Empty, Empty>::default());
                Ok(grpc.unary(hop, req).await)
            })
        }
    }

    async fn client(addr: SocketAddr) -> GrpcClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic::client::Grpc::new(ClientLayer::new().layer(channel))
    }

    async fn serve(seen: &Arc<Seen>, next: Option<SocketAddr>, root: &Context) -> SocketAddr {
        let next = match next {
            Some(addr) => Some(client(addr).await),
            None => None,
        };
        let hop = GrpcHop {
            seen: seen.clone(),
            next,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = tonic::transport::Server::builder().layer(ServerLayer::new(root));
        let router = server.add_service(hop);
        let shutdown = root.cancelled_owned();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn two_hops_over_tonic_shrink_the_budget_and_end_in_deadline_exceeded() {
        let roots = [(); 2].map(|()| Context::background().with_cancel());
        let (a, b) = (Seen::new(), Seen::new());
        let b_addr = serve(&b, None, &roots[1].0).await;
        let a_addr = serve(&a, Some(b_addr), &roots[0].0).await;

        let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(300));
        let status = timeout(WATCHDOG, call(&client(a_addr).await, &ctx))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        check_two_hops(&a, &b, roots).await;
    }

    #[tokio::test]
    async fn a_call_whose_context_is_done_is_not_sent_and_reports_its_status() {
        let (root, stop) = Context::background().with_cancel();
        let b = Seen::new();
        let addr = serve(&b, None, &root).await;
        let client = client(addr).await;
        let (ctx, cancel) = Context::background().with_cancel();
        cancel.cancel();
        let status = call(&client, &ctx).await.unwrap_err();
        assert_eq!(status.code(), Code::Cancelled);
        assert_eq!(*b.budget.lock().unwrap(), None, "B was not called");
        drop(stop);
        assert_no_leaks(&root).await;
    }
}
