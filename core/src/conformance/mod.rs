//! One conformance suite per port, one named test per guarantee, run against every
//! adapter so the embedded adapters cannot drift from the distributed ones.
//!
//! - [`slice_store`], [`bus`], [`archive_store`], [`replay_cache`], [`notifier`],
//!   [`moderation`], [`presence`]:
//!   one async function per guarantee of the port of that name, which panics
//!   saying what broke. Each uses its own random room/group/vod/key names, so the
//!   cases can share an external server.
//! - One macro per suite ([`crate::slice_store_suite!`], [`crate::bus_suite!`],
//!   [`crate::archive_store_suite!`], [`crate::replay_cache_suite!`],
//!   [`crate::notifier_suite!`], [`crate::moderation_suite!`]) expands, in an
//!   adapter's tests, to a module with
//!   one `#[tokio::test]` per guarantee, so a failure names the broken guarantee
//!   (`slice_store_on_redis::late_timestamps_go_into_the_newest_slice`).
//!
//! A macro takes optional attributes for every generated test (the test tiers:
//! `#[ignore = "needs redis-server"]` on suites that need an installed server,
//! which `bash infra/dev/test.sh` runs with `--include-ignored`), the module
//! name, optionally the arguments of `#[tokio::test(..)]` in parentheses, and a
//! setup expression: a future, evaluated afresh in every
//! test, whose output is `(guard, subject)` (the guard — a server, a temporary
//! directory, `()` — lives until the test ends, after the subject); there is no
//! way to skip a case (a suite that needs an outside server is compiled only
//! when asked for, and fails without it). The subject is the adapter (a `&subject` must coerce
//! to `&dyn Port`), for the Notifier a pair `(publisher, viewer)` of pointers to
//! notifiers (`Arc`, `Box`; both may point at the same in-process notifier), for
//! the ModerationStore a pair `(writer, reader)` the same way.
//!
//! ```text
//! danmaku_core::slice_store_suite!(
//!     slice_store_on_a_redis_cluster(flavor = "multi_thread", worker_threads = 2),
//!     async {
//!         let cluster = RedisCluster::start(3);
//!         let (store, _) = open(&settings_cluster(&cluster.urls())).await;
//!         (cluster, store)
//!     }
//! );
//! ```
//!
//! A new guarantee is a new function in its suite's module plus its name in the
//! list of that suite's macro.

pub mod archive_store;
pub mod bus;
pub mod moderation;
pub mod notifier;
pub mod presence;
pub mod replay_cache;
pub mod slice_store;

/// What a suite's setup expression yields: a guard kept alive for the test and the
/// subject under test. There is no way to skip: a suite that cannot get its
/// subject fails (a suite that needs an outside server is compiled only when
/// asked for, see the ScyllaDB adapter's `real-node` feature).
pub trait Fixture {
    /// Kept until the test ends (a server, a temporary directory).
    type Guard;
    /// What the cases are run on.
    type Subject;
    /// The guard and the subject.
    fn into_parts(self) -> (Self::Guard, Self::Subject);
}

impl<G, S> Fixture for (G, S) {
    type Guard = G;
    type Subject = S;
    fn into_parts(self) -> (G, S) {
        self
    }
}

/// A name no other case uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}{}", rand::random::<u32>())
}

/// Expands one suite: a module `$name` with one test per case. `one`: the case
/// takes `&subject`; `pair`: the case takes `(&*subject.0, &*subject.1)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (@call one $suite:ident $case:ident $subject:ident) => {
        $crate::conformance::$suite::$case(&$subject).await
    };
    (@call pair $suite:ident $case:ident $subject:ident) => {
        $crate::conformance::$suite::$case(&*$subject.0, &*$subject.1).await
    };
    (@test $mode:ident $suite:ident [$(#[$attr:meta])*] $rt:tt ($make:expr) $case:ident) => {
        #[::tokio::test $rt]
        $(#[$attr])*
        async fn $case() {
            let (_guard, subject) = $crate::conformance::Fixture::into_parts($make.await);
            $crate::__conformance_cases!(@call $mode $suite $case subject);
        }
    };
    ($mode:ident $suite:ident $attrs:tt $name:ident $rt:tt ($make:expr) [$($case:ident)*]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                $crate::__conformance_cases!(@test $mode $suite $attrs $rt ($make) $case);
            )*
        }
    };
}
