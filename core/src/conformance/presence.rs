//! The Presence suite: what [`Presence`] promises, one function per guarantee,
//! run by [`crate::presence_suite!`].

use super::unique;
use crate::ports::Presence;
use std::time::Duration;

/// Expands to one `#[tokio::test]` per Presence guarantee; see
/// [`crate::conformance`].
#[macro_export]
macro_rules! presence_suite {
    ($(#[$attr:meta])* $name:ident $(($($rt:tt)*))?, $make:expr $(,)?) => {
        $crate::__conformance_cases!(one presence [$(#[$attr])*] $name ($($($rt)*)?) ($make) [
            counts_are_summed_over_nodes
            a_partial_report_updates_only_its_rooms
            a_full_report_replaces_the_nodes_record
            a_node_that_stops_reporting_drops_out
        ]);
    };
}

const TTL: Duration = Duration::from_secs(30);

fn r(room: &str, n: u64) -> (String, u64) {
    (room.to_string(), n)
}

/// Every fresh node's count of a room is added; unknown rooms are 0.
pub async fn counts_are_summed_over_nodes(p: &dyn Presence) {
    let (a, b, room, other) = (unique("na"), unique("nb"), unique("r"), unique("r"));
    p.report(&a, &[r(&room, 3), r(&other, 1)], true, TTL)
        .await
        .unwrap();
    p.report(&b, &[r(&room, 4)], true, TTL).await.unwrap();
    let got = p
        .online(&[room.clone(), other.clone(), unique("none")])
        .await
        .unwrap();
    assert_eq!(got, vec![7, 1, 0]);
    assert_eq!(p.online(&[]).await.unwrap(), Vec::<u64>::new());
}

/// A partial report changes the rooms it names (0 removes one) and keeps the rest.
pub async fn a_partial_report_updates_only_its_rooms(p: &dyn Presence) {
    let (a, x, y) = (unique("na"), unique("r"), unique("r"));
    p.report(&a, &[r(&x, 2), r(&y, 5)], true, TTL)
        .await
        .unwrap();
    p.report(&a, &[r(&x, 0)], false, TTL).await.unwrap();
    assert_eq!(p.online(&[x.clone(), y.clone()]).await.unwrap(), vec![0, 5]);
    p.report(&a, &[r(&x, 6)], false, TTL).await.unwrap();
    assert_eq!(p.online(&[x, y]).await.unwrap(), vec![6, 5]);
}

/// A full report forgets the rooms the node reported before and does not name.
pub async fn a_full_report_replaces_the_nodes_record(p: &dyn Presence) {
    let (a, x, y) = (unique("na"), unique("r"), unique("r"));
    p.report(&a, &[r(&x, 2), r(&y, 5)], true, TTL)
        .await
        .unwrap();
    p.report(&a, &[r(&y, 1)], true, TTL).await.unwrap();
    assert_eq!(p.online(&[x, y]).await.unwrap(), vec![0, 1]);
}

/// A node whose last report is older than its TTL counts no more.
pub async fn a_node_that_stops_reporting_drops_out(p: &dyn Presence) {
    let (a, b, room) = (unique("na"), unique("nb"), unique("r"));
    p.report(&a, &[r(&room, 2)], true, Duration::from_millis(300))
        .await
        .unwrap();
    p.report(&b, &[r(&room, 1)], true, TTL).await.unwrap();
    assert_eq!(
        p.online(std::slice::from_ref(&room)).await.unwrap(),
        vec![3]
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(p.online(&[room]).await.unwrap(), vec![1]);
}
