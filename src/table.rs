//! The CLI's tables: columns aligned by display width (Vietnamese text lines up), no borders, one
//! space of padding — readable in a terminal and in a log.

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

/// A table with these headers.
pub(crate) fn new<const N: usize>(headers: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    // Two spaces between columns, none before the first.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Numbers read best aligned to the right.
pub(crate) fn right_align(table: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_whatever_the_text() {
        let mut t = super::new(["DOSSIER", "N"]);
        t.add_row(vec!["hồ-sơ-một", "1"]);
        t.add_row(vec!["H56.22-241127-0001", "12"]);
        super::right_align(&mut t, &[1]);
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        let widths: Vec<usize> = lines.iter().map(|l| l.trim_end().chars().count()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
    }
}
