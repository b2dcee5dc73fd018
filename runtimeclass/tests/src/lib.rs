//! Offline checks of the Kubernetes manifests in `runtimeclass/`: the admission policies' CEL
//! evaluated with a real Kubernetes CEL implementation (`kube-cel`, the kube-rs project's port
//! of the apiserver's CEL libraries on the `cel` crate), and the manifests validated against
//! the Kubernetes OpenAPI schemas (`kubernetes-validate`, PyPI).
//!
//! The policy is evaluated the way the API server does it: `object`, `oldObject` (null on
//! CREATE), `namespaceObject` and `request` bound; the policy's `variables` evaluated in order
//! and bound as `variables.<name>`; each validation's `expression` (false: denied, with its
//! `messageExpression`, else `message`); each mutation's JSONPatch expression, whose patches are
//! then applied to the object (RFC 6902, `json-patch`). Evaluation errors fail the test: the API
//! server would refuse the pod (failurePolicy: Fail), and a policy that errors on a sample pod is
//! a bug.
//!
//! Where the library falls short of the API server, and what is done about it:
//! - kube-cel's own `VapEvaluator` escapes every JSON key (`bulwark.io/tenant` becomes
//!   `bulwark__dot__io__slash__tenant`), which the API server does only for schema property
//!   names, never for map keys such as labels and annotations; so the values are converted here
//!   without escaping (the policies use no property name that would need it).
//! - `cel` 0.13 parses but cannot evaluate typed object construction (`JSONPatch{op: ...}`);
//!   [`jsonpatch_literals_to_maps`] rewrites those literals into the equivalent map literals
//!   (`{"op": ...}`) before compiling, and nothing else.
//! - No type checking against the Pod schema (the API server reports type errors in the
//!   policy's status): the policies avoid constructs whose typing is in doubt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kube_cel::cel::objects::{Key, Map};
use kube_cel::cel::{Context, Program, Value};
use kube_cel::KubeCelExt;
use serde_json::{json, Value as Json};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// `runtimeclass/<rel>`.
pub fn manifest_path(rel: &str) -> PathBuf {
    repo_root().join("runtimeclass").join(rel)
}

/// The YAML documents of `runtimeclass/<rel>`, as JSON (empty documents skipped).
pub fn load_docs(rel: &str) -> Vec<Json> {
    use serde::Deserialize;
    let path = manifest_path(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Json::deserialize(d).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The one document of `kind` in `docs`.
pub fn doc<'a>(docs: &'a [Json], kind: &str) -> &'a Json {
    let found: Vec<&Json> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}, found {}", found.len());
    found[0]
}

/// JSON to a CEL value, keys unescaped (see the crate docs).
pub fn json_to_cel(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Json::Object(o) => {
            let map: HashMap<Key, Value> =
                o.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v))).collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A CEL value back to JSON (the values a JSONPatch expression produces).
pub fn cel_to_json(v: &Value) -> Result<Json, String> {
    Ok(match v {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        Value::List(l) => Json::Array(l.iter().map(cel_to_json).collect::<Result<_, _>>()?),
        Value::Map(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m.map.iter() {
                let Key::String(k) = k else { return Err(format!("map key {k:?} is not a string")) };
                o.insert(k.to_string(), cel_to_json(v)?);
            }
            Json::Object(o)
        }
        other => return Err(format!("{other:?} has no JSON form")),
    })
}

fn cel_map(entries: Vec<(String, Value)>) -> Value {
    Value::Map(Map { map: Arc::new(entries.into_iter().map(|(k, v)| (Key::String(Arc::new(k)), v)).collect()) })
}

/// Rewrites `JSONPatch{op: X, path: Y, value: Z}` into `{"op": X, "path": Y, "value": Z}`: the
/// same value, in a form `cel` 0.13 evaluates. Field names are quoted only at the literal's own
/// nesting level and outside string literals. Returns the rewritten text and how many literals
/// were rewritten.
pub fn jsonpatch_literals_to_maps(expr: &str) -> (String, usize) {
    const OPEN: &str = "JSONPatch{";
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len());
    let mut count = 0;
    // Brace depth at which each open JSONPatch literal's fields live.
    let mut literal_depths: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut expect_field = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            // A string literal: copied verbatim (backslash escapes honoured).
            let q = c;
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == '\\' && i + 1 < chars.len() {
                    out.push(chars[i + 1]);
                    i += 2;
                    continue;
                }
                i += 1;
                if chars[i - 1] == q {
                    break;
                }
            }
            continue;
        }
        if chars[i..].iter().collect::<String>().starts_with(OPEN)
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == '.'))
        {
            out.push('{');
            depth += 1;
            literal_depths.push(depth);
            count += 1;
            expect_field = true;
            i += OPEN.len();
            continue;
        }
        if expect_field && c.is_whitespace() {
            out.push(c);
            i += 1;
            continue;
        }
        if expect_field && (c.is_alphabetic() || c == '_') {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            out.push('"');
            out.push_str(&name);
            out.push('"');
            expect_field = false;
            continue;
        }
        expect_field = false;
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => {
                if literal_depths.last() == Some(&depth) {
                    literal_depths.pop();
                }
                depth = depth.saturating_sub(1);
            }
            ',' if literal_depths.last() == Some(&depth) => expect_field = true,
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    (out, count)
}

/// One admission request to a pod, as the API server presents it to a policy.
#[derive(Debug, Clone)]
pub struct Request {
    /// "CREATE" or "UPDATE".
    pub operation: &'static str,
    /// "" or e.g. "ephemeralcontainers".
    pub sub_resource: &'static str,
    pub object: Json,
    /// The pod before an UPDATE.
    pub old_object: Option<Json>,
    /// The pod's namespace (a Namespace object).
    pub namespace: Json,
}

impl Request {
    pub fn create(object: Json, namespace: Json) -> Request {
        Request { operation: "CREATE", sub_resource: "", object, old_object: None, namespace }
    }

    pub fn update(old: Json, object: Json, namespace: Json) -> Request {
        Request { operation: "UPDATE", sub_resource: "", object, old_object: Some(old), namespace }
    }

    fn request_value(&self) -> Json {
        let ns = self.namespace["metadata"]["name"].as_str().unwrap_or_default();
        json!({
            "operation": self.operation,
            "namespace": ns,
            "name": self.object["metadata"]["name"],
            "subResource": self.sub_resource,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "userInfo": {"username": "tenant-user", "groups": ["system:authenticated"]},
            "dryRun": false,
        })
    }

    /// The CEL context: `object`, `oldObject`, `namespaceObject`, `request`, the Kubernetes CEL
    /// libraries, and the policy's `variables` evaluated in order.
    fn context(&self, spec: &Json) -> Result<Context<'static>, String> {
        let mut ctx = Context::default().with_all();
        ctx.add_variable_from_value("object", json_to_cel(&self.object));
        ctx.add_variable_from_value("oldObject", self.old_object.as_ref().map(json_to_cel).unwrap_or(Value::Null));
        ctx.add_variable_from_value("namespaceObject", json_to_cel(&self.namespace));
        ctx.add_variable_from_value("request", json_to_cel(&self.request_value()));
        let mut vars: Vec<(String, Value)> = Vec::new();
        ctx.add_variable_from_value("variables", cel_map(vec![]));
        for v in spec["variables"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().ok_or("a variable without a name")?;
            let expr = v["expression"].as_str().ok_or_else(|| format!("variable {name} has no expression"))?;
            let value = eval(&ctx, expr).map_err(|e| format!("variable {name}: {e}"))?;
            vars.push((name.to_string(), value));
            ctx.add_variable_from_value("variables", cel_map(vars.clone()));
        }
        Ok(ctx)
    }
}

/// Compiles and runs one expression.
pub fn eval(ctx: &Context, expr: &str) -> Result<Value, String> {
    let program = Program::compile(expr).map_err(|e| format!("{expr:?} does not compile: {e}"))?;
    program.execute(ctx).map_err(|e| format!("{expr:?} failed: {e}"))
}

/// What a ValidatingAdmissionPolicy says: the messages of the validations that failed (empty:
/// admitted). Errors (an expression that does not compile, fails or yields no bool) are `Err`.
pub fn validate(policy: &Json, req: &Request) -> Result<Vec<String>, String> {
    let spec = &policy["spec"];
    let ctx = req.context(spec)?;
    let mut denied = Vec::new();
    for (i, v) in spec["validations"].as_array().ok_or("no validations")?.iter().enumerate() {
        let expr = v["expression"].as_str().ok_or_else(|| format!("validation {i} has no expression"))?;
        match eval(&ctx, expr)? {
            Value::Bool(true) => {}
            Value::Bool(false) => {
                let msg = match v["messageExpression"].as_str() {
                    Some(me) => match eval(&ctx, me)? {
                        Value::String(s) => s.to_string(),
                        other => return Err(format!("messageExpression of validation {i} gave {other:?}")),
                    },
                    None => v["message"].as_str().ok_or_else(|| format!("validation {i} has no message"))?.to_string(),
                };
                denied.push(msg);
            }
            other => return Err(format!("validation {i} ({expr:?}) gave {other:?}, not a bool")),
        }
    }
    Ok(denied)
}

/// What a MutatingAdmissionPolicy (JSONPatch mutations) makes of the pod: each mutation's
/// patches, evaluated against the object as the previous mutations left it, then applied.
pub fn mutate(policy: &Json, req: &Request) -> Result<Json, String> {
    let spec = &policy["spec"];
    let mut req = req.clone();
    for (i, m) in spec["mutations"].as_array().ok_or("no mutations")?.iter().enumerate() {
        if m["patchType"] != "JSONPatch" {
            return Err(format!("mutation {i}: patchType {} (only JSONPatch is evaluated here)", m["patchType"]));
        }
        let expr = m["jsonPatch"]["expression"].as_str().ok_or_else(|| format!("mutation {i} has no expression"))?;
        let (rewritten, n) = jsonpatch_literals_to_maps(expr);
        if n == 0 {
            return Err(format!("mutation {i}: no JSONPatch literal in {expr:?}"));
        }
        let ctx = req.context(spec)?;
        let patches = cel_to_json(&eval(&ctx, &rewritten)?)?;
        let patch: json_patch::Patch = serde_json::from_value(patches.clone())
            .map_err(|e| format!("mutation {i}: {patches} is not a JSON patch: {e}"))?;
        json_patch::patch(&mut req.object, &patch).map_err(|e| format!("mutation {i}: applying {patches}: {e}"))?;
    }
    Ok(req.object)
}

/// Whether a binding's `namespaceSelector` (matchLabels and matchExpressions) selects a
/// namespace with these labels.
pub fn selector_matches(selector: &Json, labels: &Json) -> bool {
    let label = |k: &str| labels.get(k).and_then(Json::as_str);
    let labels_ok =
        selector["matchLabels"].as_object().map(|m| m.iter().all(|(k, v)| label(k) == v.as_str())).unwrap_or(true);
    let exprs_ok = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Json::as_str).collect();
        match e["operator"].as_str() {
            Some("In") => label(key).is_some_and(|v| values.contains(&v)),
            Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
            Some("Exists") => label(key).is_some(),
            Some("DoesNotExist") => label(key).is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The `kubernetes-validate` program: `$BULWARK_KUBERNETES_VALIDATE`, else the one that
/// `scripts/lib/deps.sh` installs into `$BULWARK_CACHE/venv`, else the one on PATH.
pub fn kubernetes_validate() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BULWARK_KUBERNETES_VALIDATE") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("BULWARK_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/bulwark")
    });
    let venv = cache.join("venv/bin/kubernetes-validate");
    if venv.is_file() {
        return Ok(venv);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("kubernetes-validate"))
        .find(|p| p.is_file());
    on_path.ok_or_else(|| {
        format!(
            "kubernetes-validate not found (neither $BULWARK_KUBERNETES_VALIDATE, {} nor on PATH); install it with: \
             . scripts/lib/deps.sh && bulwark_install_python_tools",
            venv.display()
        )
    })
}

/// Runs `kubernetes-validate --strict -k VERSION` on a manifest file; `Err` with its output
/// when it rejects a document, finds no schema for one, or cannot run.
pub fn schema_check(path: &Path, version: &str) -> Result<String, String> {
    let bin = kubernetes_validate()?;
    let out = Command::new(&bin)
        .args(["--strict", "--kubernetes-version", version])
        .arg(path)
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || text.contains("ERROR") || text.contains("Couldn't find schema") {
        return Err(format!("kubernetes-validate --strict -k {version} {}:\n{text}", path.display()));
    }
    Ok(text)
}
