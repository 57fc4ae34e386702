//! `volctl get KIND [NAME]`: tables, YAML or JSON, optionally watching for changes.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use serde_json::{Value, json};
use strata_store::EmbeddedStore;
use strata_store::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement,
};
use strata_store::kinds::KindInfo;

use crate::resource;
use crate::table::{self, Width};

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
    Wide,
    Name,
}

/// Display one or many objects.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kind: name, plural or short name (pv, pvc, sc, sts, cm, po, secret, sa, ev).
    kind: String,
    /// Object names; all objects when omitted.
    names: Vec<String>,
    /// Namespace of namespaced kinds.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// List across all namespaces.
    #[arg(short = 'A', long, conflicts_with = "names")]
    all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier!=cache,env in (a,b),!legacy`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum)]
    output: Option<Output>,
    /// After listing, stream every change until interrupted.
    #[arg(short, long)]
    watch: bool,
}

/// Parses kubectl's label selector syntax into a LabelSelector.
pub fn parse_selector(text: &str) -> anyhow::Result<LabelSelector> {
    let mut match_labels = BTreeMap::new();
    let mut exprs = Vec::new();
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    let req = |key: &str, op: &str, values: Vec<String>| LabelSelectorRequirement {
        key: key.trim().to_string(),
        operator: op.into(),
        values: (!values.is_empty()).then_some(values),
    };
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if let Some((k, v)) = part.split_once("!=") {
            exprs.push(req(k, "NotIn", vec![v.trim().into()]));
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            match_labels.insert(k.trim().to_string(), v.trim().to_string());
        } else if let Some(k) = part.strip_prefix('!') {
            exprs.push(req(k, "DoesNotExist", vec![]));
        } else if let Some((k, rest)) = part
            .split_once(" notin ")
            .or_else(|| part.split_once(" in "))
        {
            let op = if part.contains(" notin ") {
                "NotIn"
            } else {
                "In"
            };
            let list = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .with_context(|| format!("selector {part:?}: values must be in parentheses"))?;
            let values: Vec<String> = list
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            if values.is_empty() {
                bail!("selector {part:?}: empty value list");
            }
            exprs.push(req(k, op, values));
        } else if part.contains(char::is_whitespace) {
            bail!("selector {part:?}: not understood");
        } else {
            exprs.push(req(part, "Exists", vec![]));
        }
    }
    Ok(LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    })
}

fn to_yaml(v: &Value) -> anyhow::Result<String> {
    yaml_serde::to_string(v).context("rendering YAML")
}

fn print_objects(
    kind: &KindInfo,
    items: &[Value],
    output: Option<Output>,
    all_ns: bool,
    single: bool,
    header: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Some(Output::Yaml) | Some(Output::Json) => {
            let doc = if single && items.len() == 1 {
                items[0].clone()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
            };
            if output == Some(Output::Yaml) {
                write!(out, "{}", to_yaml(&doc)?)?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            }
        }
        Some(Output::Name) => {
            for v in items {
                writeln!(
                    out,
                    "{}/{}",
                    resource::singular(kind),
                    v["metadata"]["name"].as_str().unwrap_or("")
                )?;
            }
        }
        Some(Output::Wide) | None => {
            let width = if output == Some(Output::Wide) {
                Width::Wide
            } else {
                Width::Normal
            };
            let ns_col = all_ns && kind.namespaced();
            let mut headers = table::headers(kind, width);
            if ns_col {
                headers.insert(0, "NAMESPACE");
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|v| {
                    let mut r = table::row(kind, v, width);
                    if ns_col {
                        r.insert(
                            0,
                            v["metadata"]["namespace"]
                                .as_str()
                                .unwrap_or("")
                                .to_string(),
                        );
                    }
                    r
                })
                .collect();
            let text = table::render(&headers, &rows);
            // Watch updates print rows only, like kubectl.
            let text = if header {
                text.as_str()
            } else {
                text.split_once('\n').map_or("", |x| x.1)
            };
            write!(out, "{text}")?;
        }
    }
    out.flush()?;
    Ok(())
}

pub async fn run(store: &EmbeddedStore, args: Args) -> anyhow::Result<()> {
    let selector = args.selector.as_deref().map(parse_selector).transpose()?;
    if args.kind.contains(',') {
        // `get pv,pvc`: one table per kind, separated by a blank line, as kubectl prints.
        if !args.names.is_empty() || args.watch {
            bail!("a name or --watch needs a single kind, not {:?}", args.kind);
        }
        let kinds = args
            .kind
            .split(',')
            .filter(|k| !k.is_empty())
            .map(resource::kind)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut printed = false;
        for kind in kinds {
            let ns = if args.all_namespaces || !kind.namespaced() {
                None
            } else {
                Some(args.namespace.as_str())
            };
            let list = store
                .list_values(kind.kind_ref, ns, selector.as_ref())
                .await?;
            if list.items.is_empty() {
                continue;
            }
            if printed && !matches!(args.output, Some(Output::Yaml) | Some(Output::Json)) {
                println!();
            }
            print_objects(
                kind,
                &list.items,
                args.output,
                args.all_namespaces,
                false,
                true,
            )?;
            printed = true;
        }
        if !printed {
            say_none_found(Some(&args.namespace));
        }
        return Ok(());
    }
    let kind = resource::kind(&args.kind)?;
    let ns: Option<&str> = if !kind.namespaced() {
        Some("")
    } else if args.all_namespaces {
        None
    } else {
        Some(args.namespace.as_str())
    };
    let mut missing = Vec::new();
    let (items, from) = if args.names.is_empty() {
        let list = store
            .list_values(kind.kind_ref, ns, selector.as_ref())
            .await?;
        (list.items, list.resource_version)
    } else {
        // The revision first: a change racing the reads is then replayed, never missed.
        let rv = store.revision().await?;
        let mut found = Vec::new();
        for name in &args.names {
            match store.get_value(kind.kind_ref, ns.unwrap_or(""), name).await {
                Ok(obj) => found.push(obj),
                // Like kubectl: show what exists, name what does not, fail at the end.
                Err(e) if e.is_not_found() && args.names.len() > 1 => missing.push(e),
                Err(e) => return Err(e.into()),
            }
        }
        (found, rv)
    };
    let single = args.names.len() == 1;
    if items.is_empty()
        && missing.is_empty()
        && args.output.is_none_or(|o| matches!(o, Output::Wide))
    {
        say_none_found(ns.filter(|_| kind.namespaced()));
    } else if !items.is_empty() || missing.is_empty() {
        print_objects(kind, &items, args.output, args.all_namespaces, single, true)?;
    }
    if !missing.is_empty() {
        for e in &missing {
            eprintln!("error: {e}");
        }
        bail!(
            "{} of {} object(s) not found",
            missing.len(),
            args.names.len()
        );
    }
    if !args.watch {
        return Ok(());
    }
    let mut header = items.is_empty();
    let mut from = from;
    loop {
        let mut stream = store
            .watch_values(kind.kind_ref, ns.filter(|n| !n.is_empty()), from)
            .await?;
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) if e.is_gone() => break,
                Err(e) => return Err(e.into()),
            };
            let obj = ev.object();
            from = obj["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(from);
            if !args.names.is_empty()
                && !args
                    .names
                    .iter()
                    .any(|n| obj["metadata"]["name"].as_str() == Some(n))
            {
                continue;
            }
            if let Some(sel) = &selector {
                let labels = serde_json::from_value(obj["metadata"]["labels"].clone()).ok();
                if !strata_store::selector::matches(sel, labels.as_ref()) {
                    continue;
                }
            }
            let shown = obj.clone();
            if matches!(args.output, Some(Output::Yaml)) {
                println!("---");
            }
            print_objects(
                kind,
                &[shown],
                args.output,
                args.all_namespaces,
                true,
                header,
            )?;
            header = false;
        }
        // History was compacted under a slow consumer: re-list and continue from there.
        from = store
            .list_values(kind.kind_ref, ns, None)
            .await?
            .resource_version;
    }
}

/// kubectl's words for an empty answer, on stderr (it is not an error): with the namespace
/// for a namespaced kind.
pub fn say_none_found(namespace: Option<&str>) {
    match namespace {
        Some(ns) => eprintln!("No resources found in {ns} namespace."),
        None => eprintln!("No resources found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_syntax() {
        let s = parse_selector("app=web, tier!=cache,env in (a, b),!legacy,has").unwrap();
        assert_eq!(s.match_labels.unwrap()["app"], "web");
        let ops: Vec<(String, String)> = s
            .match_expressions
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.operator))
            .collect();
        assert_eq!(
            ops,
            [
                ("tier".into(), "NotIn".into()),
                ("env".into(), "In".into()),
                ("legacy".into(), "DoesNotExist".into()),
                ("has".into(), "Exists".into())
            ]
        );
        assert!(parse_selector("env in a,b").is_err());
    }
}
