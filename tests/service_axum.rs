//! axum servers with the server layer, on loopback with a real HTTP client: a client that
//! hangs up stops the handler's spawned work (a task group's members too, which see why), a
//! spent budget is a 504, a shutdown cancels the
//! requests in flight; nothing is left registered after each. Real time: every wait has a
//! watchdog, and no assertion is about durations.
#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use taskctx::service::ServerLayer;
use taskctx::testing::assert_no_leaks;
use taskctx::{Context, Error, TaskGroup};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WATCHDOG: Duration = Duration::from_secs(20);

/// What the handlers saw: how many started, and the cause each spawned task stopped with.
/// `started` and `stopped` gain a permit each time a handler starts or a task stops.
struct Probe {
    started: Semaphore,
    stopped: Semaphore,
    causes: Mutex<Vec<String>>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            started: Semaphore::new(0),
            stopped: Semaphore::new(0),
            causes: Mutex::default(),
        }
    }
}

/// Waits (under the watchdog) until `n` permits have been added.
async fn count(counter: &Semaphore, n: u32, what: &str) {
    timeout(WATCHDOG, counter.acquire_many(n))
        .await
        .unwrap_or_else(|_| panic!("{what}: watchdog"))
        .unwrap()
        .forget();
}

impl Probe {
    fn causes(&self) -> Vec<String> {
        self.causes.lock().unwrap().clone()
    }
}

/// Records its context's cause when dropped: a spawned task's future is dropped when its
/// context is done.
struct Recorder(Context, Arc<Probe>);

impl Drop for Recorder {
    fn drop(&mut self) {
        let cause = self
            .0
            .cause()
            .map_or("not done".to_owned(), |c| c.to_string());
        self.1.causes.lock().unwrap().push(cause);
        self.1.stopped.add_permits(1);
    }
}

/// Spawns work that runs until its context is done, then waits for the request's context.
async fn wait_for_done(ctx: Context, State(probe): State<Arc<Probe>>) -> Result<(), Error> {
    let recorder = Recorder(ctx.clone(), probe.clone());
    let _work = ctx.spawn(move |_ctx| async move {
        let _recorder = recorder;
        std::future::pending::<()>().await
    });
    probe.started.add_permits(1);
    Err(ctx.done().await)
}

fn app(probe: &Arc<Probe>, layer: ServerLayer) -> Router {
    Router::new()
        .route("/", get(wait_for_done))
        .with_state(probe.clone())
        .layer(layer)
}

async fn serve(app: Router, shutdown: CancellationToken) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    (addr, server)
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get_request(addr: SocketAddr, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get(format!("http://{addr}/"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn axum_client_hang_up_cancels_spawned_work() {
    let (root, _stop) = Context::background().with_cancel();
    let probe = Arc::new(Probe::default());
    let shutdown = CancellationToken::new();
    let (addr, server) = serve(app(&probe, ServerLayer::new(&root)), shutdown.clone()).await;

    let call = tokio::spawn(client().request(get_request(addr, &[])));
    count(&probe.started, 1, "the handler started").await;
    call.abort(); // the client hangs up
    count(&probe.stopped, 1, "the spawned work stopped").await;
    assert_eq!(
        probe.causes(),
        ["the client went away before the response was ready"]
    );

    shutdown.cancel();
    timeout(WATCHDOG, server).await.unwrap().unwrap();
    assert_no_leaks(&root).await;
}

#[tokio::test]
async fn axum_spent_budget_is_a_504() {
    let (root, _stop) = Context::background().with_cancel();
    let probe = Arc::new(Probe::default());
    let shutdown = CancellationToken::new();
    let (addr, server) = serve(app(&probe, ServerLayer::new(&root)), shutdown.clone()).await;
    let client = client();

    let response = timeout(
        WATCHDOG,
        client.request(get_request(addr, &[("grpc-timeout", "50m")])),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "context deadline exceeded");
    count(&probe.stopped, 1, "the spawned work stopped").await;
    assert_eq!(probe.causes(), ["context deadline exceeded"]);

    // Already spent: answered without calling the handler.
    let response = timeout(
        WATCHDOG,
        client.request(get_request(addr, &[("grpc-timeout", "0m")])),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(probe.causes().len(), 1, "the handler was not called");

    shutdown.cancel();
    timeout(WATCHDOG, server).await.unwrap().unwrap();
    assert_no_leaks(&root).await;
}

#[tokio::test]
async fn axum_shutdown_cancels_the_requests_in_flight() {
    const IN_FLIGHT: usize = 3;
    let (base, _stop) = Context::background().with_cancel();
    let shutdown = CancellationToken::new();
    let root = base.with_token_cause(shutdown.clone(), "shutting down");
    let probe = Arc::new(Probe::default());
    let layer = ServerLayer::new(&root).canceled_status(StatusCode::SERVICE_UNAVAILABLE);
    drop(root);
    let (addr, server) = serve(app(&probe, layer), shutdown.clone()).await;
    let client = client();

    let calls: Vec<_> = (0..IN_FLIGHT)
        .map(|_| tokio::spawn(client.request(get_request(addr, &[]))))
        .collect();
    count(&probe.started, IN_FLIGHT as u32, "the handlers started").await;
    shutdown.cancel();
    for call in calls {
        let response = timeout(WATCHDOG, call).await.unwrap().unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    timeout(WATCHDOG, server).await.unwrap().unwrap();
    count(&probe.stopped, IN_FLIGHT as u32, "the spawned work stopped").await;
    assert_eq!(probe.causes(), vec!["shutting down"; IN_FLIGHT]);
    assert_no_leaks(&base).await;
}

/// Starts a task group whose members each run until their context is done, then waits for it.
async fn fan_out(ctx: Context, State(probe): State<Arc<Probe>>) -> Result<(), Error> {
    let group = TaskGroup::new(&ctx);
    for n in 0..3 {
        let probe = probe.clone();
        group
            .spawn(format!("member {n}"), move |ctx| async move {
                let _recorder = Recorder(ctx.clone(), probe.clone());
                probe.started.add_permits(1);
                ctx.done().await;
                Ok::<_, Error>(())
            })
            .unwrap();
    }
    group
        .wait()
        .await
        .into_result()
        .map_err(|_| Error::Canceled)
}

/// The request's context is cancelled before the handler's future (and the group it owns) is
/// dropped, so the members see why they stop.
#[tokio::test]
async fn a_client_hang_up_stops_a_handlers_task_group_with_the_cause_client_gone() {
    let (root, _stop) = Context::background().with_cancel();
    let probe = Arc::new(Probe::default());
    let app = Router::new()
        .route("/", get(fan_out))
        .with_state(probe.clone())
        .layer(ServerLayer::new(&root));
    let shutdown = CancellationToken::new();
    let (addr, server) = serve(app, shutdown.clone()).await;

    let call = tokio::spawn(client().request(get_request(addr, &[])));
    count(&probe.started, 3, "the members started").await;
    call.abort(); // the client hangs up
    count(&probe.stopped, 3, "the members stopped").await;
    assert_eq!(
        probe.causes(),
        vec!["the client went away before the response was ready"; 3]
    );

    shutdown.cancel();
    timeout(WATCHDOG, server).await.unwrap().unwrap();
    assert_no_leaks(&root).await;
}
