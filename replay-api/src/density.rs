//! The density cap: at most N comments per span of the recording, spread evenly
//! over the span's **time** (not over the comments: a burst in one minute does not
//! crowd out the quiet minutes), deterministically (so ETags are stable).
//!
//! The span is cut into buckets of [`BUCKET_MS`]; the budget is shared out by
//! water-filling (every bucket keeps up to the same quota `q`, the largest that
//! fits, and the few comments left over go to the fullest buckets at even
//! strides); inside a bucket the kept comments are taken at even strides too.
//! Everything is a pure function of the input order, which is (offset_ms, id),
//! and of each item's [`Capped`] view (offset and gift or not), so the caps give
//! the same choice on archived rows and on the compact rows the document cache
//! keeps.

use danmaku_core::model::Kind;
use danmaku_core::ports::ArchivedComment;
use danmaku_core::vod::segment_range;

/// Width of one bucket of the spread, ms.
pub const BUCKET_MS: i64 = 1_000;

/// What the caps read of an item.
pub trait Capped {
    /// Its offset in the recording, ms.
    fn offset_ms(&self) -> i64;
    /// Whether it is a gift (gifts are kept first).
    fn is_gift(&self) -> bool;
}

impl Capped for ArchivedComment {
    fn offset_ms(&self) -> i64 {
        self.offset_ms
    }
    fn is_gift(&self) -> bool {
        self.item.kind() == Kind::Gift
    }
}

/// The density cap of segment `n`: at most `cap` comments of `items` (ordered by
/// (offset, id)), except that gifts are always kept, even past the cap. The
/// non-gifts kept are spread evenly over the segment's time. Keeps the order.
pub fn cap_segment<T: Capped>(items: Vec<T>, cap: usize, n: u32) -> Vec<T> {
    if items.len() <= cap {
        return items;
    }
    let (start, end) = segment_range(n);
    let gifts = items.iter().filter(|c| c.is_gift()).count();
    let budget = cap.saturating_sub(gifts);
    let keep = spread(&items, |c| !c.is_gift(), budget, start, end);
    select(items, |i, c| c.is_gift() || keep[i])
}

/// A strict cap for whole-recording documents (DPlayer's `max`, the document
/// bound): at most `max` comments, gifts first (spread evenly themselves when
/// there are more than `max` of them), then the rest spread evenly over the time
/// the items cover. Keeps the order.
pub fn cap_strict<T: Capped>(items: Vec<T>, max: usize) -> Vec<T> {
    if items.len() <= max {
        return items;
    }
    let start = items.iter().map(|c| c.offset_ms()).min().unwrap_or(0);
    let end = items.iter().map(|c| c.offset_ms()).max().unwrap_or(0) + 1;
    let gifts = items.iter().filter(|c| c.is_gift()).count();
    if gifts >= max {
        let keep = spread(&items, |c| c.is_gift(), max, start, end);
        return select(items, |i, _| keep[i]);
    }
    let keep = spread(&items, |c| !c.is_gift(), max - gifts, start, end);
    select(items, |i, c| c.is_gift() || keep[i])
}

fn select<T>(items: Vec<T>, keep: impl Fn(usize, &T) -> bool) -> Vec<T> {
    items
        .into_iter()
        .enumerate()
        .filter(|(i, c)| keep(*i, c))
        .map(|(_, c)| c)
        .collect()
}

/// Marks at most `budget` of the items matching `eligible` to keep, spread evenly
/// over `[start, end)` in buckets of [`BUCKET_MS`]. Returns one flag per item.
fn spread<T: Capped>(
    items: &[T],
    eligible: impl Fn(&T) -> bool,
    budget: usize,
    start: i64,
    end: i64,
) -> Vec<bool> {
    let span = (end - start).max(1);
    let buckets = ((span + BUCKET_MS - 1) / BUCKET_MS).clamp(1, 1 << 20) as usize;
    let bucket_of = |offset: i64| -> usize {
        let rel = (offset - start).clamp(0, span - 1) as i128;
        ((rel * buckets as i128) / span as i128) as usize
    };
    // Eligible items per bucket, as indices into `items` (in input order).
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); buckets];
    for (i, c) in items.iter().enumerate() {
        if eligible(c) {
            members[bucket_of(c.offset_ms())].push(i);
        }
    }
    let quotas = water_fill(&members.iter().map(Vec::len).collect::<Vec<_>>(), budget);
    let mut keep = vec![false; items.len()];
    for (m, quota) in members.iter().zip(quotas) {
        for k in 0..quota {
            // Even strides inside the bucket: distinct because quota <= len.
            keep[m[k * m.len() / quota]] = true;
        }
    }
    keep
}

/// Per-bucket quotas summing to `min(budget, total)`: every bucket gets
/// `min(count, q)` for the largest `q` that fits, and the remainder goes one each
/// to buckets holding more than `q`, chosen at even strides.
pub(crate) fn water_fill(counts: &[usize], budget: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    if total <= budget {
        return counts.to_vec();
    }
    let filled = |q: usize| counts.iter().map(|c| (*c).min(q)).sum::<usize>();
    // Largest q with filled(q) <= budget (filled is monotone in q).
    let (mut lo, mut hi) = (0usize, counts.iter().copied().max().unwrap_or(0));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if filled(mid) <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let q = lo;
    let mut quotas: Vec<usize> = counts.iter().map(|c| (*c).min(q)).collect();
    let over: Vec<usize> = (0..counts.len()).filter(|b| counts[*b] > q).collect();
    let remainder = budget - filled(q);
    // remainder < over.len(), else q + 1 would have fitted.
    debug_assert!(remainder < over.len().max(1));
    for j in 0..remainder {
        quotas[over[j * over.len() / remainder]] += 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::model::Danmaku;

    fn c(id: u64, offset: i64, kind: Kind) -> ArchivedComment {
        ArchivedComment {
            vod: "v".into(),
            offset_ms: offset,
            item: Danmaku {
                id,
                kind: kind as i32,
                ..Default::default()
            },
        }
    }

    fn is_gift(c: &ArchivedComment) -> bool {
        c.is_gift()
    }

    fn in_window(out: &[ArchivedComment], lo: i64, hi: i64) -> usize {
        out.iter()
            .filter(|c| c.offset_ms >= lo && c.offset_ms < hi)
            .count()
    }

    fn ordered(out: &[ArchivedComment]) -> bool {
        out.windows(2)
            .all(|w| (w[0].offset_ms, w[0].item.id) < (w[1].offset_ms, w[1].item.id))
    }

    #[test]
    fn under_the_cap_nothing_changes() {
        let v: Vec<_> = (0..10).map(|i| c(i, i as i64, Kind::Comment)).collect();
        assert_eq!(cap_segment(v.clone(), 10, 0), v);
        assert_eq!(cap_strict(v.clone(), 10), v);
    }

    #[test]
    fn keeps_gifts_and_spreads_the_rest() {
        let mut v: Vec<_> = (0..1000)
            .map(|i| c(i, i as i64 * 360, Kind::Comment))
            .collect();
        v[500].item.kind = Kind::Gift as i32;
        v[501].item.kind = Kind::Gift as i32;
        let out = cap_segment(v, 100, 0);
        assert_eq!(out.len(), 100);
        assert_eq!(out.iter().filter(|c| is_gift(c)).count(), 2);
        // Evenly spread: every tenth of the segment holds about a tenth of them.
        for tenth in 0..10 {
            let n = in_window(&out, tenth * 36_000, (tenth + 1) * 36_000);
            assert!((8..=12).contains(&n), "tenth {tenth} has {n}");
        }
        assert!(ordered(&out));
    }

    #[test]
    fn a_burst_does_not_crowd_out_the_quiet_minutes() {
        // Segment 2: 10,000 comments in its first minute, then one every 2 s.
        let (start, _) = segment_range(2);
        let mut v: Vec<_> = (0..10_000)
            .map(|i| c(i, start + i as i64 * 6, Kind::Comment))
            .collect();
        v.extend((0..150).map(|i| c(20_000 + i, start + 60_000 + i as i64 * 2_000, Kind::Comment)));
        v.push(c(99_999, start + 30_000, Kind::Gift));
        v.sort_by_key(|c| (c.offset_ms, c.item.id));
        let out = cap_segment(v, 6000, 2);
        assert_eq!(out.len(), 6000);
        // Every comment of the quiet five minutes is kept; the burst gets the rest,
        // itself spread evenly over its minute.
        assert_eq!(in_window(&out, start + 60_000, start + 360_000), 150);
        assert!(out.iter().any(|c| c.item.id == 99_999), "the gift is kept");
        for sec in 0..60 {
            let lo = start + sec * 1_000;
            let n = in_window(&out, lo, lo + 1_000);
            assert!((96..=99).contains(&n), "second {sec} of the burst has {n}");
        }
        assert!(ordered(&out));
    }

    #[test]
    fn more_gifts_than_the_cap_keeps_all_gifts() {
        let v: Vec<_> = (0..50)
            .map(|i| {
                let kind = if i % 2 == 0 {
                    Kind::Gift
                } else {
                    Kind::Comment
                };
                c(i, i as i64, kind)
            })
            .collect();
        let out = cap_segment(v, 10, 0);
        assert_eq!(out.len(), 25);
        assert!(out.iter().all(is_gift));
    }

    #[test]
    fn strict_cap_never_exceeds_max() {
        let v: Vec<_> = (0..50)
            .map(|i| {
                let kind = if i % 2 == 0 {
                    Kind::Gift
                } else {
                    Kind::Comment
                };
                c(i, i as i64 * 1000, kind)
            })
            .collect();
        let out = cap_strict(v.clone(), 10);
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(is_gift), "gifts first");
        assert!(out.first().unwrap().offset_ms < 10_000 && out.last().unwrap().offset_ms > 35_000);
        let out = cap_strict(v.clone(), 30);
        assert_eq!(out.len(), 30);
        assert_eq!(out.iter().filter(|c| is_gift(c)).count(), 25);
        assert_eq!(cap_strict(v, 0), vec![]);
        assert!(ordered(&cap_strict(
            (0..99).map(|i| c(i, 7, Kind::Comment)).collect(),
            5
        )));
    }

    #[test]
    fn deterministic() {
        let v: Vec<_> = (0..777)
            .map(|i| c(i, (i as i64 * 7919) % 360_000, Kind::Comment))
            .collect();
        let mut v = v;
        v.sort_by_key(|c| (c.offset_ms, c.item.id));
        assert_eq!(
            cap_segment(v.clone(), 123, 0),
            cap_segment(v.clone(), 123, 0)
        );
        assert_eq!(cap_strict(v.clone(), 50), cap_strict(v, 50));
    }

    #[test]
    fn water_fill_shares_fairly() {
        assert_eq!(water_fill(&[5, 5, 5], 20), vec![5, 5, 5]);
        assert_eq!(water_fill(&[1, 10, 10], 11), vec![1, 5, 5]);
        assert_eq!(water_fill(&[1, 10, 10], 12), vec![1, 6, 5]);
        assert_eq!(water_fill(&[0, 0, 9], 3), vec![0, 0, 3]);
        assert_eq!(water_fill(&[4, 4, 4, 4], 2), vec![1, 0, 1, 0]);
        assert_eq!(water_fill(&[3, 3], 0), vec![0, 0]);
        for budget in 0..40 {
            let q = water_fill(&[7, 0, 13, 2, 9], budget);
            assert_eq!(q.iter().sum::<usize>(), budget.min(31));
        }
    }
}
