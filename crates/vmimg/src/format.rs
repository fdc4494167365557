//! `--format`: a listing printed as a table (the default), as JSON, or
//! through a template, as docker's and podman's `--format` take it.
//!
//! A template's placeholders are `{{.FIELD}}`, FIELD a key of the listing's
//! `--json` objects (`{{.source.kind}}` goes into an object), so every key
//! the JSON gains is a field without code here; nothing else (no functions,
//! no pipelines) is taken. A field no listed object has and none could have
//! (the record type declares every key, optional ones too) is refused with
//! the known ones; with nothing listed, there is nothing to check against.
//! Strings print as they are, a missing or null value as nothing, a list
//! of strings or numbers as its items joined by commas, anything else as
//! its JSON. `\t` and `\n` in the template are a tab and a
//! newline. A template starting `table ` prints a header row first (each
//! field's name in capitals, `_` as a space) and aligns the tab-separated
//! columns of every line, three spaces apart, as docker's tables are;
//! `table` alone is the default table, `json` is `--json`.

use anyhow::Result;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use vmimg_store::Suggestion;

/// How a listing is printed.
#[derive(Debug, Clone)]
pub enum ListFormat {
    Table,
    Json,
    Template(Template),
}

impl ListFormat {
    /// What `--format TEXT` asks for (a clap value parser).
    pub fn parse(text: &str) -> Result<ListFormat, vmimg_store::Error> {
        Ok(match text.trim() {
            "json" => ListFormat::Json,
            "table" => ListFormat::Table,
            _ => ListFormat::Template(Template::parse(text)?),
        })
    }

    /// `--format`'s, else `--json`'s, else the table.
    pub fn chosen(format: &Option<ListFormat>, json: bool) -> ListFormat {
        match format {
            Some(format) => format.clone(),
            None if json => ListFormat::Json,
            None => ListFormat::Table,
        }
    }
}

/// A parsed `--format` template.
#[derive(Debug, Clone)]
pub struct Template {
    table: bool,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    /// `{{.a.b}}`: the keys, outermost first.
    Field(Vec<String>),
}

/// Columns of a table are this many spaces apart.
const GAP: usize = 3;

impl Template {
    fn parse(text: &str) -> Result<Template, vmimg_store::Error> {
        let (table, body) = match text.strip_prefix("table ") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, text),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| invalid(format!("--format {text:?}: a {{{{ without its }}}}")))?;
            parts.push(Part::Text(rest[..start].to_owned()));
            parts.push(Part::Field(field_path(&rest[start + 2..start + end])?));
            rest = &rest[start + end + 2..];
        }
        parts.push(Part::Text(rest.to_owned()));
        parts.retain(|part| !matches!(part, Part::Text(text) if text.is_empty()));
        Ok(Template { table, parts })
    }

    /// `items` through the template, a line each (after a header row for a
    /// table). Their JSON objects' keys and `declared` are the known fields.
    pub fn render<T: Serialize>(&self, items: &[T], declared: &[&str]) -> Result<String> {
        let objects: Vec<Map<String, Value>> = items
            .iter()
            .map(|item| match serde_json::to_value(item) {
                Ok(Value::Object(object)) => Ok(object),
                other => anyhow::bail!("internal error: a listed item is no JSON object: {other:?}"),
            })
            .collect::<Result<_>>()?;
        if !objects.is_empty() {
            let known: BTreeSet<&str> =
                objects.iter().flat_map(Map::keys).map(String::as_str).chain(declared.iter().copied()).collect();
            self.check_fields(&known)?;
        }
        let rows = objects.iter().map(|object| self.fill(|path| text(lookup(object, path))));
        if !self.table {
            return Ok(rows.map(|row| row + "\n").collect());
        }
        let header = self.fill(|path| path.join(" ").replace('_', " ").to_uppercase());
        Ok(align([header].into_iter().chain(rows)))
    }

    /// Refuses a field whose first key is not `known`, naming those that are.
    fn check_fields(&self, known: &BTreeSet<&str>) -> Result<(), vmimg_store::Error> {
        for part in &self.parts {
            if let Part::Field(path) = part
                && !known.contains(path[0].as_str())
            {
                let suggestion = Suggestion::closest(&path[0], known.iter().copied());
                let fields = known.iter().copied().collect::<Vec<_>>().join(", ");
                return Err(invalid(format!(
                    "--format: unknown field {:?}{suggestion}: the fields are {fields}",
                    path[0]
                )));
            }
        }
        Ok(())
    }

    /// The template with each field replaced by `value(its path)`.
    fn fill(&self, value: impl Fn(&[String]) -> String) -> String {
        let part = |part: &Part| match part {
            Part::Text(text) => text.clone(),
            Part::Field(path) => value(path),
        };
        self.parts.iter().map(part).collect()
    }
}

/// The keys of `{{.a.b}}`'s inside, `.a.b`: each of letters, digits and `_`.
fn field_path(inside: &str) -> Result<Vec<String>, vmimg_store::Error> {
    let is_key = |key: &str| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match inside.trim().strip_prefix('.') {
        Some(path) if path.split('.').all(is_key) => Ok(path.split('.').map(str::to_owned).collect()),
        _ => Err(invalid(format!(
            "--format: {{{{{inside}}}}} is not a field: write {{{{.FIELD}}}}, FIELD a key of --json's objects (e.g. {{{{.name}}}})"
        ))),
    }
}

fn lookup<'a>(object: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    path[1..].iter().try_fold(object.get(&path[0])?, |value, key| value.get(key))
}

/// A value as a template prints it.
fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) if items.iter().all(|item| item.is_string() || item.is_number()) => {
            items.iter().map(|item| text(Some(item))).collect::<Vec<_>>().join(",")
        }
        Some(other) => other.to_string(),
    }
}

/// `lines`, each of tab-separated cells, with every cell but a line's last
/// padded to its column's widest, [`GAP`] spaces apart; a line each.
fn align(lines: impl Iterator<Item = String>) -> String {
    let lines: Vec<String> = lines.flat_map(|line| line.split('\n').map(str::to_owned).collect::<Vec<_>>()).collect();
    let rows: Vec<Vec<&str>> = lines.iter().map(|line| line.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        for (column, cell) in row[..row.len() - 1].iter().enumerate() {
            if widths.len() <= column {
                widths.push(0);
            }
            widths[column] = widths[column].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let (last, padded) = row.split_last().expect("a split has a piece");
        for (column, cell) in padded.iter().enumerate() {
            out += &format!("{cell:<width$}", width = widths[column] + GAP);
        }
        out += last;
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

/// The fields a struct declares, optional ones too, as serde names them:
/// read from its `Deserialize`, which is handed all of them (none for a
/// type that is no plain struct).
pub fn declared_fields<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// A deserializer that only notes the fields a struct asks for, then fails.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("only its fields were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

fn invalid(message: String) -> vmimg_store::Error {
    vmimg_store::Error::Invalid(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, items: &[Value]) -> Result<String> {
        let ListFormat::Template(template) = ListFormat::parse(template)? else { panic!("{template} is a template") };
        template.render(items, &["digest"])
    }

    #[test]
    fn fields_escapes_and_tables() {
        let items = [
            json!({"name": "a", "size": 1, "source": {"kind": "file"}, "digest": null, "tags": ["x", "y"]}),
            json!({"name": "long-name", "size": 22, "source": {}, "tags": [{"x": 1}]}),
        ];
        assert_eq!(render("{{.name}}:{{ .size }}\\t{{.source.kind}}", &items).unwrap(), "a:1\tfile\nlong-name:22\t\n");
        assert_eq!(render("{{.digest}}|{{.source}}", &items).unwrap(), "|{\"kind\":\"file\"}\n|{}\n");
        assert_eq!(render("{{.tags}}", &items).unwrap(), "x,y\n[{\"x\":1}]\n", "a list of strings joined");
        assert_eq!(
            render("table {{.name}}\\t{{.size}}\\t{{.source.kind}}", &items).unwrap(),
            "NAME        SIZE   SOURCE KIND\na           1      file\nlong-name   22\n"
        );
        assert!(matches!(ListFormat::parse("json").unwrap(), ListFormat::Json));
        assert!(matches!(ListFormat::parse("table").unwrap(), ListFormat::Table));
    }

    #[test]
    fn unknown_fields_and_other_actions_are_refused() {
        let items = [json!({"name": "a", "size": 1})];
        let error = render("{{.nmae}}", &items).unwrap_err().to_string();
        assert_eq!(error, "--format: unknown field \"nmae\" (did you mean name?): the fields are digest, name, size");
        assert_eq!(render("{{.digest}}", &items).unwrap(), "\n", "a declared field is known though absent");
        for (template, says) in
            [("{{json .}}", "is not a field"), ("{{.name", "without its }}"), ("{{.a..b}}", "is not a field")]
        {
            let error = ListFormat::parse(template).unwrap_err();
            assert!(error.to_string().contains(says), "{template}: {error}");
        }
    }

    #[test]
    fn declared_fields_include_optional_ones() {
        let fields = declared_fields::<vmimg_store::ImageRecord>();
        for field in ["name", "digest", "blob", "container", "created_at"] {
            assert!(fields.contains(&field), "{field}: {fields:?}");
        }
    }
}
