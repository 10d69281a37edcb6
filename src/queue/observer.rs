//! What the queue reports as it works. The daemon's metrics implement [`Observer`], as they
//! implement `dvc_upstream::Observer` for the upstream clients, so that `metrics` depends on `queue`
//! and not the reverse. Every call is made after the change it reports is committed.

/// Receives the queue's events; `kind` and `lane` are the job's.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A job was stored (not an idempotent repeat of one already stored).
    fn enqueued(&self, kind: &str, lane: &str);
    /// `n` jobs of this kind and lane were delivered.
    fn completed(&self, kind: &str, lane: &str, n: u64);
    /// A failed attempt, of error class `class`, was scheduled again (or handed back while its
    /// lane pauses).
    fn retried(&self, kind: &str, lane: &str, class: &str);
    /// A job became a dead letter for `reason`.
    fn dead_lettered(&self, kind: &str, lane: &str, reason: &str);
    /// One delivery attempt took `seconds`, whatever its outcome.
    fn attempted(&self, kind: &str, lane: &str, seconds: f64);
}

/// Counts what the queue reports, by (event, kind, lane), for the queue's own tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Tally(
    std::sync::Mutex<std::collections::BTreeMap<(String, String, String), u64>>,
);

#[cfg(test)]
impl Tally {
    pub(crate) fn get(&self, event: &str, kind: &str, lane: &str) -> u64 {
        let key = (event.to_owned(), kind.to_owned(), lane.to_owned());
        self.0.lock().expect("lock").get(&key).copied().unwrap_or(0)
    }

    fn add(&self, event: &str, kind: &str, lane: &str, n: u64) {
        let key = (event.to_owned(), kind.to_owned(), lane.to_owned());
        *self.0.lock().expect("lock").entry(key).or_default() += n;
    }
}

#[cfg(test)]
impl Observer for Tally {
    fn enqueued(&self, kind: &str, lane: &str) {
        self.add("enqueued", kind, lane, 1);
    }

    fn completed(&self, kind: &str, lane: &str, n: u64) {
        self.add("completed", kind, lane, n);
    }

    fn retried(&self, kind: &str, lane: &str, _: &str) {
        self.add("retried", kind, lane, 1);
    }

    fn dead_lettered(&self, kind: &str, lane: &str, _: &str) {
        self.add("dead", kind, lane, 1);
    }

    fn attempted(&self, kind: &str, lane: &str, _: f64) {
        self.add("attempted", kind, lane, 1);
    }
}
