//! The embedded Bus: a partitioned log in redb with consumer groups. Publishes are
//! group-committed: a dedicated thread takes every pending publish, writes them in
//! one fsynced transaction and only then acknowledges each.

use super::EmbeddedDb;
use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::ports::{Bus, BusConsumer, BusError, BusRecord, RecordPosition};
use redb::{ReadableTable, TableDefinition};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// (partition, offset) -> (room, payload)
const LOG: TableDefinition<(u32, u64), (&str, &[u8])> = TableDefinition::new("bus_log");
/// (group, partition) -> next offset to read
const COMMITS: TableDefinition<(&str, u32), u64> = TableDefinition::new("bus_commits");

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(LOG)?;
    txn.open_table(COMMITS)?;
    Ok(())
}

/// A stable partitioner (FNV-1a), so a room keeps its partition across restarts.
pub fn partition_for(room: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in room.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % partitions
}

/// What a publisher hands the commit thread: one record, or a batch of records
/// that share the commit (and are acknowledged together).
enum Pending {
    One {
        room: String,
        payload: Bytes,
        ack: oneshot::Sender<Result<RecordPosition, BusError>>,
    },
    Many {
        records: Vec<(String, Bytes)>,
        ack: oneshot::Sender<Result<Vec<RecordPosition>, BusError>>,
    },
}

impl Pending {
    fn len(&self) -> usize {
        match self {
            Pending::One { .. } => 1,
            Pending::Many { records, .. } => records.len(),
        }
    }
}

/// Records one commit takes at most (a batch larger than this has a commit of
/// its own).
const COMMIT_RECORDS: usize = 4096;

/// The embedded Bus.
pub struct EmbeddedBus {
    db: EmbeddedDb,
    partitions: u32,
    tx: mpsc::Sender<Pending>,
    /// Bumped after every committed append, to wake consumers.
    appended: watch::Receiver<u64>,
}

impl EmbeddedBus {
    /// Opens the Bus with `partitions` partitions. The number must not change for
    /// an existing data dir (rooms would move partitions).
    pub fn open(db: EmbeddedDb, partitions: u32) -> Result<Self, redb::Error> {
        Self::open_with(db, partitions, Duration::ZERO)
    }

    /// Like [`Self::open`], with group commits at least `commit_interval` apart:
    /// a publish that arrives sooner after the last commit waits for the rest of
    /// the interval and shares the next commit (and its fsync) with whatever
    /// arrives meanwhile. A publish after a quiet interval commits at once.
    pub fn open_with(
        db: EmbeddedDb,
        partitions: u32,
        commit_interval: Duration,
    ) -> Result<Self, redb::Error> {
        assert!(partitions > 0);
        let mut next = vec![0u64; partitions as usize];
        {
            let r = db.db.begin_read()?;
            let t = r.open_table(LOG)?;
            for (p, slot) in next.iter_mut().enumerate() {
                if let Some(e) = t.range((p as u32, 0)..=(p as u32, u64::MAX))?.next_back() {
                    *slot = e?.0.value().1 + 1;
                }
            }
            // Trimmed partitions keep their position in the commits table.
            let c = r.open_table(COMMITS)?;
            for e in c.iter()? {
                let (k, v) = e?;
                let p = k.value().1 as usize;
                if p < next.len() {
                    next[p] = next[p].max(v.value());
                }
            }
        }
        let (tx, rx) = mpsc::channel::<Pending>(65_536);
        let (wtx, wrx) = watch::channel(0u64);
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("embedded-bus".into())
            .spawn(move || writer_loop(writer_db, partitions, next, rx, wtx, commit_interval))
            .map_err(redb::Error::Io)?;
        Ok(Self {
            db,
            partitions,
            tx,
            appended: wrx,
        })
    }
}

fn writer_loop(
    db: EmbeddedDb,
    partitions: u32,
    mut next: Vec<u64>,
    mut rx: mpsc::Receiver<Pending>,
    appended: watch::Sender<u64>,
    commit_interval: Duration,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(1024);
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        if let Some(wait) = last_commit.and_then(|t| commit_interval.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        last_commit = Some(Instant::now());
        let mut records = first.len();
        batch.push(first);
        while records < COMMIT_RECORDS {
            match rx.try_recv() {
                Ok(p) => {
                    records += p.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let mut positions = Vec::with_capacity(records);
        let mut trial = next.clone();
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.db.begin_write()?;
            {
                let mut t = txn.open_table(LOG)?;
                let mut append = |room: &str, payload: &[u8]| -> Result<(), redb::Error> {
                    let part = partition_for(room, partitions);
                    let off = trial[part as usize];
                    trial[part as usize] += 1;
                    t.insert((part, off), (room, payload))?;
                    positions.push(RecordPosition {
                        partition: part,
                        offset: off,
                    });
                    Ok(())
                };
                for p in &batch {
                    match p {
                        Pending::One { room, payload, .. } => append(room, payload)?,
                        Pending::Many { records, .. } => {
                            for (room, payload) in records {
                                append(room, payload)?;
                            }
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                next = trial;
                let mut positions = positions.into_iter();
                for p in batch.drain(..) {
                    match p {
                        Pending::One { ack, .. } => {
                            let pos = positions.next().expect("one position per record");
                            let _ = ack.send(Ok(pos));
                        }
                        Pending::Many { records, ack } => {
                            let _ = ack.send(Ok(positions.by_ref().take(records.len()).collect()));
                        }
                    }
                }
                appended.send_modify(|v| *v += 1);
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded bus append failed");
                let cause = std::sync::Arc::new(e);
                let failed = || {
                    BusError::unavailable("embedded log write failed").with_source(cause.clone())
                };
                for p in batch.drain(..) {
                    match p {
                        Pending::One { ack, .. } => {
                            let _ = ack.send(Err(failed()));
                        }
                        Pending::Many { ack, .. } => {
                            let _ = ack.send(Err(failed()));
                        }
                    }
                }
            }
        }
    }
    // The Bus is closing: one last durable commit persists the consumers' offsets
    // (committed without fsync) so a clean restart does not redeliver them.
    let last = (|| -> Result<(), redb::Error> {
        db.db.begin_write()?.commit()?;
        Ok(())
    })();
    if let Err(e) = last {
        tracing::warn!(error = %e, "embedded bus: final commit failed; offsets since the last publish are redelivered");
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, room: &str, payload: Bytes) -> Result<RecordPosition, BusError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Pending::One {
                room: room.to_string(),
                payload,
                ack,
            })
            .await
            .map_err(|_| BusError::unavailable("embedded bus stopped"))?;
        rx.await
            .map_err(|_| BusError::unavailable("embedded bus stopped"))?
    }

    /// One message to the commit thread for the whole batch: its records share
    /// a commit (a batch over 4,096 records has one of its own).
    async fn publish_batch(
        &self,
        records: Vec<(String, Bytes)>,
    ) -> Result<Vec<RecordPosition>, BusError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Pending::Many { records, ack })
            .await
            .map_err(|_| BusError::unavailable("embedded bus stopped"))?;
        rx.await
            .map_err(|_| BusError::unavailable("embedded bus stopped"))?
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn BusConsumer>, BusError> {
        let group = group.to_string();
        let parts = self.partitions;
        let g = group.clone();
        let positions = self
            .db
            .run(move |db| {
                let r = db.begin_read()?;
                let c = r.open_table(COMMITS)?;
                let l = r.open_table(LOG)?;
                let mut pos = Vec::with_capacity(parts as usize);
                for p in 0..parts {
                    let committed = c.get((g.as_str(), p))?.map(|v| v.value()).unwrap_or(0);
                    // Records below the first one still in the log were trimmed.
                    let first = l
                        .range((p, 0)..=(p, u64::MAX))?
                        .next()
                        .transpose()?
                        .map(|e| e.0.value().1);
                    pos.push(first.map_or(committed, |f| committed.max(f)));
                }
                Ok(pos)
            })
            .await
            .map_err(|e| BusError::other("embedded log").with_source(e))?;
        Ok(Box::new(EmbeddedConsumer {
            db: self.db.clone(),
            group,
            positions,
            appended: self.appended.clone(),
            last_durable: Instant::now(),
        }))
    }

    async fn ready(&self) -> bool {
        !self.tx.is_closed()
    }
}

struct EmbeddedConsumer {
    db: EmbeddedDb,
    group: String,
    positions: Vec<u64>,
    appended: watch::Receiver<u64>,
    /// When this consumer last committed durably (see [`DURABLE_COMMIT_EVERY`]).
    last_durable: Instant,
}

/// The consumer's offset commits skip the fsync, except one at least this
/// often: redb frees pages only in durable commits, so a long drain of a backlog
/// with no publish meanwhile would otherwise grow the file until the next one.
const DURABLE_COMMIT_EVERY: Duration = Duration::from_secs(1);

impl EmbeddedConsumer {
    async fn read(&self, max: usize) -> Result<Vec<BusRecord>, BusError> {
        let positions = self.positions.clone();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(LOG)?;
                let mut out = Vec::new();
                for (p, from) in positions.iter().enumerate() {
                    let p = p as u32;
                    for e in t.range((p, *from)..=(p, u64::MAX))? {
                        if out.len() >= max {
                            return Ok(out);
                        }
                        let (k, v) = e?;
                        let (room, payload) = v.value();
                        out.push(BusRecord {
                            position: RecordPosition {
                                partition: p,
                                offset: k.value().1,
                            },
                            room: room.to_string(),
                            payload: Bytes::copy_from_slice(payload),
                        });
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| BusError::other("embedded log").with_source(e))
    }
}

#[async_trait]
impl BusConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<BusRecord>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.appended.borrow_and_update();
            let recs = self.read(max.max(1)).await?;
            if !recs.is_empty() {
                for r in &recs {
                    let slot = &mut self.positions[r.position.partition as usize];
                    *slot = (*slot).max(r.position.offset + 1);
                }
                return Ok(recs);
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(BusError::unavailable("embedded bus stopped")),
                Err(_) => return Ok(Vec::new()),
            }
        }
    }

    async fn commit(&mut self, upto: &[RecordPosition]) -> Result<(), BusError> {
        if upto.is_empty() {
            return Ok(());
        }
        let group = self.group.clone();
        let upto = upto.to_vec();
        let durable = self.last_durable.elapsed() >= DURABLE_COMMIT_EVERY;
        if durable {
            self.last_durable = Instant::now();
        }
        self.db
            .run(move |db| {
                let mut txn = db.begin_write()?;
                // Offsets are not acknowledged data: a commit lost to a crash only
                // redelivers records, which every SliceStore stores idempotently
                // by seq. It reaches the disk with the next durable commit of
                // this database (the next publish's group commit, or this
                // consumer's own once a second).
                if !durable {
                    txn.set_durability(redb::Durability::None);
                }
                {
                    let mut c = txn.open_table(COMMITS)?;
                    let mut log = txn.open_table(LOG)?;
                    for pos in &upto {
                        let next = pos.offset + 1;
                        let old = c
                            .get((group.as_str(), pos.partition))?
                            .map(|v| v.value())
                            .unwrap_or(0);
                        if next <= old {
                            continue;
                        }
                        c.insert((group.as_str(), pos.partition), next)?;
                        // Trim what every group has consumed.
                        let mut min = next;
                        for e in c.iter()? {
                            let (k, v) = e?;
                            if k.value().1 == pos.partition {
                                min = min.min(v.value());
                            }
                        }
                        log.retain_in((pos.partition, 0)..(pos.partition, min), |_, _| false)?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(|e| BusError::other("embedded log").with_source(e))
    }

    async fn lag(&mut self) -> Result<u64, BusError> {
        let positions = self.positions.clone();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(LOG)?;
                let mut lag = 0;
                for (p, from) in positions.iter().enumerate() {
                    let p = p as u32;
                    if let Some(e) = t.range((p, 0)..=(p, u64::MAX))?.next_back() {
                        let last = e?.0.value().1;
                        lag += (last + 1).saturating_sub(*from);
                    }
                }
                Ok(lag)
            })
            .await
            .map_err(|e| BusError::other("embedded log").with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioner_is_stable_and_in_range() {
        assert_eq!(partition_for("r1", 4), partition_for("r1", 4));
        for i in 0..100 {
            assert!(partition_for(&format!("room{i}"), 7) < 7);
        }
    }

    danmaku_core::bus_suite!(bus_conformance, async {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let bus = EmbeddedBus::open(db, 3).unwrap();
        (dir, bus)
    });

    #[tokio::test]
    async fn publishes_soon_after_a_commit_wait_and_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        let bus = EmbeddedBus::open_with(db, 2, Duration::from_millis(400)).unwrap();
        bus.publish("r", Bytes::from_static(b"a")).await.unwrap();
        let t = Instant::now();
        let (b, c) = tokio::join!(
            bus.publish("r", Bytes::from_static(b"b")),
            bus.publish("r", Bytes::from_static(b"c"))
        );
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "a publish right after a commit waits for the interval"
        );
        let mut offsets = vec![b.unwrap().offset, c.unwrap().offset];
        offsets.sort();
        assert_eq!(offsets, vec![1, 2]);
        let mut c = bus.consumer("g").await.unwrap();
        let recs = c.poll(10, Duration::from_millis(100)).await.unwrap();
        assert_eq!(recs.len(), 3, "nothing lost by waiting");
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = EmbeddedBus::open(EmbeddedDb::open(dir.path()).unwrap(), 2).unwrap();
            for i in 0..10 {
                bus.publish("r", Bytes::from(format!("m{i}")))
                    .await
                    .unwrap();
            }
            let mut c = bus.consumer("g").await.unwrap();
            let recs = c.poll(4, Duration::from_millis(100)).await.unwrap();
            c.commit(&[recs[3].position]).await.unwrap();
        }
        // The writer thread of the first instance lets go of the file when it sees
        // its channel close; wait for that.
        let mut db = EmbeddedDb::open(dir.path());
        for _ in 0..100 {
            if db.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            db = EmbeddedDb::open(dir.path());
        }
        let bus = EmbeddedBus::open(db.unwrap(), 2).unwrap();
        let pos = bus.publish("r", Bytes::from_static(b"m10")).await.unwrap();
        assert_eq!(pos.offset, 10, "offsets continue after reopen");
        let mut c = bus.consumer("g").await.unwrap();
        let recs = c.poll(100, Duration::from_millis(100)).await.unwrap();
        let texts: Vec<_> = recs
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        assert_eq!(texts, (4..=10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    }
}
