//! A librdkafka mock cluster (3 brokers) as a process, for benchmarks and manual
//! runs of `danmaku serve` with `kafka.brokers` when no real broker is at hand.
//!
//! ```text
//! cargo run --release -p danmaku-core --example mock_kafka -- [TOPIC] [PARTITIONS]
//! ```
//!
//! Creates TOPIC (default `danmaku.live`) with PARTITIONS (default 12) partitions,
//! replicated on the 3 brokers, prints `bootstrap=<servers>` on stdout, and runs
//! until it is killed (SIGINT/SIGTERM). Not a real Kafka: everything lives in this
//! process's memory and is gone when it exits.

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let topic = args.next().unwrap_or_else(|| "danmaku.live".into());
    let partitions: i32 = args.next().and_then(|p| p.parse().ok()).unwrap_or(12);
    let mock = rdkafka::mocking::MockCluster::new(3).expect("librdkafka mock cluster");
    mock.create_topic(&topic, partitions, 3)
        .expect("create the topic");
    println!("bootstrap={}", mock.bootstrap_servers());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
