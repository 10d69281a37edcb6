//! A write transaction for engines whose own transactions cannot read their writes back over a range
//! (sled): the batch's changes wait in memory, reads see them over the engine's committed state,
//! and the engine applies them as one atomic batch at the end.

use std::collections::BTreeMap;

use super::keys::Table;
use super::{Entries, KvRead, KvWrite, Order, StoreError};

/// Pending changes by (table, key): `Some(value)` to put, `None` to delete.
pub(crate) type Pending = BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>;

pub(crate) struct Overlay<'a> {
    pub(crate) base: &'a dyn KvRead,
    pub(crate) pending: Pending,
}

impl KvRead for Overlay<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending.get(&(table, key.to_vec())) {
            Some(change) => Ok(change.clone()),
            None => self.base.get(table, key),
        }
    }

    fn scan_in(
        &self,
        table: Table,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        self.merged(table, (from, to), limit, order)
    }
}

impl Overlay<'_> {
    /// Each pending change in the range can hide or replace at most one stored entry, so the first
    /// `limit + changes` stored entries (in the scan's order) hold every stored entry of the merged
    /// first `limit`.
    fn merged(
        &self,
        table: Table,
        (from, to): (&[u8], Option<&[u8]>),
        limit: usize,
        order: Order,
    ) -> Result<Entries, StoreError> {
        if to.is_some_and(|to| to <= from) {
            return Ok(Vec::new());
        }
        let changes: Vec<_> = self
            .pending
            .range((table, from.to_vec())..)
            .take_while(|((t, k), _)| *t == table && to.is_none_or(|to| k.as_slice() < to))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        let wanted = limit.saturating_add(changes.len());
        let stored = self.base.scan_in(table, from, to, wanted, order)?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            stored.into_iter().map(|(k, v)| (k, Some(v))).collect();
        merged.extend(changes);
        let live = |(k, v): (Vec<u8>, Option<Vec<u8>>)| Some((k, v?));
        Ok(if order == Order::Descending {
            merged
                .into_iter()
                .rev()
                .filter_map(live)
                .take(limit)
                .collect()
        } else {
            merged.into_iter().filter_map(live).take(limit).collect()
        })
    }
}

impl KvWrite for Overlay<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.pending
            .insert((table, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.pending.insert((table, key.to_vec()), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Committed state: an ordered map per table that only knows `get` and `scan`.
    struct Base(BTreeMap<(Table, Vec<u8>), Vec<u8>>);

    impl KvRead for Base {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.get(&(table, key.to_vec())).cloned())
        }

        fn scan_in(
            &self,
            table: Table,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
            order: Order,
        ) -> Result<Entries, StoreError> {
            let mut all: Entries = self
                .0
                .range((table, from.to_vec())..)
                .take_while(|((t, k), _)| *t == table && to.is_none_or(|to| k.as_slice() < to))
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            if order == Order::Descending {
                all.reverse();
            }
            all.truncate(limit);
            Ok(all)
        }
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..4, 0..3)
    }

    proptest! {
        #[test]
        fn reads_see_the_pending_changes_over_the_committed_state_as_if_applied(
            stored in proptest::collection::btree_map(key(), any::<u8>(), 0..24),
            changes in proptest::collection::vec((key(), proptest::option::of(any::<u8>())), 0..24),
            from in key(),
            to in proptest::option::of(key()),
            limit in 0usize..12,
        ) {
            let table = Table::Ready;
            let mut base = Base(stored.iter().map(|(k, v)| ((table, k.clone()), vec![*v])).collect());
            // Another table's entries must never show through.
            base.0.insert((Table::Keys, vec![0]), vec![9]);
            let mut overlay = Overlay { base: &base, pending: Pending::new() };
            let mut model = stored.clone();
            for (k, change) in &changes {
                match change {
                    Some(v) => {
                        overlay.put(table, k, &[*v]).expect("put");
                        model.insert(k.clone(), *v);
                    }
                    None => {
                        overlay.delete(table, k).expect("delete");
                        model.remove(k);
                    }
                }
            }
            let expected: Entries = model
                .range(from.clone()..)
                .take_while(|(k, _)| to.as_ref().is_none_or(|to| *k < to))
                .take(limit)
                .map(|(k, v)| (k.clone(), vec![*v]))
                .collect();
            prop_assert_eq!(overlay.scan(table, &from, to.as_deref(), limit).expect("scan"), expected);
            let mut newest: Entries = model
                .range(from.clone()..)
                .take_while(|(k, _)| to.as_ref().is_none_or(|to| *k < to))
                .map(|(k, v)| (k.clone(), vec![*v]))
                .collect();
            newest.reverse();
            newest.truncate(limit);
            prop_assert_eq!(overlay.scan_rev(table, &from, to.as_deref(), limit).expect("scan"), newest);
            for k in model.keys().chain(changes.iter().map(|(k, _)| k)) {
                prop_assert_eq!(overlay.get(table, k).expect("get"), model.get(k).map(|v| vec![*v]));
            }
        }
    }
}
