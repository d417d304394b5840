//! The embedded Bus: a partitioned log in redb with consumer groups. Publishes are
//! group-committed: a dedicated thread takes every pending publish, writes them in
//! one fsynced transaction and only then acknowledges each.
//!
//! The log is stored in blocks: a commit writes the records it holds for a
//! partition as one row (`(partition, first offset)` -> the records packed,
//! see [`pack`]), so its cost is one B-tree insert per partition rather than
//! per record. Readers decode a block and skip the records before their
//! position; a block is trimmed once every group has consumed its last record.
//! Data dirs of the earlier one-row-per-record layout are converted at open.

use super::EmbeddedDb;
use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::ports::{Bus, BusConsumer, BusError, BusRecord, RecordPosition};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// The earlier layout, (partition, offset) -> (room, payload): converted into
/// [`BLOCKS`] at open.
const LEGACY_LOG: TableDefinition<(u32, u64), (&str, &[u8])> = TableDefinition::new("bus_log");
/// (partition, offset of the first record) -> the block's records ([`pack`]).
const BLOCKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("bus_blocks");
/// (group, partition) -> next offset to read
const COMMITS: TableDefinition<(&str, u32), u64> = TableDefinition::new("bus_commits");

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(BLOCKS)?;
    txn.open_table(COMMITS)?;
    Ok(())
}

/// Appends one record to a block being built: `room length (u32 LE), room,
/// payload length (u32 LE), payload`. A block starts with its record count
/// (u32 LE), written by [`Block::finish`].
struct Block {
    bytes: Vec<u8>,
    count: u32,
}

impl Block {
    fn new() -> Self {
        Self {
            bytes: vec![0; 4],
            count: 0,
        }
    }

    fn push(&mut self, room: &str, payload: &[u8]) {
        self.bytes
            .extend_from_slice(&(room.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(room.as_bytes());
        self.bytes
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(payload);
        self.count += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes[..4].copy_from_slice(&self.count.to_le_bytes());
        self.bytes
    }
}

/// Packs records into one block (for tests and the legacy conversion).
fn pack<'a>(records: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut b = Block::new();
    for (room, payload) in records {
        b.push(room, payload);
    }
    b.finish()
}

/// The number of records of a block.
fn block_len(block: &[u8]) -> Result<u64, redb::Error> {
    block
        .get(..4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64)
        .ok_or_else(|| redb::Error::Corrupted("embedded bus: block without a count".into()))
}

/// The next length-prefixed field of a block, advancing `rest` past it.
fn field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let bytes = rest.get(4..4usize.checked_add(len)?)?;
    *rest = &rest[4 + len..];
    Some(bytes)
}

/// The records of a block, in order.
fn unpack(block: &[u8]) -> Result<Vec<(&str, &[u8])>, redb::Error> {
    let corrupt = || redb::Error::Corrupted("embedded bus: malformed block".into());
    let count = block_len(block)? as usize;
    let mut rest = &block[4..];
    let mut out = Vec::with_capacity(count.min(block.len() / 8));
    for _ in 0..count {
        let room = field(&mut rest).ok_or_else(corrupt)?;
        let room = std::str::from_utf8(room).map_err(|_| corrupt())?;
        let payload = field(&mut rest).ok_or_else(corrupt)?;
        out.push((room, payload));
    }
    if !rest.is_empty() {
        return Err(corrupt());
    }
    Ok(out)
}

/// Rewrites the rows of the earlier one-row-per-record layout as blocks of one
/// record each (their offsets kept), in one transaction.
fn convert_legacy_log(db: &redb::Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut legacy = txn.open_table(LEGACY_LOG)?;
        if legacy.is_empty()? {
            return Ok(());
        }
        let mut blocks = txn.open_table(BLOCKS)?;
        for e in legacy.iter()? {
            let (k, v) = e?;
            let (room, payload) = v.value();
            blocks.insert(k.value(), pack([(room, payload)]).as_slice())?;
        }
        legacy.retain(|_, _| false)?;
    }
    txn.commit()?;
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
        convert_legacy_log(&db.db)?;
        let mut next = vec![0u64; partitions as usize];
        {
            let r = db.db.begin_read()?;
            let t = r.open_table(BLOCKS)?;
            for (p, slot) in next.iter_mut().enumerate() {
                if let Some(e) = t.range((p as u32, 0)..=(p as u32, u64::MAX))?.next_back() {
                    let (k, v) = e?;
                    *slot = k.value().1 + block_len(v.value())?;
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
            // One block per partition this commit writes to.
            let mut blocks: Vec<Option<(u64, Block)>> = (0..partitions).map(|_| None).collect();
            let mut append = |room: &str, payload: &[u8]| {
                let part = partition_for(room, partitions);
                let off = trial[part as usize];
                trial[part as usize] += 1;
                blocks[part as usize]
                    .get_or_insert_with(|| (off, Block::new()))
                    .1
                    .push(room, payload);
                positions.push(RecordPosition {
                    partition: part,
                    offset: off,
                });
            };
            for p in &batch {
                match p {
                    Pending::One { room, payload, .. } => append(room, payload),
                    Pending::Many { records, .. } => {
                        for (room, payload) in records {
                            append(room, payload);
                        }
                    }
                }
            }
            let txn = db.db.begin_write()?;
            {
                let mut t = txn.open_table(BLOCKS)?;
                for (part, block) in blocks.into_iter().enumerate() {
                    if let Some((first, block)) = block {
                        t.insert((part as u32, first), block.finish().as_slice())?;
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
                let l = r.open_table(BLOCKS)?;
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
                let t = r.open_table(BLOCKS)?;
                let mut out = Vec::new();
                for (p, from) in positions.iter().enumerate() {
                    let (p, from) = (p as u32, *from);
                    // The block holding `from` may start before it.
                    let start = match t.range((p, 0)..=(p, from))?.next_back() {
                        Some(e) => e?.0.value().1,
                        None => from,
                    };
                    for e in t.range((p, start)..=(p, u64::MAX))? {
                        let (k, v) = e?;
                        let first = k.value().1;
                        for (i, (room, payload)) in unpack(v.value())?.into_iter().enumerate() {
                            let offset = first + i as u64;
                            if offset < from {
                                continue;
                            }
                            if out.len() >= max {
                                return Ok(out);
                            }
                            out.push(BusRecord {
                                position: RecordPosition {
                                    partition: p,
                                    offset,
                                },
                                room: room.to_string(),
                                payload: Bytes::copy_from_slice(payload),
                            });
                        }
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
                    let mut log = txn.open_table(BLOCKS)?;
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
                        // A block goes once its last record is below `min`.
                        let mut bad = None;
                        log.retain_in((pos.partition, 0)..(pos.partition, min), |k, v| {
                            match block_len(v) {
                                Ok(n) => k.1 + n > min,
                                Err(e) => {
                                    bad = Some(e);
                                    true
                                }
                            }
                        })?;
                        if let Some(e) = bad {
                            return Err(e);
                        }
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
                let t = r.open_table(BLOCKS)?;
                let mut lag = 0;
                for (p, from) in positions.iter().enumerate() {
                    let p = p as u32;
                    if let Some(e) = t.range((p, 0)..=(p, u64::MAX))?.next_back() {
                        let (k, v) = e?;
                        let end = k.value().1 + block_len(v.value())?;
                        lag += end.saturating_sub(*from);
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

    #[test]
    fn blocks_round_trip_and_malformed_ones_are_errors() {
        let block = pack([("r1", &b"a"[..]), ("room-2", &b""[..]), ("r1", &b"xyz"[..])]);
        assert_eq!(block_len(&block).unwrap(), 3);
        assert_eq!(
            unpack(&block).unwrap(),
            vec![("r1", &b"a"[..]), ("room-2", &b""[..]), ("r1", &b"xyz"[..])]
        );
        assert_eq!(unpack(&pack([])).unwrap(), vec![]);
        for cut in 0..block.len() {
            assert!(unpack(&block[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = block.clone();
        longer.push(0);
        assert!(unpack(&longer).is_err(), "trailing bytes");
        let mut huge = block.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&huge).is_err(), "a length past the end");
    }

    /// A group that committed in the middle of a block resumes inside it, and
    /// the block stays until its last record is consumed.
    #[tokio::test]
    async fn a_commit_inside_a_block_resumes_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(EmbeddedDb::open(dir.path()).unwrap(), 1).unwrap();
        let batch = (0..10)
            .map(|i| ("r".to_string(), Bytes::from(format!("m{i}"))))
            .collect();
        let positions = bus.publish_batch(batch).await.unwrap();
        assert_eq!(
            positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let mut c = bus.consumer("g").await.unwrap();
        let recs = c.poll(4, Duration::from_millis(100)).await.unwrap();
        assert_eq!(recs.len(), 4);
        c.commit(&[recs[3].position]).await.unwrap();
        assert_eq!(c.lag().await.unwrap(), 6);
        let mut again = bus.consumer("g").await.unwrap();
        let rest = again.poll(100, Duration::from_millis(100)).await.unwrap();
        let texts: Vec<_> = rest
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        assert_eq!(texts, (4..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert_eq!(rest[0].position.offset, 4);
        again.commit(&[rest[5].position]).await.unwrap();
        let r = bus.db.db.begin_read().unwrap();
        assert!(
            r.open_table(BLOCKS).unwrap().is_empty().unwrap(),
            "a consumed block is trimmed"
        );
        drop(r);
        let next = bus.publish("r", Bytes::from_static(b"m10")).await.unwrap();
        assert_eq!(next.offset, 10, "offsets go on after a trim");
    }

    /// A data dir of the one-row-per-record layout is converted at open: its
    /// records keep their offsets and are delivered, and offsets go on.
    #[tokio::test]
    async fn the_earlier_layout_is_converted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path()).unwrap();
        {
            let txn = db.db.begin_write().unwrap();
            {
                let mut legacy = txn.open_table(LEGACY_LOG).unwrap();
                for i in 0..5u64 {
                    let payload = format!("old{i}");
                    legacy.insert((0, i), ("r", payload.as_bytes())).unwrap();
                }
                let mut commits = txn.open_table(COMMITS).unwrap();
                commits.insert(("g", 0), 2).unwrap();
            }
            txn.commit().unwrap();
        }
        let bus = EmbeddedBus::open(db, 1).unwrap();
        let next = bus.publish("r", Bytes::from_static(b"new")).await.unwrap();
        assert_eq!(next.offset, 5);
        let mut c = bus.consumer("g").await.unwrap();
        let recs = c.poll(100, Duration::from_millis(100)).await.unwrap();
        let got: Vec<_> = recs
            .iter()
            .map(|r| {
                (
                    r.position.offset,
                    String::from_utf8(r.payload.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "old2".to_string()),
                (3, "old3".to_string()),
                (4, "old4".to_string()),
                (5, "new".to_string())
            ]
        );
        let r = bus.db.db.begin_read().unwrap();
        assert!(r.open_table(LEGACY_LOG).unwrap().is_empty().unwrap());
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
