//! Keys with more than one shape (`environment` as a map or a list, `artifacts` items as a path or a map …): a
//! visitor that dispatches on the YAML node kind, so each error keeps its location and names every accepted shape.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, value::MapAccessDeserializer, value::SeqAccessDeserializer, Deserializer, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    Artifact, ArtifactMap, BlkioEntry, BlkioMap, Environment, ExtraHosts, Gpu, GpuMap, KeyValues, Labels, MountEntry,
    MountMap, RestartEntry, RestartMap, Scalar, StringOrList, Tmpfs, UlimitEntry, UlimitMap, VolumeBind, Volumes,
};

/// What one YAML node kind turns into (or `None`: that kind is not accepted here).
struct ShapeVisitor<T, L, M> {
    what: &'static str,
    scalar: Option<fn(String) -> T>,
    list: Option<fn(L) -> T>,
    map: Option<fn(M) -> T>,
    _shapes: PhantomData<(L, M)>,
}

impl<'de, T, L: Deserialize<'de>, M: Deserialize<'de>> Visitor<'de> for ShapeVisitor<T, L, M> {
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

fn by_shape<'de, D: Deserializer<'de>, T, L: Deserialize<'de>, M: Deserialize<'de>>(
    d: D,
    what: &'static str,
    scalar: Option<fn(String) -> T>,
    list: Option<fn(L) -> T>,
    map: Option<fn(M) -> T>,
) -> Result<T, D::Error> {
    d.deserialize_any(ShapeVisitor {
        what,
        scalar,
        list,
        map,
        _shapes: PhantomData,
    })
}

/// A map deserialised in file order (keys as text).
#[derive(Debug)]
struct OrderedMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Scalar>()? {
                    out.push((k.0, map.next_value()?));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

type NotAccepted = de::IgnoredAny;

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        by_shape::<_, _, NotAccepted, NotAccepted>(d, "a single value (text or a number)", Some(Scalar), None, None)
    }
}

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        by_shape::<_, _, Vec<String>, NotAccepted>(
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
        by_shape::<_, _, NotAccepted, GpuMap>(
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
        by_shape::<_, _, NotAccepted, ArtifactMap>(
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
        by_shape::<_, _, Vec<Spanned<String>>, OrderedMap<Spanned<Scalar>>>(
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
        by_shape::<_, _, Vec<Spanned<String>>, OrderedMap<Spanned<VolumeBind>>>(
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
        by_shape::<_, _, Vec<Spanned<String>>, OrderedMap<Spanned<Scalar>>>(
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
        by_shape::<_, _, NotAccepted, UlimitMap>(
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
        by_shape::<_, _, Vec<String>, OrderedMap<Scalar>>(
            d,
            "a map of labels or a list of KEY=VALUE",
            None,
            Some(Labels::List),
            Some(|m| Labels::Map(m.0)),
        )
    }
}

impl<'de> Deserialize<'de> for BlkioEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        by_shape::<_, _, NotAccepted, BlkioMap>(
            d,
            "PATH:VALUE or a map with Path and Rate (or Weight)",
            Some(BlkioEntry::Text),
            None,
            Some(BlkioEntry::Map),
        )
    }
}

impl<'de> Deserialize<'de> for ExtraHosts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        by_shape::<_, _, Vec<String>, OrderedMap<Scalar>>(
            d,
            "a map of host names to addresses or a list of HOST:IP",
            None,
            Some(ExtraHosts::List),
            Some(|m| ExtraHosts::Map(m.0)),
        )
    }
}

impl<'de> Deserialize<'de> for KeyValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        by_shape::<_, _, Vec<String>, OrderedMap<Scalar>>(
            d,
            "a map of names to values or a list of NAME=VALUE",
            None,
            Some(KeyValues::List),
            Some(|m| KeyValues::Map(m.0)),
        )
    }
}

impl<'de> Deserialize<'de> for MountEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        by_shape::<_, _, NotAccepted, MountMap>(
            d,
            "type=bind,source=…,target=… or a map with type, source, target and read_only",
            Some(MountEntry::Text),
            None,
            Some(MountEntry::Map),
        )
    }
}

impl<'de> Deserialize<'de> for RestartEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        by_shape::<_, _, NotAccepted, RestartMap>(
            d,
            "no, on-failure:N or a map with Name and MaximumRetryCount",
            Some(RestartEntry::Text),
            None,
            Some(RestartEntry::Map),
        )
    }
}
