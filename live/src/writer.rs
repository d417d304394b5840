//! The writer: consumer group `live-writer` on the Bus → SliceStore (one append per
//! room per batch) → the Notifier (to the live nodes' room hubs); offsets are
//! committed only after the SliceStore write succeeded, and failed writes are
//! retried with backoff.

use danmaku_core::context::Context;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{BusRecord, RecordPosition, SliceItem};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The consumer group of the writers.
pub const GROUP: &str = "live-writer";

/// Runs until `stop` is cancelled, then keeps going until the Bus is drained (so
/// every acknowledged comment reaches the SliceStore before shutdown) or `grace`
/// passes.
pub async fn run(ctx: Context, stop: CancellationToken, grace: Duration) {
    let mut backoff = Duration::from_millis(50);
    let mut consumer = loop {
        match ctx.bus.consumer(GROUP).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "writer cannot join the bus; retrying");
                if stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let batch = ctx.settings.live.writer_batch.max(1);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if drain_deadline.is_none() && stop.is_cancelled() {
            drain_deadline = Some(tokio::time::Instant::now() + grace);
        }
        if let Some(d) = drain_deadline {
            let caught_up = matches!(consumer.lag().await, Ok(0));
            if caught_up || tokio::time::Instant::now() >= d {
                if !caught_up {
                    tracing::warn!("writer stopped before the bus was drained; the rest is redelivered on restart");
                }
                return;
            }
        }
        let records = tokio::select! {
            r = consumer.poll(batch, Duration::from_millis(200)) => r,
            _ = stop.cancelled(), if drain_deadline.is_none() => continue,
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "bus poll failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let upto = write_batch(&ctx, &records).await;
        metrics::histogram!("danmaku_writer_batch_size").record(records.len() as f64);
        metrics::histogram!("danmaku_writer_batch_seconds").record(started.elapsed().as_secs_f64());
        let mut backoff = Duration::from_millis(50);
        while let Err(e) = consumer.commit(&upto).await {
            // Not committing is safe (the records come again and are idempotent),
            // but keep trying so progress is not lost.
            tracing::warn!(error = %e, "offset commit failed");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Writes one polled batch: one append per room, retried until it succeeds, then
/// the hub delivery. Returns the positions to commit.
async fn write_batch(ctx: &Context, records: &[BusRecord]) -> Vec<RecordPosition> {
    let live = &ctx.settings.live;
    let mut by_room: BTreeMap<&str, Vec<SliceItem>> = BTreeMap::new();
    let mut upto: BTreeMap<u32, u64> = BTreeMap::new();
    for r in records {
        let e = upto.entry(r.position.partition).or_insert(0);
        *e = (*e).max(r.position.offset);
        match Danmaku::decode_bytes(&r.payload) {
            Ok(d) => by_room.entry(r.room.as_str()).or_default().push(SliceItem {
                seq: r.position.seq(),
                ts_ms: d.ts_ms,
                data: r.payload.clone(),
            }),
            Err(e) => {
                metrics::counter!("danmaku_writer_decode_errors_total").increment(1);
                tracing::error!(error = %e, partition = r.position.partition, offset = r.position.offset, "undecodable record skipped");
            }
        }
    }
    for (room, items) in by_room {
        let mut backoff = Duration::from_millis(50);
        loop {
            match ctx
                .slices
                .append(room, live.slice_ms, live.hot_retention_ms, &items)
                .await
            {
                Ok(out) => {
                    for s in &out.slices {
                        metrics::histogram!("danmaku_slice_members").record(s.members as f64);
                    }
                    break;
                }
                Err(e) => {
                    metrics::counter!("danmaku_writer_store_errors_total").increment(1);
                    tracing::warn!(error = %e, room, "slice append failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = ctx.notifier.publish(room, &items).await {
            // Viewers catch up from the SliceStore; nothing stored is lost.
            metrics::counter!("danmaku_writer_notify_errors_total").increment(1);
            tracing::warn!(error = %e, room, "notify failed");
        }
    }
    upto.into_iter()
        .map(|(partition, offset)| RecordPosition { partition, offset })
        .collect()
}
