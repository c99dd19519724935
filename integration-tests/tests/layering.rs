//! The workspace's layering, checked from its sources:
//! - no import circles among the files of any crate: every file's references to other files
//!   of its crate (`use` trees, paths in code and in macro arguments, resolved through
//!   `crate::`, `super::`, `self::` and child modules) form a graph, and that graph must have
//!   no cycle;
//! - the crate graph points one way: storage-side crates never depend on the broker, the
//!   managed ledger never on the Pulsar protocol or any client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is a failure

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A crate's module tree: module path -> the file that holds it, and each module's children.
#[derive(Default)]
struct Modules {
    file_of: BTreeMap<Vec<String>, PathBuf>,
    children: HashMap<Vec<String>, BTreeSet<String>>,
    /// Files and the module path each one starts at.
    files: Vec<(PathBuf, Vec<String>)>,
    /// `pub use` re-exports: (module, name) -> the absolute path it stands for.
    reexports: HashMap<(Vec<String>, String), Vec<String>>,
}

impl Modules {
    /// Walks the module tree from a crate root file.
    fn load(root: &Path) -> Modules {
        let mut m = Modules::default();
        m.add_file(root, Vec::new());
        // re-exports are resolved once every module is known
        let mut reexports = HashMap::new();
        for (file, module) in &m.files {
            let parsed =
                syn::parse_file(&std::fs::read_to_string(file).expect("read")).expect("parse");
            let mut r = Refs {
                modules: &m,
                at: module.clone(),
                found: Vec::new(),
                reexports: Some(Vec::new()),
            };
            r.visit_file(&parsed);
            for (at, name, target) in r.reexports.unwrap_or_default() {
                reexports.insert((at, name), target);
            }
        }
        m.reexports = reexports;
        m
    }

    fn add_file(&mut self, file: &Path, module: Vec<String>) {
        let src = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let parsed =
            syn::parse_file(&src).unwrap_or_else(|e| panic!("parse {}: {e}", file.display()));
        self.files.push((file.to_path_buf(), module.clone()));
        self.file_of.insert(module.clone(), file.to_path_buf());
        let dir = child_dir(file);
        self.add_items(&parsed.items, file, &dir, module);
    }

    fn add_items(&mut self, items: &[syn::Item], file: &Path, dir: &Path, module: Vec<String>) {
        for item in items {
            let syn::Item::Mod(m) = item else { continue };
            let name = m.ident.to_string();
            self.children
                .entry(module.clone())
                .or_default()
                .insert(name.clone());
            let mut child = module.clone();
            child.push(name.clone());
            match &m.content {
                // inline: part of this file
                Some((_, items)) => {
                    self.file_of.insert(child.clone(), file.to_path_buf());
                    self.add_items(items, file, &dir.join(&name), child);
                }
                None => {
                    let flat = dir.join(format!("{name}.rs"));
                    let nested = dir.join(&name).join("mod.rs");
                    let path = if flat.exists() { flat } else { nested };
                    self.add_file(&path, child);
                }
            }
        }
    }

    /// The file holding the item a module path names (its longest module prefix), seen
    /// through re-exports: `crate::X` re-exported from `a::X` is `a`'s.
    fn file_for(&self, path: &[String]) -> Option<&PathBuf> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let n = (0..=path.len())
                .rev()
                .find(|n| self.file_of.contains_key(&path[..*n]))?;
            let followed = path.get(n).and_then(|name| {
                self.reexports
                    .get(&(path[..n].to_vec(), name.clone()))
                    .map(|target| [target.clone(), path[n + 1..].to_vec()].concat())
            });
            match followed {
                Some(p) if p != path => path = p,
                _ => return self.file_of.get(&path[..n]),
            }
        }
        None
    }
}

/// Where the files of a file's child modules live.
fn child_dir(file: &Path) -> PathBuf {
    let dir = file.parent().expect("a file in a directory").to_path_buf();
    match file.file_name().and_then(|n| n.to_str()) {
        Some("lib.rs" | "main.rs" | "mod.rs") => dir,
        _ if file.parent().is_some_and(|p| p.ends_with("bin")) => dir,
        _ => dir.join(file.file_stem().expect("a file name")),
    }
}

/// A `pub use`: the module it is in, the name it gives, the path that name stands for.
type Reexport = (Vec<String>, String, Vec<String>);

/// Collects the module paths one file refers to.
struct Refs<'a> {
    modules: &'a Modules,
    /// The module the code being visited is in (inline modules included).
    at: Vec<String>,
    found: Vec<Vec<String>>,
    /// When collecting re-exports: (module, name, target) of each `pub use`.
    reexports: Option<Vec<Reexport>>,
}

impl Refs<'_> {
    /// Resolves a path's leading segments to an absolute module path, if it points inside
    /// the crate.
    fn resolve(&self, segs: &[String]) -> Option<Vec<String>> {
        let first = segs.first()?;
        match first.as_str() {
            "crate" => Some(segs[1..].to_vec()),
            "self" => Some([self.at.clone(), segs[1..].to_vec()].concat()),
            "super" => {
                let mut base = self.at.clone();
                let mut rest = segs;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                Some([base, rest.to_vec()].concat())
            }
            name if self
                .modules
                .children
                .get(&self.at)
                .is_some_and(|c| c.contains(name)) =>
            {
                Some([self.at.clone(), segs.to_vec()].concat())
            }
            _ => None,
        }
    }

    fn note(&mut self, segs: Vec<String>) {
        if let Some(p) = self.resolve(&segs) {
            self.found.push(p);
        }
    }

    fn use_tree(&mut self, prefix: Vec<String>, tree: &syn::UseTree) {
        let with = |s: &syn::Ident| {
            let mut p = prefix.clone();
            p.push(s.to_string());
            p
        };
        match tree {
            syn::UseTree::Path(p) => self.use_tree(with(&p.ident), &p.tree),
            syn::UseTree::Name(n) => self.note(with(&n.ident)),
            syn::UseTree::Rename(r) => self.note(with(&r.ident)),
            syn::UseTree::Glob(_) => self.note(prefix),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix.clone(), t);
                }
            }
        }
    }

    /// `crate::a::b`, `super::a` and `self::a` inside macro arguments (format!, info!, ...).
    fn tokens(&mut self, ts: TokenStream) {
        let flat: Vec<TokenTree> = ts.into_iter().collect();
        let mut i = 0;
        while i < flat.len() {
            if let TokenTree::Group(g) = &flat[i] {
                self.tokens(g.stream());
            }
            let starts = matches!(&flat[i], TokenTree::Ident(id)
                if id == "crate" || id == "super" || id == "self");
            if starts {
                let mut segs = vec![flat[i].to_string()];
                let mut j = i + 1;
                while let (
                    Some(TokenTree::Punct(a)),
                    Some(TokenTree::Punct(b)),
                    Some(TokenTree::Ident(id)),
                ) = (flat.get(j), flat.get(j + 1), flat.get(j + 2))
                {
                    if a.as_char() != ':' || b.as_char() != ':' {
                        break;
                    }
                    segs.push(id.to_string());
                    j += 3;
                }
                if segs.len() > 1 {
                    self.note(segs);
                }
                i = j;
                continue;
            }
            i += 1;
        }
    }
}

/// The names a use tree brings in, with the path each stands for (globs left out).
fn use_leaves(prefix: Vec<String>, tree: &syn::UseTree, out: &mut Vec<(String, Vec<String>)>) {
    let with = |s: &syn::Ident| {
        let mut p = prefix.clone();
        p.push(s.to_string());
        p
    };
    match tree {
        syn::UseTree::Path(p) => use_leaves(with(&p.ident), &p.tree, out),
        syn::UseTree::Name(n) => out.push((n.ident.to_string(), with(&n.ident))),
        syn::UseTree::Rename(r) => out.push((r.rename.to_string(), with(&r.ident))),
        syn::UseTree::Glob(_) => {}
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_leaves(prefix.clone(), t, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if let Some((_, items)) = &m.content {
            self.at.push(m.ident.to_string());
            for it in items {
                self.visit_item(it);
            }
            self.at.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        if self.reexports.is_some() {
            if public {
                let mut leaves = Vec::new();
                use_leaves(Vec::new(), &u.tree, &mut leaves);
                let found: Vec<_> = leaves
                    .into_iter()
                    .filter_map(|(name, path)| {
                        self.resolve(&path).map(|t| (self.at.clone(), name, t))
                    })
                    .collect();
                if let Some(out) = self.reexports.as_mut() {
                    out.extend(found);
                }
            }
            return;
        }
        // a re-export is plumbing, not a use: who uses the name depends on its source
        if !public {
            self.use_tree(Vec::new(), &u.tree);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segs.len() > 1 {
            self.note(segs);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// File -> files it refers to, for one crate root.
fn file_graph(root: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let modules = Modules::load(root);
    let mut graph = BTreeMap::new();
    for (file, module) in &modules.files {
        let src = std::fs::read_to_string(file).expect("read");
        let parsed = syn::parse_file(&src).expect("parse");
        let mut refs = Refs {
            modules: &modules,
            at: module.clone(),
            found: Vec::new(),
            reexports: None,
        };
        refs.visit_file(&parsed);
        let targets: BTreeSet<PathBuf> = refs
            .found
            .iter()
            .filter_map(|p| modules.file_for(p))
            .filter(|t| *t != file)
            .cloned()
            .collect();
        graph.insert(file.clone(), targets);
    }
    graph
}

/// Strongly connected groups of more than one file (Tarjan).
fn cycles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'g> {
        g: &'g BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: HashMap<&'g PathBuf, usize>,
        low: HashMap<&'g PathBuf, usize>,
        stack: Vec<&'g PathBuf>,
        on: BTreeSet<&'g PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g PathBuf) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    group.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = T {
        g: graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

/// Every crate root of the workspace: lib.rs, main.rs and src/bin/*.rs of each member.
fn crate_roots() -> Vec<PathBuf> {
    let ws = workspace();
    let manifest = std::fs::read_to_string(ws.join("Cargo.toml")).expect("workspace manifest");
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .expect("workspace members");
    let mut roots = Vec::new();
    for m in members.split(',') {
        let m = m.trim().trim_matches('"');
        if m.is_empty() {
            continue;
        }
        let src = ws.join(m).join("src");
        for f in ["lib.rs", "main.rs"] {
            if src.join(f).exists() {
                roots.push(src.join(f));
            }
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            for b in bins.flatten() {
                if b.path().extension().is_some_and(|e| e == "rs") {
                    roots.push(b.path());
                }
            }
        }
    }
    roots
}

#[test]
fn no_crate_has_an_import_circle() {
    let ws = workspace();
    let mut found = Vec::new();
    let roots = crate_roots();
    assert!(roots.len() >= 8, "crate roots found: {roots:?}");
    for root in roots {
        for group in cycles(&file_graph(&root)) {
            let names: Vec<String> = group
                .iter()
                .map(|p| p.strip_prefix(&ws).unwrap_or(p).display().to_string())
                .collect();
            found.push(names.join(" <-> "));
        }
    }
    assert!(
        found.is_empty(),
        "files that import each other (directly or around a circle):\n  {}",
        found.join("\n  ")
    );
    // the checker sees real edges (a graph with none would pass above)
    let broker = file_graph(&ws.join("broker/src/lib.rs"));
    let f = |p: &str| ws.join("broker/src").join(p);
    assert!(broker[&f("protocol/connection.rs")].contains(&f("service.rs")));
    assert!(broker[&f("topic/mod.rs")].contains(&f("topic/subscription.rs")));
    // topics and the cluster side reach connections and HTTP only through their seams
    for (file, targets) in &broker {
        if file.starts_with(f("topic")) || file.starts_with(f("cluster")) {
            for t in targets {
                assert!(
                    !t.starts_with(f("protocol")) && !t.starts_with(f("http")),
                    "{} imports {}",
                    file.display(),
                    t.display()
                );
            }
        }
    }
}

#[test]
fn the_checker_sees_a_circle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A(B);\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "pub struct B;\nfn f() { super::c::g(); }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("c.rs"),
        "pub fn g() { tracing::info!(x = ?crate::a::A); }\n",
    )
    .unwrap();
    let found = cycles(&file_graph(&src.join("lib.rs")));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 3);
    // a name used through the crate root's re-export belongs to the file defining it
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use a::A;\n").unwrap();
    std::fs::write(src.join("a.rs"), "pub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::A;\npub fn f(_: A) {}\n").unwrap();
    let g = file_graph(&src.join("lib.rs"));
    assert_eq!(g[&src.join("b.rs")], BTreeSet::from([src.join("a.rs")]));
    assert!(g[&src.join("lib.rs")].is_empty());
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    // a test module inside a file is that file
    std::fs::write(
        src.join("c.rs"),
        "pub fn g() {}\n#[cfg(test)]\nmod tests { use super::*; }\n",
    )
    .unwrap();
    assert!(cycles(&file_graph(&src.join("lib.rs"))).is_empty());
}

/// The `[dependencies]` of a member (not dev-dependencies: tests may reach further).
fn dependencies(member: &str) -> Vec<String> {
    let manifest =
        std::fs::read_to_string(workspace().join(member).join("Cargo.toml")).expect("manifest");
    let deps = manifest
        .split("\n[dependencies]")
        .nth(1)
        .map(|s| s.split("\n[").next().unwrap_or(""))
        .unwrap_or("");
    deps.lines()
        .filter_map(|l| l.split(['=', '.', ' ']).next())
        .filter(|n| n.starts_with("magnetar-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn crates_depend_one_way() {
    let rules: &[(&str, &[&str])] = &[
        ("meta", &[]),
        ("bookie", &["magnetar-meta"]),
        ("managed-ledger", &["magnetar-meta", "magnetar-bookie"]),
        // the tier plugs into the managed ledger's seams, never the other way round
        (
            "tiering",
            &[
                "magnetar-managed-ledger",
                "magnetar-bookie",
                "magnetar-meta",
            ],
        ),
        ("clients/protocol", &[]),
        ("clients/rust", &["magnetar-protocol"]),
    ];
    for (member, allowed) in rules {
        for dep in dependencies(member) {
            assert!(
                allowed.contains(&dep.as_str()),
                "{member} depends on {dep}; it may depend only on {allowed:?}"
            );
        }
    }
    assert!(dependencies("broker").contains(&"magnetar-managed-ledger".to_string()));
}
