//! The daemon library's layers point down only: no top-level module of `src/` uses one that uses it
//! back, directly or through others, and the lower layers never reach the upper ones. A "use" is any
//! `crate::<module>` path in a module's files, tests included. Checked by reading the sources, so it
//! runs with the test suite and CI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the other top-level modules its files name as `crate::<module>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let module = |path: &Path| {
        let rel = path.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("component");
        let name = first.as_os_str().to_string_lossy();
        name.trim_end_matches(".rs").to_owned()
    };
    let modules: BTreeSet<String> = all.iter().map(|p| module(p)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &all {
        let from = module(path);
        let text = std::fs::read_to_string(path).expect("read");
        for (i, _) in text.match_indices("crate::") {
            let to: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if to != from && modules.contains(&to) {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// Every module reachable from `start`.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.to_owned()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn no_module_of_the_library_uses_one_that_uses_it_back() {
    let graph = graph();
    assert!(
        graph.contains_key("app") && graph.contains_key("flows"),
        "{graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter(|m| reachable(&graph, m).contains(*m))
        .cloned()
        .collect();
    assert!(
        cycles.is_empty(),
        "these modules reach themselves through their imports: {cycles:?}\n{graph:#?}"
    );
}

#[test]
fn settings_queue_and_the_domain_never_reach_the_api_the_application_or_the_cli() {
    let graph = graph();
    let upper = ["api", "app", "cli", "ops", "flows", "jobs_cli", "audit_cli"];
    for lower in ["settings", "queue", "upstreams", "metrics", "audit", "tls"] {
        let reached = reachable(&graph, lower);
        let wrong: Vec<&&str> = upper.iter().filter(|u| reached.contains(**u)).collect();
        assert!(wrong.is_empty(), "{lower} reaches {wrong:?}");
    }
    // The flows sit under the API and the application.
    let reached = reachable(&graph, "flows");
    for u in ["api", "app", "ops", "cli"] {
        assert!(!reached.contains(u), "flows reach {u}");
    }
}

#[test]
fn the_check_sees_a_cycle_when_there_is_one() {
    let mut graph = graph();
    graph
        .entry("queue".into())
        .or_default()
        .insert("metrics".into());
    assert!(reachable(&graph, "queue").contains("queue"));
}
