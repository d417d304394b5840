//! [`RedisPresence`]: per-room viewer counts over every live node.
//!
//! Keys (`<ns>` is `redis.namespace`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `dm:{<ns>online}:nodes` | ZSET | live node id → when its report expires (ms) |
//! | `dm:{<ns>online}:n:<node>` | HASH | room → that node's viewers; expires with the report |
//!
//! A report is one pipeline: (a full report deletes the node's hash first) the
//! rooms' counts (`HSET`, `HDEL` for 0), the hash's TTL and the node's entry in
//! `nodes`. Reading takes the nodes whose report has not expired, then `HMGET`
//! of the rooms from each node's hash, pipelined. Every key shares one hash
//! tag, so on a cluster the pipelines stay in one slot (a handful of small
//! writes per live node a second). A node's hash is one key however many rooms it serves: no
//! per-room timer, no per-viewer key.

use super::Conn;
use async_trait::async_trait;
use danmaku_core::ports::{Presence, PresenceError};
use std::time::Duration;

/// The Presence on a standalone Redis or a Redis Cluster.
#[derive(Clone)]
pub struct RedisPresence {
    conn: Conn,
    nodes: String,
    per_node: String,
}

impl RedisPresence {
    pub(crate) fn new(conn: Conn, namespace: &str) -> Self {
        Self {
            conn,
            nodes: format!("dm:{{{namespace}online}}:nodes"),
            per_node: format!("dm:{{{namespace}online}}:n:"),
        }
    }

    /// Opens the Presence the settings select (`redis.cluster`, else
    /// `redis.url`); `None` when neither is set. Connects lazily.
    pub fn connect(
        settings: &danmaku_core::config::RedisSettings,
    ) -> Result<Option<Self>, super::RedisSetupError> {
        let Some(target) = super::Target::from_settings(settings) else {
            return Ok(None);
        };
        let conn = super::command_conn(&target, settings)?;
        Ok(Some(Self::new(conn, &settings.namespace)))
    }
}

fn fail(context: &'static str) -> impl Fn(::redis::RedisError) -> PresenceError {
    move |e| PresenceError::unavailable(context, e)
}

#[async_trait]
impl Presence for RedisPresence {
    async fn report(
        &self,
        node: &str,
        counts: &[(String, u64)],
        full: bool,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let key = format!("{}{node}", self.per_node);
        let ttl_ms = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        let until = danmaku_core::now_ms().saturating_add(ttl_ms);
        let mut p = ::redis::pipe();
        if full {
            p.cmd("DEL").arg(&key).ignore();
        }
        let set: Vec<(&str, u64)> = counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.as_str(), *n))
            .collect();
        let gone: Vec<&str> = counts
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(r, _)| r.as_str())
            .collect();
        if !set.is_empty() {
            p.cmd("HSET").arg(&key);
            for (r, n) in &set {
                p.arg(*r).arg(*n);
            }
            p.ignore();
        }
        if !gone.is_empty() {
            p.cmd("HDEL").arg(&key).arg(&gone).ignore();
        }
        p.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        p.cmd("ZADD").arg(&self.nodes).arg(until).arg(node).ignore();
        p.cmd("ZREMRANGEBYSCORE")
            .arg(&self.nodes)
            .arg("-inf")
            .arg(danmaku_core::now_ms())
            .ignore();
        let mut c = self.conn.clone();
        p.query_async::<()>(&mut c).await.map_err(fail("report"))
    }

    async fn online(&self, rooms: &[String]) -> Result<Vec<u64>, PresenceError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let nodes: Vec<String> = ::redis::cmd("ZRANGEBYSCORE")
            .arg(&self.nodes)
            .arg(format!("({}", danmaku_core::now_ms()))
            .arg("+inf")
            .query_async(&mut c)
            .await
            .map_err(fail("online nodes"))?;
        let mut sums = vec![0u64; rooms.len()];
        if nodes.is_empty() {
            return Ok(sums);
        }
        let mut p = ::redis::pipe();
        for n in &nodes {
            p.cmd("HMGET")
                .arg(format!("{}{n}", self.per_node))
                .arg(rooms);
        }
        let per_node: Vec<Vec<Option<u64>>> =
            p.query_async(&mut c).await.map_err(fail("online counts"))?;
        for counts in per_node {
            for (sum, n) in sums.iter_mut().zip(counts) {
                *sum += n.unwrap_or(0);
            }
        }
        Ok(sums)
    }
}
