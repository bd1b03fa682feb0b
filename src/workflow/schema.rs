//! The workflow file as written: dstack's `docker` provider format plus Docker-run options (docker-py names).
//! Strict (unknown keys are errors) and span-aware, so every later check can point at `file:line:col`.
//!
//! Several keys accept more than one shape (`environment` as a map or a list, `artifacts` items as a path or a
//! map …). serde's `untagged` enums would lose both the location and the precise message, so those go through
//! [`flex`], a visitor that dispatches on the YAML node kind and names every accepted shape when none matches.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, value::MapAccessDeserializer, value::SeqAccessDeserializer, Deserializer, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    pub workflows: Vec<Workflow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: S<String>,
    #[serde(default)]
    pub provider: Option<S<String>>,
    pub image: S<String>,
    #[serde(default)]
    pub entrypoint: Option<S<StringOrList>>,
    #[serde(default)]
    pub commands: Option<Vec<String>>,
    #[serde(default)]
    pub command: Option<S<StringOrList>>,
    #[serde(default)]
    pub before_run: Option<Vec<String>>,
    #[serde(default)]
    pub requirements: Option<S<String>>,
    #[serde(default)]
    pub version: Option<S<Scalar>>,
    #[serde(default)]
    pub environment: Option<Environment>,
    #[serde(default)]
    pub working_dir: Option<S<String>>,
    #[serde(default)]
    pub artifacts: Vec<S<Artifact>>,
    #[serde(default)]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub deps: Vec<S<String>>,
    // Docker-run options (docker-py's `containers.run` names).
    #[serde(default)]
    pub user: Option<S<Scalar>>,
    #[serde(default)]
    pub volumes: Option<Volumes>,
    #[serde(default)]
    pub hostname: Option<S<String>>,
    #[serde(default)]
    pub cap_add: Vec<S<String>>,
    #[serde(default)]
    pub cap_drop: Vec<S<String>>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub network_mode: Option<S<String>>,
    #[serde(default)]
    pub tmpfs: Option<Tmpfs>,
    #[serde(default)]
    pub ulimits: Vec<S<UlimitEntry>>,
    #[serde(default)]
    pub shm_size: Option<S<Scalar>>,
    #[serde(default)]
    pub mem_limit: Option<S<Scalar>>,
    #[serde(default)]
    pub labels: Option<Labels>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu: Option<S<Scalar>>,
    #[serde(default)]
    pub memory: Option<S<Scalar>>,
    #[serde(default)]
    pub shm_size: Option<S<Scalar>>,
    #[serde(default)]
    pub gpu: Option<S<Gpu>>,
    #[serde(default)]
    pub interruptible: Option<S<bool>>,
    #[serde(default)]
    pub local: Option<S<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuMap {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub memory: Option<S<Scalar>>,
}

/// `gpu: 2` or `gpu: {name, count, memory}`.
#[derive(Debug)]
pub enum Gpu {
    Count(u32),
    Spec(GpuMap),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactMap {
    pub path: String,
    #[serde(default)]
    pub mount: bool,
}

/// `- ./output` or `- {path: ./output, mount: true}`.
#[derive(Debug)]
pub struct Artifact {
    pub path: String,
    pub mount: bool,
}

/// A string, or a list of strings (`entrypoint`, `command`).
#[derive(Debug, Clone)]
pub enum StringOrList {
    String(String),
    List(Vec<String>),
}

/// Any YAML scalar, kept as the text it was written as (`1`, `"16GB"`, `3.10`, `true`).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

/// `environment`: a map, or a list of `KEY=VALUE`; values may use `${VAR}` (resolved later, with locations).
#[derive(Debug)]
pub enum Environment {
    Map(Vec<(String, S<Scalar>)>),
    List(Vec<S<String>>),
}

/// `volumes`: `["SRC:DST[:ro]", …]` or docker-py's `{SRC: {bind: DST, mode: ro}}`.
#[derive(Debug)]
pub enum Volumes {
    List(Vec<S<String>>),
    Map(Vec<(String, S<VolumeBind>)>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeBind {
    pub bind: String,
    #[serde(default)]
    pub mode: Option<String>,
}

/// `tmpfs`: `["/path[:options]", …]` or `{/path: options}`.
#[derive(Debug)]
pub enum Tmpfs {
    List(Vec<S<String>>),
    Map(Vec<(String, Scalar)>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UlimitMap {
    pub name: String,
    pub soft: i64,
    #[serde(default)]
    pub hard: Option<i64>,
}

/// `ulimits` items: docker-py's `{name, soft, hard}` or the CLI's `NAME=SOFT[:HARD]`.
#[derive(Debug)]
pub enum UlimitEntry {
    Text(String),
    Map(UlimitMap),
}

/// `labels`: a map or a list of `KEY=VALUE`.
#[derive(Debug)]
pub enum Labels {
    Map(Vec<(String, Scalar)>),
    List(Vec<String>),
}

// ---- shape dispatch ----

/// What one YAML node kind turns into (or `None`: that kind is not accepted here).
struct Flex<T, L, M> {
    what: &'static str,
    scalar: Option<fn(String) -> T>,
    list: Option<fn(L) -> T>,
    map: Option<fn(M) -> T>,
    _p: PhantomData<(L, M)>,
}

impl<'de, T, L: Deserialize<'de>, M: Deserialize<'de>> Visitor<'de> for Flex<T, L, M> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match self.scalar {
            Some(s) => Ok(s(v.to_string())),
            None => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        match self.scalar {
            Some(s) => Ok(s(v.to_string())),
            None => Err(E::invalid_type(de::Unexpected::Bool(v), &self)),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match self.scalar {
            Some(s) => Ok(s(v.to_string())),
            None => Err(E::invalid_type(de::Unexpected::Signed(v), &self)),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match self.scalar {
            Some(s) => Ok(s(v.to_string())),
            None => Err(E::invalid_type(de::Unexpected::Unsigned(v), &self)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        match self.scalar {
            Some(s) => Ok(s(v.to_string())),
            None => Err(E::invalid_type(de::Unexpected::Float(v), &self)),
        }
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        match self.list {
            Some(l) => Ok(l(L::deserialize(SeqAccessDeserializer::new(seq))?)),
            None => Err(de::Error::invalid_type(de::Unexpected::Seq, &self)),
        }
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        match self.map {
            Some(m) => Ok(m(M::deserialize(MapAccessDeserializer::new(map))?)),
            None => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
        }
    }
}

fn flex<'de, D: Deserializer<'de>, T, L: Deserialize<'de>, M: Deserialize<'de>>(
    d: D,
    what: &'static str,
    scalar: Option<fn(String) -> T>,
    list: Option<fn(L) -> T>,
    map: Option<fn(M) -> T>,
) -> Result<T, D::Error> {
    d.deserialize_any(Flex {
        what,
        scalar,
        list,
        map,
        _p: PhantomData,
    })
}

/// A map deserialised in file order (keys as text).
#[derive(Debug)]
struct Ordered<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Scalar>()? {
                    out.push((k.0, map.next_value()?));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

type Never = de::IgnoredAny;

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Never, Never>(d, "a single value (text or a number)", Some(Scalar), None, None)
    }
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Vec<String>, Never>(
            d,
            "a string or a list of strings",
            Some(StringOrList::String),
            Some(StringOrList::List),
            None,
        )
    }
}

impl<'de> Deserialize<'de> for Gpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let count = |s: String| match s.parse() {
            Ok(n) => Gpu::Count(n),
            // Kept for the validator to report with the location: a name alone, e.g. `gpu: K80`.
            Err(_) => Gpu::Spec(GpuMap {
                name: Some(s),
                ..Default::default()
            }),
        };
        flex::<_, _, Never, GpuMap>(
            d,
            "a GPU count or a map with name, count and memory",
            Some(count),
            None,
            Some(Gpu::Spec),
        )
    }
}

impl<'de> Deserialize<'de> for Artifact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Never, ArtifactMap>(
            d,
            "a path or a map with path and mount",
            Some(|path| Artifact { path, mount: false }),
            None,
            Some(|m| Artifact {
                path: m.path,
                mount: m.mount,
            }),
        )
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Vec<S<String>>, Ordered<S<Scalar>>>(
            d,
            "a map of variables or a list of KEY=VALUE",
            None,
            Some(Environment::List),
            Some(|m| Environment::Map(m.0)),
        )
    }
}

impl<'de> Deserialize<'de> for Volumes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Vec<S<String>>, Ordered<S<VolumeBind>>>(
            d,
            "a list of SRC:DST[:ro] or a map of SRC: {bind, mode}",
            None,
            Some(Volumes::List),
            Some(|m| Volumes::Map(m.0)),
        )
    }
}

impl<'de> Deserialize<'de> for Tmpfs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Vec<S<String>>, Ordered<Scalar>>(
            d,
            "a list of /PATH[:OPTIONS] or a map of /PATH: OPTIONS",
            None,
            Some(Tmpfs::List),
            Some(|m| Tmpfs::Map(m.0)),
        )
    }
}

impl<'de> Deserialize<'de> for UlimitEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Never, UlimitMap>(
            d,
            "NAME=SOFT[:HARD] or a map with name, soft and hard",
            Some(UlimitEntry::Text),
            None,
            Some(UlimitEntry::Map),
        )
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        flex::<_, _, Vec<String>, Ordered<Scalar>>(
            d,
            "a map of labels or a list of KEY=VALUE",
            None,
            Some(Labels::List),
            Some(|m| Labels::Map(m.0)),
        )
    }
}
