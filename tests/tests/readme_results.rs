//! Every figure the README's "Results" section publishes is backed by a raw report under
//! `results/`: each decimal number of the section must equal, at the precision it is printed
//! with, some number of a JSON line of `results/*.jsonl` (a value, or a decimal in one of its
//! strings such as the command) (README, "Results"; results/README.md).

use fss_tests::workspace_root;

/// The README's "## Results" section, up to the next "## " heading.
fn results_section(readme: &str) -> &str {
    let start = readme
        .find("\n## Results")
        .expect("the README has a \"## Results\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

/// The decimal numbers of a text (digits '.' digits), outside link targets `](...)` and
/// inline code, with their number of decimals.
fn decimals(text: &str) -> Vec<(String, f64, usize)> {
    let mut out = Vec::new();
    let mut skip_until: Option<char> = None;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(end) = skip_until {
            if c == end {
                skip_until = None;
            }
            i += 1;
            continue;
        }
        if c == '`' {
            skip_until = Some('`');
            i += 1;
            continue;
        }
        if c == ']' && chars.get(i + 1) == Some(&'(') {
            skip_until = Some(')');
            i += 2;
            continue;
        }
        let starts_word = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '-');
        if c.is_ascii_digit() && starts_word {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            let s: String = chars[i..j].iter().collect::<String>();
            let s = s.trim_end_matches('.').to_string();
            if let Some((_, frac)) = s.split_once('.') {
                if !frac.contains('.') {
                    out.push((s.clone(), s.parse().unwrap(), frac.len()));
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

fn collect_numbers(v: &serde_json::Value, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Number(n) => out.extend(n.as_f64()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_numbers(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_numbers(x, out)),
        // Settings the README quotes (e.g. `--data-weights 0.7,0.3`) live in the commands.
        serde_json::Value::String(s) => out.extend(decimals(s).into_iter().map(|d| d.1)),
        _ => {}
    }
}

#[test]
fn every_figure_of_the_readme_results_has_a_raw_report() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = results_section(&readme);
    let figures = decimals(section);
    assert!(
        figures.len() >= 5,
        "the Results section lost its figures: {figures:?}"
    );
    let mut numbers = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(root.join("results")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            files += 1;
            for (k, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{} line {}: {e}", path.display(), k + 1));
                collect_numbers(&v, &mut numbers);
            }
        }
    }
    assert!(files > 0, "no results/*.jsonl");
    let missing: Vec<&str> = figures
        .iter()
        .filter(|(_, value, places)| {
            let scale = 10f64.powi(*places as i32);
            !numbers
                .iter()
                .any(|n| ((n * scale).round() - value * scale).abs() < 0.5)
        })
        .map(|(s, _, _)| s.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "README Results figures with no raw report under results/: {missing:?}"
    );
}

#[test]
fn the_figure_scanner_reads_tables_and_prose_but_not_links_or_code() {
    let text = "| a | 57.32 | [r](docs/x.md#v1.2) |\nruns in 75.2 ms, `v0.24.0`, J 19.5.";
    let found: Vec<String> = decimals(text).into_iter().map(|f| f.0).collect();
    assert_eq!(found, ["57.32", "75.2", "19.5"]);
}
