//! README.md's "Command reference" checked against the command tree that
//! `--help` shows, both ways: a row for `vmimg` (its global options) and
//! one for every command that runs (`vmimg builds list`, not `vmimg
//! builds`), each with its usage (the command's words, then its arguments:
//! `NAME`, `[NAME]` if optional, `NAME...` if repeatable) and every long
//! option it takes (`--help` and `--version` aside) with the value it
//! takes as `--help` shows it (`--size SIZE`, `--format raw\|qcow2`). A
//! failure says what to add to README or remove from it.

use crate::Cli;
use clap::{Arg, ArgAction, Command, CommandFactory};
use std::collections::BTreeMap;

/// What a reference row says of one command.
#[derive(Debug)]
struct Row {
    usage: String,
    /// Long options (`--digest`), each as the row writes it (`--digest
    /// DIGEST`), in `--help`'s order.
    options: Vec<(String, String)>,
}

impl Row {
    fn has(&self, option: &str) -> bool {
        self.written(option).is_some()
    }

    /// How the row writes `option` (`--digest DIGEST`), if it has it.
    fn written(&self, option: &str) -> Option<&str> {
        self.options.iter().find(|(long, _)| long == option).map(|(_, written)| written.as_str())
    }
}

/// The rows the command tree calls for, by command (`vmimg pull`).
fn rows_of_the_tree() -> BTreeMap<String, Row> {
    let root = Cli::command();
    let mut rows = BTreeMap::new();
    rows.insert("vmimg".to_owned(), row("vmimg COMMAND".to_owned(), &root));
    add_leaves(&root, "vmimg", &mut rows);
    rows
}

fn add_leaves(command: &Command, words: &str, rows: &mut BTreeMap<String, Row>) {
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let words = format!("{words} {}", sub.get_name());
        if sub.has_subcommands() {
            add_leaves(sub, &words, rows);
        } else {
            let positionals = sub.get_positionals().filter(|arg| !arg.is_hide_set()).map(positional);
            let usage = [words.clone()].into_iter().chain(positionals).collect::<Vec<_>>().join(" ");
            rows.insert(words, row(usage, sub));
        }
    }
}

fn row(usage: String, command: &Command) -> Row {
    let options = command.get_opts().filter(|arg| !arg.is_hide_set() && arg.get_long().is_some());
    Row { usage, options: options.map(|arg| (format!("--{}", arg.get_long().expect("long")), written(arg))).collect() }
}

/// `--digest DIGEST`, `--arch amd64\|arm64`, `--mirror FROM=TO...`, `--json`.
fn written(arg: &Arg) -> String {
    let long = format!("--{}", arg.get_long().expect("long"));
    if !arg.get_action().takes_values() {
        return long;
    }
    let values: Vec<String> = arg.get_possible_values().iter().map(|v| v.get_name().to_owned()).collect();
    // A table cell's `|` is escaped, in a code span too.
    let value = if values.is_empty() || values.len() > 4 { value_name(arg) } else { values.join("\\|") };
    let repeated = if matches!(arg.get_action(), ArgAction::Append) { "..." } else { "" };
    format!("{long} {value}{repeated}")
}

/// `NAME`, `[NAME]`, `NAME...`, `[NAME]...`.
fn positional(arg: &Arg) -> String {
    let name = value_name(arg);
    let name = if arg.is_required_set() { name } else { format!("[{name}]") };
    if matches!(arg.get_action(), ArgAction::Append) { format!("{name}...") } else { name }
}

fn value_name(arg: &Arg) -> String {
    match arg.get_value_names() {
        Some([name, ..]) => name.to_string(),
        _ => arg.get_id().as_str().to_uppercase(),
    }
}

const SECTION: &str = "## Command reference";

/// The rows of README's reference, by command: `` | `USAGE` | `--a X` `--b` | ``.
fn rows_of_the_readme(readme: &str) -> BTreeMap<String, Row> {
    let start = readme.find(SECTION).unwrap_or_else(|| panic!("README.md has no {SECTION:?} section"));
    let section = &readme[start + SECTION.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|line| line.starts_with("| `vmimg")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let usage = code_spans(cells[0]).next().expect("a usage in backquotes").to_owned();
        let options = cells.get(1).into_iter().flat_map(|cell| code_spans(cell));
        let options = options.filter(|span| span.starts_with("--"));
        let options = options.map(|span| (span.split(' ').next().expect("a word").to_owned(), span.to_owned()));
        let command = usage
            .split(' ')
            .take_while(|word| word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        let command = command.collect::<Vec<_>>().join(" ");
        let row = Row { usage, options: options.collect() };
        assert!(
            rows.insert(command.clone(), row).is_none(),
            "README.md's reference has two rows for `{command}`: keep one"
        );
    }
    rows
}

/// The text between each pair of backquotes.
fn code_spans(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

/// What README's reference must change to say what the tree says.
fn fixes(readme: &BTreeMap<String, Row>, tree: &BTreeMap<String, Row>) -> Vec<String> {
    let mut fixes = Vec::new();
    for (command, row) in tree {
        let Some(theirs) = readme.get(command) else {
            let options = row.options.iter().map(|(_, written)| format!("`{written}`")).collect::<Vec<_>>().join(" ");
            fixes.push(format!("add the row: | `{}` | {options} |", row.usage));
            continue;
        };
        if theirs.usage != row.usage {
            fixes.push(format!("in the row of `{command}`, write the usage `{}`, not `{}`", row.usage, theirs.usage));
        }
        for (option, written) in &row.options {
            match theirs.written(option) {
                None => fixes.push(format!("add `{written}` to the row of `{command}`")),
                Some(their) if their != written => fixes.push(format!(
                    "in the row of `{command}`, write `{written}`, not `{their}` (or give the option's value that name in --help)"
                )),
                Some(_) => {}
            }
        }
        for (option, _) in theirs.options.iter().filter(|(option, _)| !row.has(option)) {
            fixes.push(format!("remove `{option}` from the row of `{command}`: `{command} --help` has no {option}"));
        }
    }
    for command in readme.keys().filter(|command| !tree.contains_key(*command)) {
        fixes.push(format!("remove the row of `{command}`: vmimg has no such command"));
    }
    fixes
}

#[test]
fn readme_command_reference_matches_help() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let fixes = fixes(&rows_of_the_readme(&readme), &rows_of_the_tree());
    assert!(
        fixes.is_empty(),
        "README.md's {SECTION:?} does not match `vmimg --help`:\n{}",
        fixes.iter().map(|fix| format!("- {fix}\n")).collect::<String>()
    );
}

#[test]
fn every_kind_of_difference_is_told() {
    let tree = rows_of_the_tree();
    let readme = rows_of_the_readme(&format!(
        "{SECTION}\n\n| `vmimg rm IMAGES` | `--force` `--all` |\n| `vmimg gc` | `--dry-run` `--json` |\n\
         | `vmimg frobnicate` | |\n| `vmimg info FILE` | `--json` `--format FORMAT` |\n\n## Next\n| `vmimg du` | |\n"
    ));
    assert_eq!(readme.len(), 4, "rows end at the next section: {readme:?}");
    let fixes = fixes(&readme, &tree);
    let told = |text: &str| fixes.iter().any(|fix| fix.contains(text));
    assert!(told("in the row of `vmimg rm`, write the usage `vmimg rm IMAGE`, not `vmimg rm IMAGES`"), "{fixes:#?}");
    assert!(told("remove `--all` from the row of `vmimg rm`"), "{fixes:#?}");
    assert!(told("add `--keep-under SIZE` to the row of `vmimg gc`"), "{fixes:#?}");
    assert!(told("in the row of `vmimg info`, write `--format raw\\|qcow2`, not `--format FORMAT`"), "{fixes:#?}");
    assert!(told("remove the row of `vmimg frobnicate`"), "{fixes:#?}");
    assert!(told("add the row: | `vmimg pull SOURCE` | `--digest DIGEST` `--json`"), "{fixes:#?}");
    assert!(!told("`--force` to the row of `vmimg rm`"), "{fixes:#?}");
    assert!(!told("`--json` to the row of `vmimg info`") && !told("write `--json`"), "{fixes:#?}");
}
