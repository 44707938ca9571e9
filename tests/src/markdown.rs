//! Markdown as the docs tests read it: the tables of a page (rows of trimmed cells, header and
//! separator left out) and the code spans of a cell. Cells are split at every `|`, so a
//! table this reads keeps `|` out of its cells.

/// Every table of `text`, in order: a table is a run of lines starting with `|`; its first
/// two lines (the header and the separator) are not rows.
pub fn tables(text: &str) -> Vec<Vec<Vec<String>>> {
    let mut tables = Vec::new();
    let mut lines = text.lines().peekable();
    while lines.peek().is_some() {
        let table: Vec<Vec<String>> = lines
            .by_ref()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect();
        if !table.is_empty() {
            tables.push(table);
        }
    }
    tables
}

/// The rows of every table of `text`.
pub fn table_rows(text: &str) -> Vec<Vec<String>> {
    tables(text).into_iter().flatten().collect()
}

/// The `code spans` of `cell`, in order.
pub fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_split_into_rows_and_cells_without_their_headers() {
        let text = "intro\n| a | b |\n|---|---|\n| `x` | 1 |\n| `y` | 2 |\nprose\n\n\
                    | c |\n|---|\n| `z` |\n";
        let t = tables(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], vec![vec!["`x`", "1"], vec!["`y`", "2"]]);
        assert_eq!(t[1], vec![vec!["`z`"]]);
        assert_eq!(table_rows(text).len(), 3);
        assert_eq!(
            code_spans("gauge, labels `family`, `state`"),
            ["family", "state"]
        );
        assert!(code_spans("no code").is_empty());
    }
}
