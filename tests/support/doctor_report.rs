//! Reading `registry-dns doctor`'s report: a check's line with its fix, and the verdict.

/// The report's line for a check, by severity and a prefix of its text, with its fix line.
pub fn check<'a>(report: &'a str, severity: &str, text: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = report.lines().collect();
    let index = lines
        .iter()
        .position(|l| l.trim_start().strip_prefix(severity).is_some_and(|rest| rest.trim_start().starts_with(text)))
        .unwrap_or_else(|| panic!("no `{severity} {text}` line in:\n{report}"));
    let fix = lines.get(index + 1).and_then(|l| l.trim_start().strip_prefix("fix: ")).unwrap_or_default();
    (lines[index], fix)
}

/// The report's `verdict:` line, without its prefix.
pub fn verdict(report: &str) -> &str {
    report.lines().find_map(|l| l.strip_prefix("verdict: ")).unwrap_or_else(|| panic!("no verdict in:\n{report}"))
}
