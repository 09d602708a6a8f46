//! A tour of taskctx: runs every other example in order, each under a header.
//!
//! `cargo run --example tour` is the first command in the README. Each section is also an
//! example of its own (`cargo run --example leaky_counter`, and so on), with the Go problem it
//! answers described at the top of its file.

use tokio::time::Instant;

#[path = "detached.rs"]
mod detached;
#[path = "graceful_shutdown.rs"]
mod graceful_shutdown;
#[path = "leaky_counter.rs"]
mod leaky_counter;
#[path = "monitor.rs"]
mod monitor;
#[cfg(feature = "axum")]
#[path = "server.rs"]
mod server;
#[path = "timeout.rs"]
mod timeout;
#[path = "values.rs"]
mod values;

#[tokio::main]
async fn main() {
    let start = Instant::now();
    println!("taskctx: Go's context package for tokio. Short demos follow;");
    println!("each is also an example of its own: cargo run --example <name>.");

    header(
        "leaky_counter",
        "a generator that leaks in Go stops with its context",
    );
    leaky_counter::run().await;
    header(
        "timeout",
        "work raced against a 50 ms timeout, helpers included",
    );
    timeout::run().await;
    header(
        "monitor",
        "knowing that a worker has stopped, without sleeping",
    );
    monitor::run().await;
    header(
        "detached",
        "background work that outlives its request (Go's WithoutCancel)",
    );
    detached::run().await;
    header("values", "request-scoped values with typed keys");
    values::run().await;
    header(
        "graceful_shutdown",
        "a worker pool stopped within a grace, with a report of how each task stopped",
    );
    graceful_shutdown::run().await;
    #[cfg(feature = "axum")]
    {
        header(
            "server",
            "a budget that crosses two services, and a client that hangs up",
        );
        server::run().await;
    }
    #[cfg(not(feature = "axum"))]
    println!(
        "\n(With `--features axum`, the tour also runs `server`: a deadline that crosses two \
         services over loopback.)"
    );

    let demos = if cfg!(feature = "axum") { 7 } else { 6 };
    println!(
        "\nAll {demos} demos ran in {:.0} ms; each checks its outcomes with asserts, and all passed.",
        start.elapsed().as_secs_f64() * 1e3
    );
}

fn header(name: &str, what: &str) {
    println!("\n== {name}: {what}");
}
