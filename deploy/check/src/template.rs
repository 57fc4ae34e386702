//! The small part of Helm's template language that `deploy/helm/strata` uses, so the
//! chart's default render can be compared with `deploy/kustomize` without `helm` (it is
//! not on the package registries this project builds from).
//!
//! Supported, with Go template semantics:
//! - `{{ PATH }}` where PATH is `.Values.a.b`, `$.Values.a.b`, `.Release.Namespace`, or
//!   `.field` inside a `range` (the current item); strings print as-is, numbers and
//!   booleans in their plain form;
//! - `{{ toYaml PATH | nindent N }}`: a newline, then the value as YAML, every line
//!   indented by N spaces;
//! - `{{ range PATH }}` ... `{{ end }}` over a list;
//! - `{{ if eq PATH "WORD" }}` ... (`{{ else }}` ...) `{{ end }}`, comparing a string value
//!   with a literal without spaces or quotes;
//! - `{{-` and `-}}` trim the whitespace (newlines included) of the adjacent text.
//!
//! Anything else is an error, never silently passed through: a chart that starts using
//! more of the language fails the deploy check until this module learns it (or a real
//! `helm template` replaces it).

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("unclosed action at byte {0}")]
    Unclosed(usize),
    #[error("unsupported action {{{{ {0} }}}}")]
    Unsupported(String),
    #[error("{{{{ end }}}} without range or if")]
    StrayEnd,
    #[error("{{{{ else }}}} outside an if")]
    StrayElse,
    #[error("range or if without {{{{ end }}}}")]
    MissingEnd,
    #[error("{path}: no such value")]
    Missing { path: String },
    #[error("{path}: expected {want}")]
    Type { path: String, want: &'static str },
    #[error("rendering YAML: {0}")]
    Yaml(String),
}

/// The data a template sees: `.Values` and `.Release.Namespace`.
pub struct Context<'a> {
    pub values: &'a Value,
    pub namespace: &'a str,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(String),
    ToYaml {
        path: String,
        indent: usize,
    },
    Range {
        path: String,
        body: Vec<Node>,
    },
    IfEq {
        path: String,
        word: String,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// What ended a parsed block.
#[derive(PartialEq)]
enum Close {
    Eof,
    End,
    Else,
}

/// Renders `template` against `ctx`.
pub fn render(template: &str, ctx: &Context<'_>) -> Result<String, Error> {
    let tokens = tokenize(template)?;
    let mut iter = tokens.into_iter();
    let nodes = match parse(&mut iter)? {
        (nodes, Close::Eof) => nodes,
        (_, Close::End) => return Err(Error::StrayEnd),
        (_, Close::Else) => return Err(Error::StrayElse),
    };
    let mut out = String::new();
    emit(&nodes, ctx, None, &mut out)?;
    Ok(out)
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(src: &str) -> Result<Vec<Token>, Error> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut offset = 0;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(Error::Unclosed(offset + start))?;
        let mut inner = &after[..end];
        if let Some(s) = inner.strip_prefix('-') {
            text = text.trim_end();
            inner = s;
        }
        trim_next = false;
        if let Some(s) = inner.strip_suffix('-') {
            trim_next = true;
            inner = s;
        }
        tokens.push(Token::Text(text.to_string()));
        tokens.push(Token::Action(inner.trim().to_string()));
        let consumed = start + 2 + end + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    tokens.push(Token::Text(text.to_string()));
    Ok(tokens)
}

/// Nodes up to the end of the input or to the `{{ end }}`/`{{ else }}` that closes the
/// enclosing block (which the caller checks is allowed there).
fn parse(tokens: &mut impl Iterator<Item = Token>) -> Result<(Vec<Node>, Close), Error> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        let action = match token {
            Token::Text(t) => {
                nodes.push(Node::Text(t));
                continue;
            }
            Token::Action(a) => a,
        };
        let words: Vec<&str> = action.split_whitespace().collect();
        match words.as_slice() {
            ["end"] => return Ok((nodes, Close::End)),
            ["else"] => return Ok((nodes, Close::Else)),
            ["range", path] if is_path(path) => {
                let body = match parse(tokens)? {
                    (body, Close::End) => body,
                    (_, Close::Else) => return Err(Error::StrayElse),
                    (_, Close::Eof) => return Err(Error::MissingEnd),
                };
                nodes.push(Node::Range {
                    path: path.to_string(),
                    body,
                });
            }
            ["if", "eq", path, word] if is_path(path) && is_word(word) => {
                let (then, close) = parse(tokens)?;
                let otherwise = match close {
                    Close::End => Vec::new(),
                    Close::Eof => return Err(Error::MissingEnd),
                    Close::Else => match parse(tokens)? {
                        (otherwise, Close::End) => otherwise,
                        (_, Close::Else) => return Err(Error::StrayElse),
                        (_, Close::Eof) => return Err(Error::MissingEnd),
                    },
                };
                nodes.push(Node::IfEq {
                    path: path.to_string(),
                    word: word[1..word.len() - 1].to_string(),
                    then,
                    otherwise,
                });
            }
            ["toYaml", path, "|", "nindent", n] if is_path(path) => {
                let indent = n.parse().map_err(|_| Error::Unsupported(action.clone()))?;
                nodes.push(Node::ToYaml {
                    path: path.to_string(),
                    indent,
                });
            }
            [path] if is_path(path) => nodes.push(Node::Print(path.to_string())),
            _ => return Err(Error::Unsupported(action)),
        }
    }
    Ok((nodes, Close::Eof))
}

/// A quoted literal without spaces or inner quotes: `"strata"`.
fn is_word(s: &str) -> bool {
    s.len() >= 2 && s.starts_with('"') && s.ends_with('"') && !s[1..s.len() - 1].contains('"')
}

fn is_path(s: &str) -> bool {
    (s.starts_with('.') || s.starts_with("$."))
        && s.trim_start_matches('$').split('.').skip(1).all(|seg| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn lookup<'v>(path: &str, ctx: &'v Context<'_>, dot: Option<&'v Value>) -> Result<Value, Error> {
    let missing = || Error::Missing {
        path: path.to_string(),
    };
    if path == ".Release.Namespace" || path == "$.Release.Namespace" {
        return Ok(Value::String(ctx.namespace.to_string()));
    }
    let (mut cur, rest) = if let Some(rest) = path
        .strip_prefix("$.Values")
        .or_else(|| path.strip_prefix(".Values").filter(|_| dot.is_none()))
    {
        (ctx.values, rest)
    } else {
        (dot.ok_or_else(missing)?, path)
    };
    for seg in rest.split('.').filter(|s| !s.is_empty()) {
        cur = cur.get(seg).ok_or_else(missing)?;
    }
    Ok(cur.clone())
}

fn emit(
    nodes: &[Node],
    ctx: &Context<'_>,
    dot: Option<&Value>,
    out: &mut String,
) -> Result<(), Error> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(path) => match lookup(path, ctx, dot)? {
                Value::String(s) => out.push_str(&s),
                v @ (Value::Number(_) | Value::Bool(_)) => out.push_str(&v.to_string()),
                _ => {
                    return Err(Error::Type {
                        path: path.clone(),
                        want: "a string, number or boolean",
                    });
                }
            },
            Node::ToYaml { path, indent } => {
                let v = lookup(path, ctx, dot)?;
                let yaml = yaml_serde::to_string(&v).map_err(|e| Error::Yaml(e.to_string()))?;
                let pad = " ".repeat(*indent);
                // Helm's toYaml drops the final newline; nindent adds one in front.
                for line in yaml.trim_end_matches('\n').lines() {
                    out.push('\n');
                    out.push_str(&pad);
                    out.push_str(line);
                }
            }
            Node::Range { path, body } => {
                let list = lookup(path, ctx, dot)?;
                let items = list.as_array().ok_or_else(|| Error::Type {
                    path: path.clone(),
                    want: "a list",
                })?;
                for item in items {
                    emit(body, ctx, Some(item), out)?;
                }
            }
            Node::IfEq {
                path,
                word,
                then,
                otherwise,
            } => {
                let v = lookup(path, ctx, dot)?;
                let s = v.as_str().ok_or_else(|| Error::Type {
                    path: path.clone(),
                    want: "a string",
                })?;
                emit(if s == word { then } else { otherwise }, ctx, dot, out)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(t: &str, values: Value) -> Result<String, Error> {
        render(
            t,
            &Context {
                values: &values,
                namespace: "ns",
            },
        )
    }

    #[test]
    fn prints_paths_and_namespace() {
        let v = json!({"image": {"repo": "x", "tag": 3, "pull": true}});
        assert_eq!(
            r("{{ .Values.image.repo }}:{{ .Values.image.tag }} {{ .Values.image.pull }} {{ .Release.Namespace }}", v).unwrap(),
            "x:3 true ns"
        );
    }

    #[test]
    fn trims_like_go_templates() {
        let v = json!({"a": "A"});
        assert_eq!(r("x:\n  {{- .Values.a }}\ny", v.clone()).unwrap(), "x:A\ny");
        assert_eq!(r("x {{ .Values.a -}}  \n y", v).unwrap(), "x Ay");
    }

    #[test]
    fn ranges_with_item_and_root() {
        let v = json!({"pools": [{"name": "a"}, {"name": "b"}], "d": "D"});
        let t = "args:\n{{- range .Values.pools }}\n- {{ .name }}/{{ $.Values.d }}\n{{- end }}\n";
        assert_eq!(r(t, v).unwrap(), "args:\n- a/D\n- b/D\n");
    }

    #[test]
    fn if_eq_picks_a_branch() {
        let t = "{{ if eq .Values.p \"strata\" }}S{{ else }}O{{ end }}/{{ if eq .Values.p \"x\" }}X{{ end }}";
        assert_eq!(r(t, json!({"p": "strata"})).unwrap(), "S/");
        assert_eq!(r(t, json!({"p": "sidecars"})).unwrap(), "O/");
        assert!(matches!(r(t, json!({"p": 1})), Err(Error::Type { .. })));
        assert_eq!(
            r("{{ if eq .Values.p \"x\" }}a", json!({"p": "x"})),
            Err(Error::MissingEnd)
        );
        assert_eq!(r("a{{ else }}b", json!({})), Err(Error::StrayElse));
    }

    #[test]
    fn to_yaml_nindent() {
        let v = json!({"sel": {"k": "v", "n": 1}});
        let out = r("s:\n  {{- toYaml .Values.sel | nindent 2 }}\nz: 1", v).unwrap();
        let parsed: Value = yaml_serde::from_str(&out).unwrap();
        assert_eq!(parsed, json!({"s": {"k": "v", "n": 1}, "z": 1}));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let v = json!({"a": {"b": 1}, "l": [1]});
        assert_eq!(
            r("{{ if .Values.a }}", v.clone()),
            Err(Error::Unsupported("if .Values.a".into()))
        );
        assert_eq!(
            r("{{ .Values.nope }}", v.clone()),
            Err(Error::Missing {
                path: ".Values.nope".into()
            })
        );
        assert!(matches!(
            r("{{ .Values.a }}", v.clone()),
            Err(Error::Type { .. })
        ));
        assert_eq!(
            r("{{ range .Values.l }}x", v.clone()),
            Err(Error::MissingEnd)
        );
        assert_eq!(r("{{ end }}", v.clone()), Err(Error::StrayEnd));
        assert_eq!(r("a {{ .Values.a", v), Err(Error::Unclosed(2)));
    }
}
