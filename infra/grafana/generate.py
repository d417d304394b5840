#!/usr/bin/env python3
"""Writes the Grafana dashboards in dashboards/ (one per role, one for the
backends). Edit the panels here and rerun: `python3 infra/grafana/generate.py`.

Every query names only metrics the server exports: tests/ops_artifacts.rs
scrapes a running node and fails otherwise. Latencies and sizes are the
exporter's summaries (`{quantile="0.5"|"0.9"|"0.99"|...}`, plus `_sum` and
`_count`), not histograms: take the highest quantile across nodes, or
`rate(_sum) / rate(_count)` for the mean.
"""
import json
import os

DS = {"type": "prometheus", "uid": "prometheus"}
HERE = os.path.dirname(os.path.abspath(__file__))


def panel(title, exprs, unit="short", kind="timeseries", desc=""):
    """One panel; exprs is a list of (expr, legend)."""
    return {
        "title": title,
        "type": kind,
        "description": desc,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if kind == "timeseries"
        else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": l}
            for i, (e, l) in enumerate(exprs)
        ],
    }


def q(metric, quantile, by="instance"):
    return f'max by ({by}) ({metric}{{quantile="{quantile}"}})'


def dashboard(uid, title, rows):
    """rows: list of (row title, [panels]); two panels per line."""
    panels, y, pid = [], 0, 1
    for row_title, row_panels in rows:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, p in enumerate(row_panels):
            p = dict(p, id=pid, gridPos={"h": 8, "w": 12, "x": 12 * (i % 2), "y": y + 8 * (i // 2)})
            pid += 1
            panels.append(p)
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "uid": uid,
        "title": title,
        "tags": ["danmaku"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": ["danmaku"], "title": "danmaku", "asDropdown": True}],
        "panels": panels,
    }


ingest = dashboard("danmaku-ingest", "danmaku / ingest", [
    ("Sends", [
        panel("Accepted comments /s", [("sum by (instance) (rate(danmaku_ingest_accepted_total[1m]))", "{{instance}}"),
                                        ("sum(rate(danmaku_ingest_accepted_total[1m]))", "total")], "reqps",
              desc="202s: acknowledged by the Bus"),
        panel("Rejections by code /s", [("sum by (code) (rate(danmaku_api_errors_total[1m]))", "{{code}}")], "reqps",
              desc="every error answer of every role, by API code (unavailable = 503, rate_limited = 429, ...)"),
        panel("Bus publish latency (ingest side)", [(q("danmaku_ingest_publish_seconds", "0.5"), "p50 {{instance}}"),
                                                    (q("danmaku_ingest_publish_seconds", "0.99"), "p99 {{instance}}")], "s"),
        panel("503 share of answers", [('sum(rate(danmaku_api_errors_total{code="unavailable"}[5m])) / (sum(rate(danmaku_ingest_accepted_total[5m])) + sum(rate(danmaku_api_errors_total[5m])))', "503 share")], "percentunit",
              desc="alert DanmakuHigh503Rate above 1 %"),
        panel("Guest tokens minted /s", [("sum(rate(danmaku_ingest_guest_tokens_total[5m]))", "guest tokens")], "reqps"),
    ]),
    ("Moderation and idempotency", [
        panel("Sends refused by reason /s", [("sum by (reason) (rate(danmaku_ingest_refused_total[5m]))", "{{reason}}"),
                                             ("sum(rate(danmaku_moderation_stale_refusals_total[5m]))", "moderation state stale (503)")], "reqps",
              desc="bans, mutes and rate limits; stale: the moderation store did not answer"),
        panel("Shadow-accepted and idempotent replays /s", [("sum(rate(danmaku_ingest_shadow_accepted_total[5m]))", "shadow-accepted"),
                                                            ("sum(rate(danmaku_ingest_idempotent_replays_total[5m]))", "idempotent replays"),
                                                            ("sum(rate(danmaku_ingest_idempotency_unrecorded_total[5m]))", "keys not recorded")], "reqps"),
        panel("Admin actions and deletions /s", [("sum by (action) (rate(danmaku_admin_actions_total[5m]))", "{{action}}"),
                                                 ("sum by (by) (rate(danmaku_deletions_total[5m]))", "deletions by {{by}}")], "ops"),
        panel("Embedded moderation store errors /s", [("sum by (op) (rate(danmaku_embedded_errors_total[5m]))", "{{op}}")], "ops"),
    ]),
    ("HTTP edge", [
        panel("HTTP connections open", [("sum by (instance) (danmaku_http_connections)", "{{instance}}")]),
        panel("Connections refused /s", [("sum by (reason) (rate(danmaku_http_connections_refused_total[1m]))", "{{reason}}")], "reqps"),
        panel("Body timeouts (408) and accept errors /s", [("sum(rate(danmaku_http_body_timeouts_total[1m]))", "408"),
                                                          ("sum(rate(danmaku_http_accept_errors_total[1m]))", "accept errors")], "reqps"),
    ]),
])

live = dashboard("danmaku-live", "danmaku / live", [
    ("Viewers", [
        panel("WebSocket connections", [("sum by (instance) (danmaku_ws_connections)", "{{instance}}"),
                                        ("sum(danmaku_ws_connections)", "total")]),
        panel("Room hubs", [("sum by (instance) (danmaku_live_rooms)", "{{instance}}")]),
        panel("Frames built /s (one per room flush, delivered to each of its viewers)",
              [("sum by (instance) (rate(danmaku_live_frames_total[1m]))", "{{instance}}")], "ops"),
        panel("Comments left out by the display budget /s", [("sum(rate(danmaku_live_dropped_total[1m]))", "dropped from live frames")], "ops",
              desc="live.display_budget_per_sec: stored and replayable, not shown live"),
        panel("Gaps /s (slow viewers)", [("sum by (instance) (rate(danmaku_ws_gaps_total[1m]))", "{{instance}}"),
                                         ("sum(rate(danmaku_live_stale_cursors_total[1m]))", "stale cursors")], "ops",
              desc="alert DanmakuWebSocketGapRate"),
        panel("Refusals /s", [("sum(rate(danmaku_ws_refused_total[1m]))", "ws 1013 (max_connections)"),
                              ("sum by (bound) (rate(danmaku_live_refused_total[1m]))", "503 {{bound}}"),
                              ("sum(rate(danmaku_ws_dead_peers_total[1m]))", "dead peers")], "ops"),
        panel("Resumes: backlog bytes held", [("sum by (instance) (danmaku_ws_resume_bytes)", "{{instance}}"),
                                              ], "bytes"),
        panel("Resumes cut by resume_max_bytes /s", [("sum(rate(danmaku_ws_resume_over_budget_total[5m]))", "over budget")], "ops"),
    ]),
    ("Bilibili /sub", [
        panel("/sub authentications /s", [("sum by (result) (rate(danmaku_sub_auth_total[5m]))", "{{result}}")], "ops"),
        panel("/sub gaps and ignored packets /s", [("sum(rate(danmaku_sub_gaps_total[5m]))", "gaps"),
                                                   ("sum(rate(danmaku_sub_ignored_packets_total[5m]))", "ignored packets")], "ops"),
    ]),
    ("Writer (Bus -> SliceStore)", [
        panel("Records stored /s", [("sum by (instance) (rate(danmaku_writer_records_total[1m]))", "{{instance}}")], "ops"),
        panel("Writer batch size", [(q("danmaku_writer_batch_size", "0.5"), "p50 {{instance}}"),
                                    (q("danmaku_writer_batch_size", "0.99"), "p99 {{instance}}")]),
        panel("Writer batch latency", [(q("danmaku_writer_batch_seconds", "0.5"), "p50 {{instance}}"),
                                       (q("danmaku_writer_batch_seconds", "0.99"), "p99 {{instance}}"),
                                       ("sum(rate(danmaku_writer_batch_seconds_sum[5m])) / sum(rate(danmaku_writer_batch_seconds_count[5m]))", "mean")], "s"),
        panel("Writer errors /s", [("sum(rate(danmaku_writer_store_errors_total[1m]))", "store"),
                                   ("sum(rate(danmaku_writer_commit_errors_total[1m]))", "commit"),
                                   ("sum(rate(danmaku_writer_notify_errors_total[1m]))", "notify"),
                                   ("sum(rate(danmaku_writer_decode_errors_total[1m]))", "decode")], "ops"),
        panel("Rooms the writer tracks", [("sum by (instance) (danmaku_writer_rooms)", "{{instance}}")]),
        panel("Closed slices: members and bytes (p99)", [(q("danmaku_slice_members", "0.99"), "members {{instance}}"),
                                                         (q("danmaku_slice_bytes", "0.99"), "bytes {{instance}}")]),
        panel("Slice length changes /s", [("sum by (direction) (rate(danmaku_slice_length_changes_total[5m]))", "{{direction}}")], "ops"),
    ]),
])

archive = dashboard("danmaku-archive", "danmaku / archive", [
    ("Archiver", [
        panel("Rows archived /s vs records written /s", [("sum(rate(danmaku_archive_rows_total[5m]))", "archived"),
                                                         ("sum(rate(danmaku_writer_records_total[5m] offset 10m))", "written 10 min earlier")], "ops",
              desc="comments are due after live.hot_retention_ms (5 min) plus their slice"),
        panel("Archive lag (estimate): written 10 min earlier, not yet archived",
              [("sum(increase(danmaku_writer_records_total[30m] offset 10m)) - sum(increase(danmaku_archive_rows_total[30m]))", "rows behind (30 min window)")],
              desc="alerts DanmakuArchiveLag, DanmakuArchiveStalled"),
        panel("Batches /s", [("sum by (instance) (rate(danmaku_archive_batches_total[5m]))", "{{instance}}")], "ops"),
        panel("Batch latency", [(q("danmaku_archive_batch_seconds", "0.5"), "p50 {{instance}}"),
                                (q("danmaku_archive_batch_seconds", "0.99"), "p99 {{instance}}")], "s"),
        panel("Lease renewals /s", [("sum by (result) (rate(danmaku_archive_lease_renewals_total[5m]))", "{{result}}")], "ops"),
        panel("Expired slices and decode errors /s", [("sum(rate(danmaku_archive_expired_slices_total[5m]))", "expired slices"),
                                                      ("sum(rate(danmaku_archive_decode_errors_total[5m]))", "decode errors")], "ops"),
        panel("Deletions applied to the archive /s", [("sum(rate(danmaku_archive_deletions_total[5m]))", "deletions")], "ops",
              desc="comments deleted by moderators, applied to the ArchiveStore and Parquet"),
    ]),
])

replay = dashboard("danmaku-replay", "danmaku / replay-api", [
    ("Replay cache", [
        panel("Hit ratio", [("sum(rate(danmaku_replay_cache_hits_total[5m])) / (sum(rate(danmaku_replay_cache_hits_total[5m])) + sum(rate(danmaku_replay_cache_misses_total[5m])))", "hit ratio")], "percentunit"),
        panel("Hits by tier, misses, coalesced /s", [("sum by (tier) (rate(danmaku_replay_cache_tier_hits_total[5m]))", "hit {{tier}}"),
                                                     ("sum(rate(danmaku_replay_cache_misses_total[5m]))", "miss"),
                                                     ("sum(rate(danmaku_replay_cache_coalesced_total[5m]))", "coalesced")], "ops"),
        panel("Replay Redis errors /s", [("sum by (op) (rate(danmaku_replay_redis_errors_total[5m]))", "{{op}}")], "ops",
              desc="alert DanmakuReplayRedisErrors; requests are answered from the store"),
        panel("Cold loads refused (503) /s", [("sum(rate(danmaku_replay_cold_loads_refused_total[5m]))", "refused")], "ops"),
    ]),
    ("Reads and posts", [
        panel("Range rows served /s", [("sum by (instance) (rate(danmaku_replay_range_rows_total[5m]))", "{{instance}}")], "ops"),
        panel("VOD posts and imports /s", [("sum(rate(danmaku_replay_vod_comments_total[5m]))", "posted"),
                                           ("sum(rate(danmaku_replay_post_not_visible_total[5m]))", "not visible within post_visible_ms"),
                                           ("sum(rate(danmaku_replay_imported_total[5m]))", "imported")], "ops"),
    ]),
])

backends = dashboard("danmaku-backends", "danmaku / backends", [
    ("Nodes", [
        panel("Nodes up (scrape) by role", [('sum by (role) (up{job="danmaku"})', "{{role}}")]),
        panel("Nodes ready (/readyz)", [('probe_success{job="danmaku-readyz"}', "{{instance}}")],
              desc="alert DanmakuNodeNotReady"),
    ]),
    ("Kafka (Bus)", [
        panel("Produce latency", [(q("danmaku_kafka_produce_seconds", "0.5"), "p50 {{instance}}"),
                                  (q("danmaku_kafka_produce_seconds", "0.99"), "p99 {{instance}}")], "s"),
        panel("Consumer lag (live-writer) by partition", [("max by (partition) (danmaku_kafka_consumer_lag)", "p{{partition}}"),
                                                          ("sum(max by (partition) (danmaku_kafka_consumer_lag))", "total")],
              desc="alert DanmakuConsumerLagGrowing"),
        panel("Kafka errors /s", [("sum(rate(danmaku_kafka_produce_errors_total[1m]))", "produce"),
                                  ("sum(rate(danmaku_kafka_commit_errors_total[1m]))", "commit"),
                                  ("sum(rate(danmaku_kafka_client_errors_total[1m]))", "client")], "ops"),
        panel("Rebalances /s", [("sum by (kind) (rate(danmaku_kafka_rebalances_total[5m]))", "{{kind}}")], "ops"),
    ]),
    ("Redis (SliceStore)", [
        panel("Redis errors by op /s", [("sum by (op) (rate(danmaku_redis_errors_total[1m]))", "{{op}}")], "ops"),
        panel("Big-key events", [("sum by (source) (increase(danmaku_bigkey_events_total[15m]))", "{{source}} (15 min)")],
              desc="alert DanmakuBigKeys; GET /v1/admin/bigkeys lists them"),
        panel("Big-key scanner", [("sum(rate(danmaku_bigkey_scan_keys_total[5m]))", "keys/s"),
                                  ("sum(increase(danmaku_bigkey_scan_passes_total[1h]))", "passes (1 h)"),
                                  ("sum(rate(danmaku_bigkey_scan_errors_total[5m]))", "errors/s")]),
    ]),
])

for name, d in [("ingest", ingest), ("live", live), ("archive", archive), ("replay", replay), ("backends", backends)]:
    with open(os.path.join(HERE, "dashboards", f"danmaku-{name}.json"), "w") as f:
        json.dump(d, f, indent=2, ensure_ascii=False)
        f.write("\n")
