//! Work a handler starts through a task group stops when the client goes away, and sees why:
//! axum on loopback with a real HTTP client. Real time: every wait has a watchdog, and no
//! assertion is about durations.
#![cfg(feature = "axum")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use taskctx::service::ServerLayer;
use taskctx::testing::assert_no_leaks;
use taskctx::{Context, Error, TaskGroup};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WATCHDOG: Duration = Duration::from_secs(20);
const MEMBERS: u32 = 3;

struct Probe {
    started: Semaphore,
    stopped: Semaphore,
    /// The cause each member's context had when the member's future was dropped.
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

/// Records its context's cause when dropped.
struct Recorder(Context, Arc<Probe>);

impl Drop for Recorder {
    fn drop(&mut self) {
        let cause = self.0.cause().map_or("not done".into(), |c| c.to_string());
        self.1.causes.lock().unwrap().push(cause);
        self.1.stopped.add_permits(1);
    }
}

/// Starts a group of members that each run until their context is done, then waits for it.
async fn fan_out(ctx: Context, State(probe): State<Arc<Probe>>) -> Result<(), Error> {
    let group = TaskGroup::new(&ctx);
    for n in 0..MEMBERS {
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

async fn count(counter: &Semaphore, n: u32, what: &str) {
    timeout(WATCHDOG, counter.acquire_many(n))
        .await
        .unwrap_or_else(|_| panic!("{what}: watchdog"))
        .unwrap()
        .forget();
}

#[tokio::test]
async fn a_client_hang_up_stops_a_handlers_task_group_with_the_cause_client_gone() {
    let (root, _stop) = Context::background().with_cancel();
    let probe = Arc::new(Probe::default());
    let app = Router::new()
        .route("/", get(fan_out))
        .with_state(probe.clone())
        .layer(ServerLayer::new(&root));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );

    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let request = Request::get(format!("http://{addr}/"))
        .body(Body::empty())
        .unwrap();
    let call = tokio::spawn(client.request(request));
    count(&probe.started, MEMBERS, "the members started").await;
    call.abort(); // the client hangs up
    count(&probe.stopped, MEMBERS, "the members stopped").await;
    assert_eq!(
        *probe.causes.lock().unwrap(),
        vec!["the client went away before the response was ready"; MEMBERS as usize]
    );

    shutdown.cancel();
    timeout(WATCHDOG, server).await.unwrap().unwrap().unwrap();
    assert_no_leaks(&root).await;
}
