//! The ledger guarantees, checked against what the simulators received: every accepted record and
//! step reached every target, steps in submission order and never before their dossier, and one
//! postal order per shipment.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::traffic::{Report, STEP_PREFIX};

/// What one portal target received, compared with what was accepted.
#[derive(Debug, Default, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub dossiers_expected: usize,
    pub dossiers_missing: usize,
    pub steps_expected: usize,
    pub steps_missing: usize,
    /// Steps that arrived more than once (only possible if the process died between the portal
    /// applying a step and the store recording it).
    pub steps_duplicated: usize,
    /// Dossiers whose steps arrived in another order than submitted.
    pub dossiers_out_of_order: usize,
    /// Progress calls the portal refused because the dossier did not exist there yet.
    pub steps_before_dossier: usize,
}

impl TargetCheck {
    pub fn holds(&self) -> bool {
        self.dossiers_missing == 0
            && self.steps_missing == 0
            && self.dossiers_out_of_order == 0
            && self.steps_before_dossier == 0
    }
}

/// `dossiers`: codes the target has; `steps`: (dossier, content) in arrival order; `refused_steps`:
/// progress calls answered "dossier does not exist".
pub fn portal(
    target: &str,
    report: &Report,
    dossiers: &[String],
    steps: &[(String, String)],
    refused_steps: usize,
) -> TargetCheck {
    let have: std::collections::HashSet<&str> = dossiers.iter().map(String::as_str).collect();
    let mut arrived: HashMap<&str, Vec<&str>> = HashMap::new();
    for (code, content) in steps {
        if content.starts_with(STEP_PREFIX) {
            arrived
                .entry(code.as_str())
                .or_default()
                .push(content.as_str());
        }
    }
    let mut c = TargetCheck {
        target: target.to_owned(),
        steps_before_dossier: refused_steps,
        ..Default::default()
    };
    for d in &report.dossiers {
        if d.records > 0 {
            c.dossiers_expected += 1;
            if !have.contains(d.code.as_str()) {
                c.dossiers_missing += 1;
            }
        }
        c.steps_expected += d.steps.len();
        let got = arrived.get(d.code.as_str()).cloned().unwrap_or_default();
        let mut first: Vec<&str> = Vec::new();
        for s in got {
            if first.contains(&s) {
                c.steps_duplicated += 1;
            } else {
                first.push(s);
            }
        }
        let expected: Vec<&str> = d.steps.iter().map(String::as_str).collect();
        c.steps_missing += expected.iter().filter(|s| !first.contains(s)).count();
        let order: Vec<&str> = first.into_iter().filter(|s| expected.contains(s)).collect();
        let want: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|s| order.contains(s))
            .collect();
        if order != want {
            c.dossiers_out_of_order += 1;
        }
    }
    c
}

/// What VNPost received, compared with the shipments accepted.
#[derive(Debug, Default, Serialize)]
pub struct PostalCheck {
    pub orders_expected: usize,
    pub orders_missing: usize,
    /// Order numbers VNPost created more than once (must be 0).
    pub orders_duplicated: usize,
    /// Creates answered "already exists" (a retry colliding with its first attempt, as designed).
    pub duplicate_attempts: usize,
}

impl PostalCheck {
    pub fn holds(&self) -> bool {
        self.orders_missing == 0 && self.orders_duplicated == 0
    }
}

/// `creates`: (order number, outcome) of every create call the simulator received.
pub fn postal(report: &Report, creates: &[(String, String)]) -> PostalCheck {
    let mut created: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dup = 0;
    for (order, outcome) in creates {
        match outcome.as_str() {
            "created" => *created.entry(order.as_str()).or_default() += 1,
            "duplicate" => dup += 1,
            _ => {}
        }
    }
    let expected: Vec<&str> = report
        .dossiers
        .iter()
        .flat_map(|d| d.orders.iter().map(String::as_str))
        .collect();
    PostalCheck {
        orders_expected: expected.len(),
        orders_missing: expected
            .iter()
            .filter(|o| !created.contains_key(*o))
            .count(),
        orders_duplicated: created.values().filter(|n| **n > 1).count(),
        duplicate_attempts: dup,
    }
}

#[cfg(test)]
mod tests {
    use super::super::traffic::DossierReport;
    use super::*;

    fn report() -> Report {
        Report {
            dossiers: vec![DossierReport {
                code: "D1".into(),
                records: 1,
                steps: vec!["Bước 1".into(), "Bước 2".into(), "Bước 3".into()],
                orders: vec!["D1".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn steps(list: &[&str]) -> Vec<(String, String)> {
        list.iter()
            .map(|s| ("D1".to_owned(), (*s).to_owned()))
            .collect()
    }

    #[test]
    fn steps_in_order_hold_and_each_fault_is_counted() {
        let r = report();
        let ok = portal(
            "t",
            &r,
            &["D1".into()],
            &steps(&["Bước 1", "Bước 2", "Bước 3"]),
            0,
        );
        assert!(ok.holds(), "{ok:?}");
        let swapped = portal(
            "t",
            &r,
            &["D1".into()],
            &steps(&["Bước 2", "Bước 1", "Bước 3"]),
            0,
        );
        assert_eq!(swapped.dossiers_out_of_order, 1);
        let missing = portal("t", &r, &[], &steps(&["Bước 1", "Bước 2"]), 1);
        assert_eq!(
            (
                missing.dossiers_missing,
                missing.steps_missing,
                missing.steps_before_dossier
            ),
            (1, 1, 1)
        );
        let dup = portal(
            "t",
            &r,
            &["D1".into()],
            &steps(&["Bước 1", "Bước 1", "Bước 2", "Bước 3"]),
            0,
        );
        assert_eq!(dup.steps_duplicated, 1);
        assert!(dup.holds(), "a repeat keeps first-arrival order");
    }

    #[test]
    fn a_second_created_order_is_a_duplicate_but_a_409_collision_is_not() {
        let r = report();
        let once = postal(
            &r,
            &[
                ("D1".into(), "created".into()),
                ("D1".into(), "duplicate".into()),
            ],
        );
        assert!(once.holds());
        assert_eq!(once.duplicate_attempts, 1);
        let twice = postal(
            &r,
            &[
                ("D1".into(), "created".into()),
                ("D1".into(), "created".into()),
            ],
        );
        assert_eq!(twice.orders_duplicated, 1);
        assert!(!postal(&r, &[]).holds());
    }
}
