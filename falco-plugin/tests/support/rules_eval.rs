//! A small evaluator of Falco rule conditions for the `bulwark` source, shared by the rules
//! test (falco-plugin/tests/rules.rs) and the end-to-end telemetry test (tests/tests/): it
//! loads a rules file (lists, macros, rules), and evaluates a rule's condition against events
//! with the plugin's own field extraction and process table. Operators: and, or, not, =, !=,
//! <, <=, >, >=, in, startswith, endswith, contains, icontains, pmatch, exists, parentheses;
//! lists and macros are expanded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;

use bulwark_falco_plugin::fields::{extract, Value, FIELDS};
use bulwark_falco_plugin::proctable::ProcTable;
use bulwark_protocol::telemetry::Enriched;
use serde_yaml::Value as Y;

/// Fields Falco itself provides for every event source.
pub const FALCO_FIELDS: &[&str] = &["evt.num", "evt.time", "evt.source", "evt.hostname", "evt.plugininfo"];

pub struct Rules {
    pub lists: HashMap<String, Vec<String>>,
    pub macros: HashMap<String, String>,
    pub rules: Vec<(String, String, String)>,
}

/// The rules file of this repository.
pub const RULES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../falco-plugin/rules/bulwark_rules.yaml");

pub fn load() -> Rules {
    load_from(RULES_FILE)
}

pub fn load_from(path: &str) -> Rules {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let doc: Vec<Y> = serde_yaml::from_str(&text).unwrap();
    let mut r = Rules { lists: HashMap::new(), macros: HashMap::new(), rules: Vec::new() };
    for item in doc {
        let get = |k: &str| item.get(k).and_then(|v| v.as_str()).map(|s| s.trim().to_string());
        if let Some(name) = get("list") {
            let items = item["items"].as_sequence().unwrap().iter().map(|v| match v {
                Y::String(s) => s.clone(),
                Y::Number(n) => n.to_string(),
                other => panic!("list item {other:?}"),
            });
            r.lists.insert(name, items.collect());
        } else if let Some(name) = get("macro") {
            r.macros.insert(name, get("condition").unwrap());
        } else if let Some(name) = get("rule") {
            for key in ["desc", "output", "priority", "condition"] {
                assert!(get(key).is_some_and(|v| !v.is_empty()), "rule {name}: no {key}");
            }
            assert_eq!(get("source").as_deref(), Some("bulwark"), "rule {name}: source");
            let tags = item["tags"].as_sequence().unwrap_or_else(|| panic!("rule {name}: no tags"));
            assert!(!tags.is_empty());
            let prio = get("priority").unwrap();
            assert!(
                ["EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL", "DEBUG"]
                    .contains(&prio.as_str()),
                "{name}: {prio}"
            );
            r.rules.push((name, get("condition").unwrap(), get("output").unwrap()));
        }
    }
    r
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Open,
    Close,
    Comma,
    Op(String),
    Word(String),
    Quoted(String),
}

pub fn tokenize(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '(' {
            out.push(Tok::Open);
            i += 1;
        } else if ch == ')' {
            out.push(Tok::Close);
            i += 1;
        } else if ch == ',' {
            out.push(Tok::Comma);
            i += 1;
        } else if ch == '"' || ch == '\'' {
            let end = c[i + 1..].iter().position(|&x| x == ch).unwrap() + i + 1;
            out.push(Tok::Quoted(c[i + 1..end].iter().collect()));
            i = end + 1;
        } else if "=!<>".contains(ch) {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if ["!=", ">=", "<="].contains(&two.as_str()) {
                out.push(Tok::Op(two));
                i += 2;
            } else {
                out.push(Tok::Op(ch.to_string()));
                i += 1;
            }
        } else {
            let start = i;
            while i < c.len() && !c[i].is_whitespace() && !"(),=!<>".contains(c[i]) {
                // Field arguments: proc.aname[2]
                i += 1;
            }
            out.push(Tok::Word(c[start..i].iter().collect()));
        }
    }
    out
}

pub const WORD_OPS: &[&str] = &["in", "startswith", "endswith", "contains", "icontains", "pmatch", "exists"];

pub struct Eval<'a> {
    rules: &'a Rules,
    event: &'a Enriched,
    procs: &'a ProcTable,
    used: &'a mut Vec<String>,
}

impl Eval<'_> {
    fn field(&mut self, name: &str) -> Value {
        self.used.push(name.to_string());
        let (base, arg) = match name.split_once('[') {
            Some((b, a)) => (b, Some(a.trim_end_matches(']').parse::<u64>().unwrap())),
            None => (name, None),
        };
        if base == "evt.num" {
            return Value::U64(1);
        }
        extract(base, arg, self.event, self.procs)
    }

    fn expr(&mut self, t: &[Tok], i: &mut usize) -> bool {
        let mut v = self.and(t, i);
        while matches!(t.get(*i), Some(Tok::Word(w)) if w == "or") {
            *i += 1;
            let r = self.and(t, i);
            v = v || r;
        }
        v
    }

    fn and(&mut self, t: &[Tok], i: &mut usize) -> bool {
        let mut v = self.not(t, i);
        while matches!(t.get(*i), Some(Tok::Word(w)) if w == "and") {
            *i += 1;
            let r = self.not(t, i);
            v = v && r;
        }
        v
    }

    fn not(&mut self, t: &[Tok], i: &mut usize) -> bool {
        if matches!(t.get(*i), Some(Tok::Word(w)) if w == "not") {
            *i += 1;
            return !self.not(t, i);
        }
        self.primary(t, i)
    }

    fn items(&mut self, t: &[Tok], i: &mut usize) -> Vec<String> {
        assert_eq!(t.get(*i), Some(&Tok::Open), "list expected at {i}");
        *i += 1;
        let mut out = Vec::new();
        loop {
            match t.get(*i) {
                Some(Tok::Close) => {
                    *i += 1;
                    return out;
                }
                Some(Tok::Comma) => *i += 1,
                Some(Tok::Word(w)) => {
                    out.extend(self.expand(w));
                    *i += 1;
                }
                Some(Tok::Quoted(q)) => {
                    out.push(q.clone());
                    *i += 1;
                }
                other => panic!("bad list item {other:?}"),
            }
        }
    }

    fn expand(&self, w: &str) -> Vec<String> {
        match self.rules.lists.get(w) {
            Some(items) => items.iter().flat_map(|x| self.expand(x)).collect(),
            None => vec![w.trim_matches('"').to_string()],
        }
    }

    fn primary(&mut self, t: &[Tok], i: &mut usize) -> bool {
        match t.get(*i).cloned() {
            Some(Tok::Open) => {
                *i += 1;
                let v = self.expr(t, i);
                assert_eq!(t.get(*i), Some(&Tok::Close), "unbalanced parentheses");
                *i += 1;
                v
            }
            Some(Tok::Word(w)) => {
                *i += 1;
                let op = match t.get(*i) {
                    Some(Tok::Op(op)) => Some(op.clone()),
                    Some(Tok::Word(op)) if WORD_OPS.contains(&op.as_str()) => Some(op.clone()),
                    _ => None,
                };
                let Some(op) = op else {
                    let cond =
                        self.rules.macros.get(&w).unwrap_or_else(|| panic!("unknown macro or field {w}")).clone();
                    let toks = tokenize(&cond);
                    let mut j = 0;
                    let v = self.expr(&toks, &mut j);
                    assert_eq!(j, toks.len(), "macro {w}: trailing tokens");
                    return v;
                };
                *i += 1;
                let lhs = self.field(&w);
                if op == "exists" {
                    return lhs != Value::None;
                }
                let rhs: Vec<String> = if op == "in" || op == "pmatch" {
                    self.items(t, i)
                } else {
                    let v = match t.get(*i) {
                        Some(Tok::Word(v)) | Some(Tok::Quoted(v)) => v.clone(),
                        other => panic!("value expected after {w} {op}, got {other:?}"),
                    };
                    *i += 1;
                    vec![v]
                };
                compare(&lhs, &op, &rhs)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub fn in_net(a: IpAddr, net: &str) -> bool {
    let (base, bits) = match net.split_once('/') {
        Some((b, n)) => (b, n.parse::<u32>().unwrap()),
        None => (net, if net.contains(':') { 128 } else { 32 }),
    };
    let Ok(base) = base.parse::<IpAddr>() else { return false };
    match (a, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

pub fn compare(lhs: &Value, op: &str, rhs: &[String]) -> bool {
    let one = |r: &str| -> bool {
        match lhs {
            Value::None => false,
            Value::Str(s) => match op {
                "=" | "in" => s == r,
                "!=" => s != r,
                "startswith" => s.starts_with(r),
                "endswith" => s.ends_with(r),
                "contains" => s.contains(r),
                "icontains" => s.to_lowercase().contains(&r.to_lowercase()),
                "pmatch" => s == r || s.starts_with(&format!("{}/", r.trim_end_matches('/'))),
                _ => panic!("operator {op} on a string"),
            },
            Value::U64(v) => {
                let r: i128 = r.parse().unwrap_or_else(|_| panic!("number expected, got {r}"));
                let v = *v as i128;
                match op {
                    "=" | "in" => v == r,
                    "!=" => v != r,
                    ">=" => v >= r,
                    "<=" => v <= r,
                    ">" => v > r,
                    "<" => v < r,
                    _ => panic!("operator {op} on a number"),
                }
            }
            Value::Bool(b) => {
                let r = match r {
                    "true" => true,
                    "false" => false,
                    _ => panic!("bool expected, got {r}"),
                };
                match op {
                    "=" | "in" => *b == r,
                    "!=" => *b != r,
                    _ => panic!("operator {op} on a bool"),
                }
            }
            Value::Ip(a) | Value::Net(a) => match op {
                "=" | "in" => in_net(*a, r),
                "!=" => !in_net(*a, r),
                _ => panic!("operator {op} on an address"),
            },
        }
    };
    match op {
        "in" | "pmatch" => rhs.iter().any(|r| one(r)),
        _ => one(&rhs[0]),
    }
}

pub fn fires(rules: &Rules, rule: &str, events: &[Enriched]) -> bool {
    let (_, cond, _) = rules.rules.iter().find(|r| r.0 == rule).unwrap_or_else(|| panic!("no rule {rule}"));
    let mut procs = ProcTable::new(1024);
    let mut used = Vec::new();
    let mut last = false;
    for e in events {
        procs.observe(e);
        let toks = tokenize(cond);
        let mut i = 0;
        last = Eval { rules, event: e, procs: &procs, used: &mut used }.expr(&toks, &mut i);
        assert_eq!(i, toks.len(), "{rule}: trailing tokens at {i}");
    }
    last
}

pub fn known(field: &str) -> bool {
    let base = field.split('[').next().unwrap_or(field);
    FIELDS.iter().any(|f| f.0 == base && (f.2 || !field.contains('['))) || FALCO_FIELDS.contains(&base)
}
