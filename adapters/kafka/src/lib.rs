//! The Kafka Bus (rdkafka, librdkafka underneath): [`KafkaBus`] publishes with an
//! idempotent producer (`acks=all`, key = room, so a room always lands in one
//! partition) and answers only once the broker acknowledged the record; its
//! consumers are members of a consumer group that commit offsets only when told to
//! (after the SliceStore write). [`TestKafka`] is the harness of the tests: a
//! librdkafka mock cluster of 3 brokers in this process, or the external brokers of
//! `DANMAKU_TEST_KAFKA`.
//!
//! Rebalances: the writer drives one consumer sequentially (poll, write, commit,
//! poll again), and librdkafka runs rebalance callbacks only inside a poll. So when a
//! partition is revoked, every record handed out before the current poll has been
//! written and committed already; records of a revoked partition fetched during the
//! poll that saw the revocation are dropped from its answer (the new owner reads
//! them again from the committed offset). Assigned partitions resume from the
//! committed offset. A record written twice across a rebalance lands with the same
//! seq (its offset), which the SliceStore and the hubs ignore: nothing visible to
//! clients is duplicated.
//!
//! Metrics: `danmaku_kafka_produce_seconds` (histogram),
//! `danmaku_kafka_produce_errors_total`, `danmaku_kafka_consumer_lag{partition}`
//! (gauge, from librdkafka statistics), `danmaku_kafka_commit_errors_total`,
//! `danmaku_kafka_rebalances_total{kind}`, `danmaku_kafka_client_errors_total`.

use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::config::KafkaSettings;
use danmaku_core::ports::{Bus, BusConsumer, BusError, BusRecord, RecordPosition};
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a `ready()` answer is reused (a readiness probe must not flood brokers).
const READY_CACHE: Duration = Duration::from_millis(1000);
/// Longest metadata / watermark / commit request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the Kafka adapter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("kafka topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

/// Routes librdkafka's logs and errors to `tracing`, and its statistics to metrics.
#[derive(Clone, Default)]
struct Observer {
    /// Partitions currently assigned to this client (consumers only).
    assignment: Arc<Assignment>,
}

/// What a consumer owns, shared between the rebalance callback and `poll`.
#[derive(Default)]
struct Assignment {
    inner: Mutex<AssignmentState>,
}

#[derive(Default)]
struct AssignmentState {
    assigned: BTreeSet<i32>,
    /// Bumped at every revocation.
    epoch: u64,
    /// (epoch, partition) of recent revocations (bounded).
    revoked: Vec<(u64, i32)>,
}

impl Assignment {
    fn epoch(&self) -> u64 {
        self.inner.lock().expect("assignment lock").epoch
    }

    fn assigned(&self) -> BTreeSet<i32> {
        self.inner.lock().expect("assignment lock").assigned.clone()
    }

    /// Partitions revoked after `epoch`.
    fn revoked_since(&self, epoch: u64) -> HashSet<i32> {
        let st = self.inner.lock().expect("assignment lock");
        st.revoked
            .iter()
            .filter(|(e, _)| *e > epoch)
            .map(|(_, p)| *p)
            .collect()
    }
}

impl ClientContext for Observer {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn stats(&self, stats: Statistics) {
        for topic in stats.topics.values() {
            for (p, part) in &topic.partitions {
                // -1 is librdkafka's "internal/unassigned partition"; skip partitions
                // this consumer does not fetch.
                if *p < 0 || part.fetch_state == "none" || part.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!("danmaku_kafka_consumer_lag", "partition" => p.to_string())
                    .set(part.consumer_lag as f64);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker disconnects and the like: librdkafka retries on its own.
        metrics::counter!("danmaku_kafka_client_errors_total").increment(1);
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for Observer {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            metrics::counter!("danmaku_kafka_rebalances_total", "kind" => "revoke").increment(1);
            let mut st = self.assignment.inner.lock().expect("assignment lock");
            st.epoch += 1;
            let epoch = st.epoch;
            for e in tpl.elements() {
                st.assigned.remove(&e.partition());
                st.revoked.push((epoch, e.partition()));
            }
            let excess = st.revoked.len().saturating_sub(4096);
            st.revoked.drain(..excess);
            tracing::info!(partitions = tpl.count(), "kafka partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                metrics::counter!("danmaku_kafka_rebalances_total", "kind" => "assign")
                    .increment(1);
                let mut st = self.assignment.inner.lock().expect("assignment lock");
                for e in tpl.elements() {
                    st.assigned.insert(e.partition());
                }
                tracing::info!(partitions = ?st.assigned, "kafka partitions assigned");
            }
            Rebalance::Error(e) => {
                metrics::counter!("danmaku_kafka_rebalances_total", "kind" => "error").increment(1);
                tracing::warn!(error = %e, "kafka rebalance error");
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers)
        .set("client.id", "danmaku")
        // Small requests (one comment, one commit) must not wait for a delayed ACK.
        .set("socket.nagle.disable", "true")
        .set("socket.connection.setup.timeout.ms", "5000");
    if settings.statistics_interval_ms > 0 {
        c.set(
            "statistics.interval.ms",
            settings.statistics_interval_ms.to_string(),
        );
    }
    c
}

/// The Kafka Bus: one producer shared by every publish, a new consumer per
/// [`Bus::consumer`] call.
pub struct KafkaBus {
    settings: KafkaSettings,
    producer: FutureProducer<Observer>,
    ready: Mutex<Option<(Instant, bool)>>,
}

impl KafkaBus {
    /// Creates the producer (it connects in the background) and, with
    /// `kafka.create_topic`, the topic when it is missing.
    pub async fn new(settings: &KafkaSettings) -> Result<Self, KafkaSetupError> {
        let mut c = base_config(settings);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", settings.linger_ms.to_string())
            .set(
                "message.timeout.ms",
                settings.message_timeout_ms.to_string(),
            )
            .set(
                "request.timeout.ms",
                settings.message_timeout_ms.clamp(1_000, 30_000).to_string(),
            )
            .set("compression.type", &settings.compression)
            // The Java client's partitioner, so producers in other languages agree on
            // a room's partition.
            .set("partitioner", "murmur2_random");
        for (k, v) in &settings.producer.0 {
            c.set(k, v);
        }
        let producer: FutureProducer<Observer> = c.create_with_context(Observer::default())?;
        let bus = Self {
            settings: settings.clone(),
            producer,
            ready: Mutex::new(None),
        };
        if settings.create_topic {
            create_topic(
                settings,
                &settings.topic,
                settings.partitions as i32,
                settings.replication_factor as i32,
            )
            .await?;
        }
        match bus.partition_count().await {
            Ok(n) => tracing::info!(topic = %settings.topic, partitions = n, "kafka bus ready"),
            Err(e) => tracing::warn!(
                topic = %settings.topic,
                error = %e,
                "kafka topic not reachable yet; /readyz stays failing until it is"
            ),
        }
        Ok(bus)
    }

    /// Partitions of the topic, from the brokers' metadata.
    pub async fn partition_count(&self) -> Result<usize, BusError> {
        let producer = self.producer.clone();
        let topic = self.settings.topic.clone();
        tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(|e| BusError::unavailable("metadata").with_source(e))?;
            let t = md
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .ok_or_else(|| BusError::unavailable(format!("topic {topic} missing")))?;
            if let Some(e) = t.error() {
                return Err(BusError::unavailable(format!("topic {topic}: {e:?}")));
            }
            if t.partitions().is_empty() {
                return Err(BusError::unavailable(format!(
                    "topic {topic} has no partitions"
                )));
            }
            Ok(t.partitions().len())
        })
        .await
        .map_err(|e| BusError::other("blocking task").with_source(e))?
    }
}

/// Creates `topic` unless it exists (the admin API; not available on the mock
/// cluster, whose topics [`TestKafka`] creates).
async fn create_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<Observer> =
        base_config(settings).create_with_context(Observer::default())?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = admin.create_topics([&new], &opts).await?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, replication, "kafka topic created"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaSetupError::Topic {
                    topic: name,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, room: &str, payload: Bytes) -> Result<RecordPosition, BusError> {
        let started = Instant::now();
        let record = FutureRecord::to(&self.settings.topic)
            .key(room.as_bytes())
            .payload(payload.as_ref());
        // Queue timeout 0: a full local queue fails at once (503) instead of waiting;
        // once queued, `message.timeout.ms` bounds the wait for the acknowledgement.
        // librdkafka may answer late for a record in flight when its broker vanished,
        // so the wait is also bounded here (the record may then still land: the caller
        // reported failure, never a success that is not true).
        let bound = Duration::from_millis(self.settings.message_timeout_ms + 500);
        let sent =
            match tokio::time::timeout(bound, self.producer.send(record, Duration::ZERO)).await {
                Ok(r) => r,
                Err(_) => {
                    metrics::counter!("danmaku_kafka_produce_errors_total").increment(1);
                    return Err(BusError::unavailable(format!(
                        "no acknowledgement within {} ms",
                        bound.as_millis()
                    )));
                }
            };
        match sent {
            Ok(d) => {
                metrics::histogram!("danmaku_kafka_produce_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(RecordPosition {
                    partition: d.partition as u32,
                    offset: d.offset as u64,
                })
            }
            Err((e, _)) => {
                metrics::counter!("danmaku_kafka_produce_errors_total").increment(1);
                Err(BusError::unavailable("produce").with_source(e))
            }
        }
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        let s = &self.settings;
        let mut c = base_config(s);
        c.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", s.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (s.session_timeout_ms / 4).max(100).to_string(),
            )
            .set("max.poll.interval.ms", s.max_poll_interval_ms.to_string())
            .set("fetch.wait.max.ms", s.fetch_wait_max_ms.to_string())
            // A full prefetch queue pauses fetching for this long: 1 s by default,
            // which a writer emptying the queue quickly sees as a stall.
            .set("fetch.queue.backoff.ms", "10")
            .set("fetch.min.bytes", "1");
        for (k, v) in &s.consumer.0 {
            c.set(k, v);
        }
        let observer = Observer::default();
        let assignment = observer.assignment.clone();
        let consumer: StreamConsumer<Observer> = c
            .create_with_context(observer)
            .map_err(|e| BusError::other("create consumer").with_source(e))?;
        consumer
            .subscribe(&[&s.topic])
            .map_err(|e| BusError::other("subscribe").with_source(e))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            assignment,
            topic: s.topic.clone(),
        }))
    }

    async fn ready(&self) -> bool {
        if let Some((at, ok)) = *self.ready.lock().expect("ready lock") {
            if at.elapsed() < READY_CACHE {
                return ok;
            }
        }
        let producer = self.producer.clone();
        let topic = self.settings.topic.clone();
        let ok = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_millis(800))
                .map(|md| {
                    md.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        *self.ready.lock().expect("ready lock") = Some((Instant::now(), ok));
        ok
    }
}

/// One member of a consumer group.
struct KafkaConsumer {
    /// `None` only while dropping.
    consumer: Option<Arc<StreamConsumer<Observer>>>,
    assignment: Arc<Assignment>,
    topic: String,
}

impl KafkaConsumer {
    fn inner(&self) -> &Arc<StreamConsumer<Observer>> {
        self.consumer.as_ref().expect("consumer is open")
    }
}

fn to_record(m: &rdkafka::message::BorrowedMessage<'_>) -> BusRecord {
    BusRecord {
        position: RecordPosition {
            partition: m.partition() as u32,
            offset: m.offset() as u64,
        },
        room: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    }
}

#[async_trait]
impl BusConsumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<BusRecord>, BusError> {
        let max = max.max(1);
        let consumer = self.inner().clone();
        let epoch = self.assignment.epoch();
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        // Wait for the first record; then take whatever is already fetched, without
        // waiting, up to `max`.
        while out.is_empty() {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => out.push(to_record(&m)),
                Ok(Err(e)) => {
                    // Transport errors and the like: librdkafka reconnects by itself.
                    tracing::debug!(error = %e, "kafka consume error");
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        while !out.is_empty() && out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(to_record(&m)),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "kafka consume error");
                    break;
                }
                None => break,
            }
        }
        let revoked = self.assignment.revoked_since(epoch);
        if !revoked.is_empty() {
            let before = out.len();
            out.retain(|r| !revoked.contains(&(r.position.partition as i32)));
            tracing::info!(
                dropped = before - out.len(),
                "records of partitions revoked during this poll left to their new owner"
            );
        }
        Ok(out)
    }

    async fn commit(&mut self, upto: &[RecordPosition]) -> Result<(), BusError> {
        if upto.is_empty() {
            return Ok(());
        }
        let assigned = self.assignment.assigned();
        let mut tpl = TopicPartitionList::new();
        let mut skipped = 0;
        for pos in upto {
            // A partition revoked since the poll belongs to another member now; its
            // new owner redoes these records (idempotently) from the committed offset.
            if !assigned.contains(&(pos.partition as i32)) {
                skipped += 1;
                continue;
            }
            tpl.add_partition_offset(
                &self.topic,
                pos.partition as i32,
                Offset::Offset(pos.offset as i64 + 1),
            )
            .map_err(|e| BusError::other("commit offsets").with_source(e))?;
        }
        if skipped > 0 {
            tracing::info!(skipped, "offsets of revoked partitions not committed");
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let consumer = self.inner().clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| BusError::other("blocking task").with_source(e))?
            .map_err(|e| {
                metrics::counter!("danmaku_kafka_commit_errors_total").increment(1);
                BusError::unavailable("commit").with_source(e)
            })
    }

    async fn lag(&mut self) -> Result<u64, BusError> {
        let consumer = self.inner().clone();
        let topic = self.topic.clone();
        let assigned = self.assignment.assigned();
        tokio::task::spawn_blocking(move || {
            let position = consumer
                .position()
                .map_err(|e| BusError::unavailable("position").with_source(e))?;
            let mut lag = 0u64;
            let mut unknown = Vec::new();
            for p in &assigned {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, *p, REQUEST_TIMEOUT)
                    .map_err(|e| BusError::unavailable("watermarks").with_source(e))?;
                let at = position
                    .find_partition(&topic, *p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                match at {
                    Some(o) => lag += (high - o).max(0) as u64,
                    None => unknown.push((*p, high)),
                }
            }
            if !unknown.is_empty() {
                // Nothing consumed yet from these partitions: measure from the
                // group's committed offset (or the start of the log).
                let mut tpl = TopicPartitionList::new();
                for (p, _) in &unknown {
                    tpl.add_partition(&topic, *p);
                }
                let committed = consumer
                    .committed_offsets(tpl, REQUEST_TIMEOUT)
                    .map_err(|e| BusError::unavailable("committed offsets").with_source(e))?;
                for (p, high) in unknown {
                    let from = committed
                        .find_partition(&topic, p)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        });
                    let from = match from {
                        Some(o) => o,
                        None => {
                            consumer
                                .fetch_watermarks(&topic, p, REQUEST_TIMEOUT)
                                .map_err(|e| BusError::unavailable("watermarks").with_source(e))?
                                .0
                        }
                    };
                    lag += (high - from).max(0) as u64;
                }
            }
            Ok(lag)
        })
        .await
        .map_err(|e| BusError::other("blocking task").with_source(e))?
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Closing a group member leaves the group (so the next member is assigned its
        // partitions at once) and blocks until the coordinator answered: do it on a
        // thread of its own and wait a bounded time, never holding up the runtime long.
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = tx.send(());
            });
        if spawned.is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }
}

/// Kafka for tests: a librdkafka mock cluster with 3 brokers (ids 1..=3) living in
/// this process and listening on loopback ports (so a child process can use it while
/// this value lives), or the external brokers named by `DANMAKU_TEST_KAFKA`.
pub struct TestKafka {
    mock: Option<rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    brokers: String,
}

impl TestKafka {
    /// Starts the mock cluster, or uses `DANMAKU_TEST_KAFKA` when set.
    pub fn start() -> Self {
        if let Ok(brokers) = std::env::var("DANMAKU_TEST_KAFKA") {
            return Self {
                mock: None,
                brokers,
            };
        }
        let mock = rdkafka::mocking::MockCluster::new(3).expect("librdkafka mock cluster");
        let brokers = mock.bootstrap_servers();
        Self {
            mock: Some(mock),
            brokers,
        }
    }

    /// Bootstrap servers.
    pub fn brokers(&self) -> String {
        self.brokers.clone()
    }

    /// Whether this is the in-process mock (fault injection available).
    pub fn is_mock(&self) -> bool {
        self.mock.is_some()
    }

    /// Creates `topic` with `partitions` partitions, replicated on 3 brokers (on an
    /// external cluster: replication = min(3, brokers)).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match &self.mock {
            Some(m) => m
                .create_topic(topic, partitions, 3)
                .expect("mock create_topic"),
            None => {
                let settings = self.settings(topic);
                let brokers = {
                    let admin: AdminClient<Observer> = base_config(&settings)
                        .create_with_context(Observer::default())
                        .expect("admin client");
                    let md = admin
                        .inner()
                        .fetch_metadata(None, REQUEST_TIMEOUT)
                        .expect("kafka metadata");
                    md.brokers().len().max(1) as i32
                };
                create_topic(&settings, topic, partitions, brokers.min(3))
                    .await
                    .expect("create topic");
            }
        }
    }

    /// Settings of a Bus on this cluster and `topic`, tuned for tests (short
    /// session timeout and message timeout).
    pub fn settings(&self, topic: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            topic: topic.to_string(),
            session_timeout_ms: 6_000,
            message_timeout_ms: 3_000,
            statistics_interval_ms: 1_000,
            ..KafkaSettings::default()
        }
    }

    /// Takes broker `id` (1..=3; -1 = all) down: connections are dropped and refused.
    /// Panics on an external cluster.
    pub fn broker_down(&self, id: i32) {
        self.mock
            .as_ref()
            .expect("fault injection needs the mock cluster")
            .broker_down(id)
            .expect("broker_down");
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) {
        self.mock
            .as_ref()
            .expect("fault injection needs the mock cluster")
            .broker_up(id)
            .expect("broker_up");
    }

    /// Makes partition `partition` of `topic` led by broker `id` (mock only).
    pub fn set_leader(&self, topic: &str, partition: i32, id: i32) {
        self.mock
            .as_ref()
            .expect("fault injection needs the mock cluster")
            .partition_leader(topic, partition, Some(id))
            .expect("partition_leader");
    }
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::ports::{Bus, BusErrorKind};

    async fn bus_on(kafka: &TestKafka, partitions: i32) -> (KafkaBus, String) {
        let topic = unique_topic("conf");
        kafka.create_topic(&topic, partitions).await;
        let bus = KafkaBus::new(&kafka.settings(&topic)).await.expect("bus");
        (bus, topic)
    }

    danmaku_core::bus_suite!(
        bus_on_a_three_broker_cluster(flavor = "multi_thread", worker_threads = 2),
        async {
            let kafka = TestKafka::start();
            let (bus, _) = bus_on(&kafka, 4).await;
            (kafka, bus)
        }
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_brokers_fail_publish_within_the_message_timeout() {
        let kafka = TestKafka::start();
        if !kafka.is_mock() {
            return;
        }
        let (bus, _) = bus_on(&kafka, 2).await;
        bus.publish("r", Bytes::from_static(b"warm-up"))
            .await
            .unwrap();
        assert!(bus.ready().await);
        kafka.broker_down(-1);
        let t = Instant::now();
        let r = bus.publish("r", Bytes::from_static(b"x")).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == BusErrorKind::Unavailable),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
        tokio::time::sleep(READY_CACHE).await;
        assert!(!bus.ready().await, "not ready while every broker is down");
        kafka.broker_up(-1);
    }

    /// Sends a stream while one broker (the leader of some partitions) goes down and
    /// comes back: every publish that succeeded is consumed exactly once in
    /// per-room order, whatever failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_failure_during_a_stream_loses_no_acknowledged_record() {
        let kafka = TestKafka::start();
        if !kafka.is_mock() {
            return;
        }
        let (bus, topic) = bus_on(&kafka, 3).await;
        for p in 0..3 {
            kafka.set_leader(&topic, p, p + 1);
        }
        let bus = Arc::new(bus);
        let mut acked = Vec::new();
        let mut failed = 0;
        let mut sends = Vec::new();
        for i in 0..300u32 {
            if i == 100 {
                kafka.broker_down(2);
            }
            if i == 200 {
                kafka.broker_up(2);
            }
            let bus = bus.clone();
            let room = format!("room{}", i % 7);
            sends.push(tokio::spawn(async move {
                let payload = Bytes::from(format!("{room}:{i}"));
                let r = bus.publish(&room, payload.clone()).await;
                (room, payload, r)
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for s in sends {
            let (room, payload, r) = s.await.unwrap();
            match r {
                Ok(pos) => acked.push((room, payload, pos)),
                Err(_) => failed += 1,
            }
        }
        assert!(!acked.is_empty());
        let mut c = bus.consumer(&unique_topic("g")).await.unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        let acked_pos: HashSet<_> = acked.iter().map(|a| a.2).collect();
        while Instant::now() < deadline {
            got.extend(c.poll(1000, Duration::from_millis(300)).await.unwrap());
            let seen: HashSet<_> = got.iter().map(|r| r.position).collect();
            if acked_pos.is_subset(&seen) {
                break;
            }
        }
        let seen: Vec<_> = got.iter().map(|r| r.position).collect();
        let unique: HashSet<_> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "each record once");
        for (room, payload, pos) in &acked {
            let r = got
                .iter()
                .find(|r| r.position == *pos)
                .unwrap_or_else(|| panic!("acknowledged {pos:?} of {room} lost ({failed} failed)"));
            assert_eq!(&r.payload, payload);
            assert_eq!(&r.room, room);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebalance_hands_partitions_over_at_the_committed_offset() {
        let kafka = TestKafka::start();
        let (bus, _) = bus_on(&kafka, 4).await;
        let group = unique_topic("rb");
        let mut a = bus.consumer(&group).await.unwrap();
        // Join: wait until `a` owns everything.
        let mut first = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        bus.publish("x0", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        while first.is_empty() && Instant::now() < deadline {
            first = a.poll(100, Duration::from_millis(200)).await.unwrap();
        }
        assert!(!first.is_empty());
        let upto: Vec<_> = first.iter().map(|r| r.position).collect();
        a.commit(&upto).await.unwrap();
        let mut sent = HashSet::new();
        for i in 0..40 {
            let p = bus
                .publish(&format!("x{}", i % 8), Bytes::from(format!("m{i}")))
                .await
                .unwrap();
            sent.insert(p);
        }
        // A second member joins; both keep polling and committing what they got.
        let mut b = bus.consumer(&group).await.unwrap();
        let mut got: Vec<(usize, RecordPosition)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut i = 40;
        while Instant::now() < deadline {
            // Keep records coming until the new member has been handed some.
            if !got.iter().any(|g| g.0 == 1) {
                let p = bus
                    .publish(&format!("x{}", i % 8), Bytes::from(format!("m{i}")))
                    .await
                    .unwrap();
                sent.insert(p);
                i += 1;
            }
            for (who, c) in [&mut a, &mut b].into_iter().enumerate() {
                let recs = c.poll(5, Duration::from_millis(100)).await.unwrap();
                let pos: Vec<_> = recs.iter().map(|r| r.position).collect();
                let _ = c.commit(&pos).await;
                got.extend(pos.into_iter().map(|p| (who, p)));
            }
            let seen: HashSet<_> = got.iter().map(|g| g.1).collect();
            if sent.is_subset(&seen) && got.iter().any(|g| g.0 == 1) {
                break;
            }
        }
        let seen: HashSet<_> = got.iter().map(|g| g.1).collect();
        assert!(sent.is_subset(&seen), "every record reaches a member");
        assert!(
            got.iter().any(|g| g.0 == 1),
            "the new member was assigned partitions"
        );
    }
}
