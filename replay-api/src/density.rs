//! The per-segment density cap: keep every gift, spread the rest evenly over the
//! segment's time, deterministically (so ETags are stable).

use danmaku_core::model::Kind;
use danmaku_core::ports::ArchivedComment;

/// At most `cap` comments of `items` (ordered by (offset, id)); gifts are always
/// kept, even past the cap. The result keeps the input order.
pub fn cap_segment(items: Vec<ArchivedComment>, cap: usize) -> Vec<ArchivedComment> {
    if items.len() <= cap {
        return items;
    }
    let gifts = items.iter().filter(|c| c.item.kind() == Kind::Gift).count();
    let others = items.len() - gifts;
    let keep_others = cap.saturating_sub(gifts);
    // Pick `keep_others` of the `others` at even strides: the i-th kept one is the
    // floor(i * others / keep_others)-th non-gift.
    let mut next_pick = 0usize;
    let mut kept = 0usize;
    let mut seen = 0usize;
    items
        .into_iter()
        .filter(|c| {
            if c.item.kind() == Kind::Gift {
                return true;
            }
            let idx = seen;
            seen += 1;
            if kept < keep_others && idx == next_pick {
                kept += 1;
                next_pick = kept * others / keep_others.max(1);
                return true;
            }
            false
        })
        .collect()
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

    #[test]
    fn under_the_cap_nothing_changes() {
        let v: Vec<_> = (0..10).map(|i| c(i, i as i64, Kind::Comment)).collect();
        assert_eq!(cap_segment(v.clone(), 10), v);
    }

    #[test]
    fn keeps_gifts_and_spreads_the_rest() {
        let mut v: Vec<_> = (0..1000)
            .map(|i| c(i, i as i64 * 360, Kind::Comment))
            .collect();
        v[500].item.kind = Kind::Gift as i32;
        v[501].item.kind = Kind::Gift as i32;
        let out = cap_segment(v, 100);
        assert_eq!(out.len(), 100);
        assert_eq!(
            out.iter().filter(|c| c.item.kind() == Kind::Gift).count(),
            2
        );
        // Evenly spread: every tenth of the segment holds about a tenth of them.
        for tenth in 0..10 {
            let lo = tenth * 36_000;
            let n = out
                .iter()
                .filter(|c| c.offset_ms >= lo && c.offset_ms < lo + 36_000)
                .count();
            assert!((8..=12).contains(&n), "tenth {tenth} has {n}");
        }
        // Order kept.
        assert!(out
            .windows(2)
            .all(|w| (w[0].offset_ms, w[0].item.id) < (w[1].offset_ms, w[1].item.id)));
    }

    #[test]
    fn more_gifts_than_the_cap_keeps_all_gifts() {
        let v: Vec<_> = (0..50)
            .map(|i| {
                c(
                    i,
                    i as i64,
                    if i % 2 == 0 {
                        Kind::Gift
                    } else {
                        Kind::Comment
                    },
                )
            })
            .collect();
        let out = cap_segment(v, 10);
        assert_eq!(out.len(), 25);
        assert!(out.iter().all(|c| c.item.kind() == Kind::Gift));
    }

    #[test]
    fn deterministic() {
        let v: Vec<_> = (0..777).map(|i| c(i, i as i64, Kind::Comment)).collect();
        assert_eq!(cap_segment(v.clone(), 123), cap_segment(v, 123));
    }
}
