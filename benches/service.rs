//! What the server layer costs a minimal axum handler: requests per second over loopback HTTP/1
//! with the layer on (a context per request, with a deadline from a default budget, taken by
//! the handler's extractor) and off, in alternating rounds in one process, so that both see
//! the same machine. Run with `cargo bench --bench service --features axum [-- ROUNDS]`.
//!
//! Client and servers share one two-worker runtime, as the machine has two cores: the figure
//! is the throughput of the whole loop, of which the server's share is a part. Before the
//! loopback rounds, the layer's own cost per request is timed without a network.
//!
//! `-- on N` or `-- off N` runs N loopback requests of one kind only, and `-- layer` or
//! `-- bare` one in-process timing, and nothing else: for instruction counts under
//! `valgrind --tool=callgrind`, which do not depend on the machine's load.

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

/// Nanoseconds per request through a bare service, with the layer (and the handler's
/// lookup of its context) or without: the layer's own cost, without the network's noise.
fn per_request_ns(layered: bool) -> f64 {
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
        let mut on = ServerLayer::new(&root)
            .default_timeout(Duration::from_secs(30))
            .layer(handler);
        let mut off = handler;
        let start = Instant::now();
        for _ in 0..CALLS {
            let response = if layered {
                on.call(Request::new(())).await
            } else {
                off.call(Request::new(())).await
            };
            assert!(!*response.unwrap().body());
        }
        start.elapsed().as_nanos() as f64 / f64::from(CALLS)
    });
    runtime.block_on(task).unwrap()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number is the count of rounds.
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .filter_map(|arg| arg.parse::<usize>().ok())
        .next()
        .unwrap_or(7);
    let only = args.iter().find(|arg| *arg == "on" || *arg == "off");
    if let Some(kind) = args.iter().find(|arg| *arg == "layer" || *arg == "bare") {
        let ns = per_request_ns(kind == "layer");
        println!("{kind}: {ns:.0} ns/request");
        return;
    }
    for i in 0..if only.is_some() { 0 } else { rounds.min(5) } {
        let (off, on) = (per_request_ns(false), per_request_ns(true));
        println!("in-process round {i}: layer off {off:.0} ns/request, on {on:.0} ns/request");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (root, _stop) = Context::background().with_cancel();
        let off = serve(Router::new().route("/", get(plain))).await;
        let layer = ServerLayer::new(&root).default_timeout(Duration::from_secs(30));
        let on = serve(Router::new().route("/", get(with_context)).layer(layer)).await;
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(CONCURRENCY)
            .build_http();
        if let Some(only) = only {
            let addr = if only == "on" { on } else { off };
            let rps = round(&client, addr, rounds).await;
            println!("{rounds} requests, layer {only}: {rps:.0} req/s");
            return;
        }
        // Warm up both: connections, allocator, caches.
        round(&client, off, REQUESTS).await;
        round(&client, on, REQUESTS).await;

        let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            // Alternate which goes first, so that neither always follows the other.
            let (a, b) = if i % 2 == 0 { (off, on) } else { (on, off) };
            let first = round(&client, a, REQUESTS).await;
            let second = round(&client, b, REQUESTS).await;
            let (off_rps, on_rps) = if i % 2 == 0 {
                (first, second)
            } else {
                (second, first)
            };
            println!(
                "round {i}: layer off {off_rps:>8.0} req/s, on {on_rps:>8.0} req/s, on/off {:.3}",
                on_rps / off_rps
            );
            offs.push(off_rps);
            ons.push(on_rps);
            ratios.push(on_rps / off_rps);
        }
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "median: layer off {:.0} req/s, on {:.0} req/s; on/off median {:.3} (range {lo:.3}-{hi:.3})",
            median(&mut offs),
            median(&mut ons),
            median(&mut ratios)
        );
    });
}
