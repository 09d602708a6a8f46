//! What the server layer costs a minimal axum handler: requests per second over loopback HTTP/1
//! with the layer off, on (a context per request with a deadline from a 30 s default budget,
//! taken by the handler's extractor), and on without a budget (a context per request, no
//! deadline), in rotating rounds in one process, so that all see the same machine. Run with
//! `cargo bench --bench service --features axum [-- ROUNDS]`.
//!
//! Client and servers share one two-worker runtime, as the machine has two cores: the figure
//! is the throughput of the whole loop, of which the server's share is a part. Before the
//! loopback rounds, the layer's own cost per request is timed without a network.
//!
//! `-- KIND N` (KIND one of `off`, `on`, `unbudgeted`) runs N loopback requests of one kind
//! only, and `-- layer`, `-- layer-unbudgeted` or `-- bare` one in-process timing, and nothing
//! else: for instruction counts under `valgrind --tool=callgrind`, which do not depend on the
//! machine's load.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use taskctx::Context;
use taskctx::service::ServerLayer;

/// Requests in flight at once, each on its own keep-alive connection.
const CONCURRENCY: usize = 16;
/// Requests per round.
const REQUESTS: usize = 20_000;

async fn plain() -> &'static str {
    "ok"
}

async fn with_context(ctx: Context) -> &'static str {
    // The handler reads its context, as a real one would.
    if ctx.is_done() { "late" } else { "ok" }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Requests per second for `requests` requests to `addr`.
async fn round(client: &Client<HttpConnector, Body>, addr: SocketAddr, requests: usize) -> f64 {
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..requests / CONCURRENCY {
                    let req = Request::get(format!("http://{addr}/"))
                        .body(Body::empty())
                        .unwrap();
                    let response = client.request(req).await.unwrap();
                    assert!(response.status().is_success());
                    let body = http_body_util::BodyExt::collect(response.into_body());
                    body.await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    requests as f64 / start.elapsed().as_secs_f64()
}

/// The three servers compared.
const KINDS: [&str; 3] = ["off", "on", "unbudgeted"];

/// The layer of `kind`, if it has one.
fn layer(kind: &str, root: &Context) -> Option<ServerLayer> {
    match kind {
        "on" => Some(ServerLayer::new(root).default_timeout(Duration::from_secs(30))),
        "unbudgeted" => Some(ServerLayer::new(root)),
        _ => None,
    }
}

/// Nanoseconds per request through a bare service, with a layer or without: the layer's own
/// cost (and the handler's lookup of its context), without the network's noise.
fn per_request_ns(kind: &'static str) -> f64 {
    use tower::{Layer, Service};
    const CALLS: u32 = 200_000;
    // A multi-thread runtime's worker, where a server's handlers run (and where deadlines go
    // to the workers' own timer wheels).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let task = runtime.spawn(async move {
        let (root, _stop) = Context::background().with_cancel();
        let handler = tower::service_fn(|req: Request<()>| async move {
            let late = req
                .extensions()
                .get::<Context>()
                .is_some_and(Context::is_done);
            Ok::<_, std::convert::Infallible>(http::Response::new(late))
        });
        let mut on = layer(kind, &root).map(|layer| layer.layer(handler));
        let mut off = handler;
        let start = Instant::now();
        for _ in 0..CALLS {
            let response = match &mut on {
                Some(on) => on.call(Request::new(())).await,
                None => off.call(Request::new(())).await,
            };
            assert!(!*response.unwrap().body());
        }
        start.elapsed().as_nanos() as f64 / f64::from(CALLS)
    });
    runtime.block_on(task).unwrap()
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the count of rounds.
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .filter_map(|arg| arg.parse::<usize>().ok())
        .next()
        .unwrap_or(7);
    for (arg, kind) in [
        ("bare", "off"),
        ("layer", "on"),
        ("layer-unbudgeted", "unbudgeted"),
    ] {
        if args.iter().any(|a| a == arg) {
            println!("{arg}: {:.0} ns/request", per_request_ns(kind));
            return;
        }
    }
    let only = args
        .iter()
        .find_map(|arg| KINDS.into_iter().find(|k| k == arg));
    for i in 0..if only.is_some() { 0 } else { rounds.min(5) } {
        let ns = KINDS.map(per_request_ns);
        println!(
            "in-process round {i}: layer off {:.0}, on {:.0}, unbudgeted {:.0} ns/request",
            ns[0], ns[1], ns[2]
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (root, _stop) = Context::background().with_cancel();
        let mut addrs = Vec::new();
        for kind in KINDS {
            let app = match layer(kind, &root) {
                Some(layer) => Router::new().route("/", get(with_context)).layer(layer),
                None => Router::new().route("/", get(plain)),
            };
            addrs.push(serve(app).await);
        }
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(CONCURRENCY)
            .build_http();
        if let Some(only) = only {
            let addr = addrs[KINDS.iter().position(|k| *k == only).unwrap()];
            let rps = round(&client, addr, rounds).await;
            println!("{rounds} requests, layer {only}: {rps:.0} req/s");
            return;
        }
        // Warm up each: connections, allocator, caches.
        for &addr in &addrs {
            round(&client, addr, REQUESTS).await;
        }
        let mut rps = [Vec::new(), Vec::new(), Vec::new()];
        for i in 0..rounds {
            // Rotate which goes first, so that none always follows another.
            for k in 0..KINDS.len() {
                let kind = (i + k) % KINDS.len();
                rps[kind].push(round(&client, addrs[kind], REQUESTS).await);
            }
            println!(
                "round {i}: req/s off {:>6.0}, on {:>6.0}, unbudgeted {:>6.0}; on/off {:.3}, unbudgeted/off {:.3}",
                rps[0][i],
                rps[1][i],
                rps[2][i],
                rps[1][i] / rps[0][i],
                rps[2][i] / rps[0][i]
            );
        }
        for kind in 1..KINDS.len() {
            let ratios: Vec<f64> = (0..rounds).map(|i| rps[kind][i] / rps[0][i]).collect();
            let (lo, hi) = range(&ratios);
            println!(
                "{}/off: median {:.3} (range {lo:.3}-{hi:.3}); medians {:.0} against {:.0} req/s",
                KINDS[kind],
                median(&ratios),
                median(&rps[kind]),
                median(&rps[0])
            );
        }
    });
}
