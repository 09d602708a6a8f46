//! A deadline that crosses processes, and a client that hangs up.
//!
//! Go's gRPC sends `ctx.Deadline()` along with every call; a plain tower or axum service
//! neither reads a budget nor sends one on. Here a client with 300 ms to spare calls service
//! A, which calls service B: each hop's `ServerLayer` turns the incoming `grpc-timeout` into
//! its handler's context, each `ClientLayer` sends the remaining budget on, so B gets less
//! than A did and B's slow work stops when the client's budget runs out. Then a client that
//! hangs up: the handler's spawned work stops at once, with a cause that says why. Then a
//! shutdown. Run with `cargo run --example server --features axum`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use taskctx::service::{ClientLayer, ClientService, RequestExt, ServerLayer};
use taskctx::{Context, Error};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceExt};

type HttpClient = ClientService<Client<HttpConnector, Body>>;

#[allow(dead_code)] // unused if tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

pub async fn run() {
    // The glue: a root context that the shutdown cancels, and the layer.
    let shutdown = CancellationToken::new();
    let root = Context::background().with_token_cause(shutdown.clone(), "shutting down");
    let layer = ServerLayer::new(&root)
        .max_timeout(Duration::from_secs(30))
        .canceled_status(http::StatusCode::SERVICE_UNAVAILABLE);

    // B says why its slow work stopped on this channel, so that each step can check it.
    let (stopped, mut why) = tokio::sync::mpsc::unbounded_channel();
    let b = serve(
        Router::new().route("/", get(slow)).with_state(stopped),
        &layer,
        &shutdown,
    )
    .await;
    let a = serve(
        Router::new().route("/", get(forward)).with_state(b),
        &layer,
        &shutdown,
    )
    .await;

    println!("client: calling A with a budget of 300 ms");
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(300));
    let err = call(a, &ctx).await.unwrap_err();
    println!("client: {err}");
    assert_eq!(err.downcast_ref::<Error>(), Some(&Error::DeadlineExceeded));
    // B's deadline is A's budget less the trip, so B's work stops at its own deadline or, if A
    // gives up first, because A went away: either way, by the client's budget.
    let why_b = why.recv().await.unwrap();
    assert!(
        why_b.contains("deadline exceeded") || why_b.contains("client went away"),
        "{why_b}"
    );

    println!("\nclient: calling B with no budget, hanging up after 100 ms");
    let (ctx, hang_up) = Context::background().with_cancel();
    let in_flight = tokio::spawn(async move { call(b, &ctx).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    hang_up.cancel();
    let err = in_flight.await.unwrap().unwrap_err();
    println!("client: {err}");
    assert_eq!(err.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert!(why.recv().await.unwrap().contains("client went away"));

    println!("\nshutting down with a call in flight");
    let (ctx, _cancel) = Context::background().with_cancel();
    let in_flight = tokio::spawn(async move { call(b, &ctx).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let status = in_flight.await.unwrap().unwrap();
    println!("client: answered {status}");
    assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(why.recv().await.unwrap().contains("shutting down"));
}

/// Service A: some work of its own, then a call to B under the request's context.
async fn forward(ctx: Context, State(b): State<SocketAddr>) -> Result<Response, Error> {
    println!("A: budget {}", budget(&ctx));
    ctx.run_until_cancelled(tokio::time::sleep(Duration::from_millis(50)))
        .await?;
    match call(b, &ctx).await {
        Ok(status) => Ok(status.into_response()),
        Err(err) => Err(*err.downcast::<Error>().expect("only the context fails")),
    }
}

/// Service B: slow work, spawned under the request's context.
async fn slow(ctx: Context, State(stopped): State<Stopped>) -> Result<&'static str, Error> {
    println!("B: budget {}", budget(&ctx));
    let work = ctx.spawn(|ctx| async move {
        let _report = Report(ctx, stopped);
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    work.await?;
    Ok("done")
}

type Stopped = tokio::sync::mpsc::UnboundedSender<String>;

/// Says why the slow work stopped, when it is dropped.
struct Report(Context, Stopped);

impl Drop for Report {
    fn drop(&mut self) {
        let why = match self.0.cause() {
            Some(cause) => format!("stopped: {cause}"),
            None => "finished".to_owned(),
        };
        println!("B: slow work {why}");
        let _ = self.1.send(why);
    }
}

fn budget(ctx: &Context) -> String {
    match ctx.remaining() {
        Some(left) => format!("{:.1} ms", left.as_secs_f64() * 1e3),
        None => "unbounded".to_owned(),
    }
}

async fn call(
    addr: SocketAddr,
    ctx: &Context,
) -> Result<http::StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let mut client: HttpClient =
        ClientLayer::new().layer(Client::builder(TokioExecutor::new()).build_http());
    let mut req = Request::get(format!("http://{addr}/")).body(Body::empty())?;
    req.set_context(ctx);
    Ok(client.ready().await?.call(req).await?.status())
}

async fn serve(app: Router, layer: &ServerLayer, shutdown: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.layer(layer.clone());
    let shutdown = shutdown.clone().cancelled_owned();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap();
    });
    addr
}
