//! `${var.NAME}` filled in while a workflow file is parsed: a serde `Deserializer` around the YAML one that passes
//! every string value, and every key of a data map (a docker-py volume's host path, an environment variable's
//! name), through [`vars::substitute`] before the schema's types see it. So variables work in every key of the
//! schema, present and future, are filled in before any validation, and errors keep the YAML parser's
//! `line:col`; and since only parsed scalars are touched, a value holding a newline or `: ` cannot add keys.
//! Struct field names (the schema's keys) are never substituted.
//!
//! It also knows which key of a workflow entry a string is under, which decides what reads the string next
//! ([`Stage`]): `${deps.NAME.stdout}`, a container's output, is allowed only where it cannot reach the host.
//!
//! serde has no hook for "every string"; crates that wrap a deserializer (serde_ignored, serde_path_to_error) do
//! other jobs, so the forwarding is written here.

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::vars::{substitute, Stage, SubstError, Variables};

/// The keys of a workflow entry whose strings may use a dependency's output, and so are read later by
/// [`super::outputs`] (commands) or [`super::interpolate`] (environment).
pub const OUTPUT_KEYS: &[&str] = &["commands", "command", "before_run", "environment"];

/// Parses `text` as `T`, with `vars` filled in.
pub fn from_str<'de, T: serde::Deserialize<'de>>(text: &'de str, vars: &Variables) -> Result<T, serde_saphyr::Error> {
    let ctx = Ctx {
        vars,
        keys: RefCell::new(Vec::new()),
    };
    serde_saphyr::with_deserializer_from_str(text, |de| {
        T::deserialize(Sub {
            de,
            ctx: &ctx,
            pos: Pos::Value,
        })
    })
}

/// What every wrapper shares: the variables, and where in the file the parse is.
struct Ctx<'v> {
    vars: &'v Variables,
    /// The key being read at each level of map nesting (`None` before the first one): `["workflows",
    /// "environment", …]` under an entry's environment.
    keys: RefCell<Vec<Option<String>>>,
}

impl Ctx<'_> {
    /// The key of the workflow entry the parse is in, if any.
    fn entry_key(&self) -> Option<String> {
        let keys = self.keys.borrow();
        match keys.as_slice() {
            [Some(top), Some(key), ..] if top == "workflows" => Some(key.clone()),
            _ => None,
        }
    }

    fn record_key(&self, key: &str) {
        if let Some(top) = self.keys.borrow_mut().last_mut() {
            *top = Some(key.to_string());
        }
    }

    /// `s` substituted for its place; `None` when nothing changed.
    fn fill<E: de::Error>(&self, s: &str, pos: Pos) -> Result<Option<String>, E> {
        if !s.contains('$') {
            return Ok(None);
        }
        let entry_key = self.entry_key();
        let stage = match (pos, entry_key.as_deref()) {
            (Pos::Value, Some("environment")) => Stage::Environment,
            (Pos::Value, Some(k)) if OUTPUT_KEYS.contains(&k) => Stage::Command,
            _ => Stage::Final,
        };
        match substitute(s, stage, self.vars) {
            Ok(out) if out == s => Ok(None),
            Ok(out) => Ok(Some(out)),
            Err(SubstError::Output(reference)) => {
                let place = match (pos, entry_key) {
                    (Pos::Key, Some(k)) if k == "environment" => "an environment variable's name".to_string(),
                    (_, Some(k)) => format!("`{k}`"),
                    (_, None) => "this key".to_string(),
                };
                Err(E::custom(format!(
                    "`{reference}` is a dependency's output, which comes from a container: it can be used in the \
                     values of {} only, not in {place}",
                    OUTPUT_KEYS
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Err(e) => Err(E::custom(e)),
        }
    }
}

/// Where a string is: a value, a data map's key (substituted), or a struct's field name (left alone).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pos {
    Value,
    Key,
    Ident,
}

/// The wrapped deserializer.
struct Sub<'c, 'v, D> {
    de: D,
    ctx: &'c Ctx<'v>,
    pos: Pos,
}

/// The wrapped visitor.
struct Wrap<'c, 'v, V> {
    v: V,
    ctx: &'c Ctx<'v>,
    pos: Pos,
}

impl<'c, 'v, D> Sub<'c, 'v, D> {
    fn wrap<V>(&self, v: V, pos: Pos) -> Wrap<'c, 'v, V> {
        Wrap { v, ctx: self.ctx, pos }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident $(($($arg:ident: $ty:ty),*))?;)*) => {
        $(fn $method<V: Visitor<'de>>(self, $($($arg: $ty,)*)? visitor: V) -> Result<V::Value, D::Error> {
            let wrapped = self.wrap(visitor, self.pos);
            self.de.$method($($($arg,)*)? wrapped)
        })*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Sub<'_, '_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any; deserialize_bool; deserialize_i8; deserialize_i16; deserialize_i32; deserialize_i64;
        deserialize_i128; deserialize_u8; deserialize_u16; deserialize_u32; deserialize_u64; deserialize_u128;
        deserialize_f32; deserialize_f64; deserialize_char; deserialize_str; deserialize_string;
        deserialize_bytes; deserialize_byte_buf; deserialize_option; deserialize_unit;
        deserialize_unit_struct(name: &'static str); deserialize_newtype_struct(name: &'static str);
        deserialize_seq; deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map; deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]); deserialize_ignored_any;
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let wrapped = self.wrap(visitor, Pos::Ident);
        self.de.deserialize_identifier(wrapped)
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {
        $(fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.v.$method(v)
        })*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, '_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.v.expecting(f)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64); visit_i128(i128);
        visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64); visit_u128(u128); visit_f32(f32);
        visit_f64(f64); visit_char(char); visit_bytes(&[u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.v.visit_borrowed_bytes(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        if self.pos != Pos::Value {
            self.ctx.record_key(v);
        }
        if self.pos == Pos::Ident {
            return self.v.visit_str(v);
        }
        match self.ctx.fill(v, self.pos)? {
            Some(s) => self.v.visit_string(s),
            None => self.v.visit_str(v),
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        if self.pos != Pos::Value {
            self.ctx.record_key(v);
        }
        if self.pos == Pos::Ident {
            return self.v.visit_borrowed_str(v);
        }
        match self.ctx.fill(v, self.pos)? {
            Some(s) => self.v.visit_string(s),
            None => self.v.visit_borrowed_str(v),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        if self.pos != Pos::Value {
            self.ctx.record_key(&v);
        }
        if self.pos == Pos::Ident {
            return self.v.visit_string(v);
        }
        match self.ctx.fill(&v, self.pos)? {
            Some(s) => self.v.visit_string(s),
            None => self.v.visit_string(v),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.v.visit_some(Sub {
            de,
            ctx: self.ctx,
            pos: self.pos,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.v.visit_newtype_struct(Sub {
            de,
            ctx: self.ctx,
            pos: self.pos,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.v.visit_seq(Seq { a: seq, ctx: self.ctx })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.ctx.keys.borrow_mut().push(None);
        let result = self.v.visit_map(Map { a: map, ctx: self.ctx });
        self.ctx.keys.borrow_mut().pop();
        result
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.v.visit_enum(Enum { a: data, ctx: self.ctx })
    }
}

/// A seed whose deserializer is wrapped.
struct Seed<'c, 'v, S> {
    seed: S,
    ctx: &'c Ctx<'v>,
    pos: Pos,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, '_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Sub {
            de,
            ctx: self.ctx,
            pos: self.pos,
        })
    }
}

struct Seq<'c, 'v, A> {
    a: A,
    ctx: &'c Ctx<'v>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, '_, A> {
    type Error = A::Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.a.next_element_seed(Seed {
            seed,
            ctx: self.ctx,
            pos: Pos::Value,
        })
    }
    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

struct Map<'c, 'v, A> {
    a: A,
    ctx: &'c Ctx<'v>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, '_, A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        if let Some(top) = self.ctx.keys.borrow_mut().last_mut() {
            *top = None;
        }
        self.a.next_key_seed(Seed {
            seed,
            ctx: self.ctx,
            pos: Pos::Key,
        })
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.a.next_value_seed(Seed {
            seed,
            ctx: self.ctx,
            pos: Pos::Value,
        })
    }
    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

struct Enum<'c, 'v, A> {
    a: A,
    ctx: &'c Ctx<'v>,
}

impl<'c, 'v, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'c, 'v, A> {
    type Error = A::Error;
    type Variant = Variant<'c, 'v, A::Variant>;
    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let ctx = self.ctx;
        let (value, variant) = self.a.variant_seed(Seed {
            seed,
            ctx,
            pos: Pos::Ident,
        })?;
        Ok((value, Variant { a: variant, ctx }))
    }
}

struct Variant<'c, 'v, A> {
    a: A,
    ctx: &'c Ctx<'v>,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, '_, A> {
    type Error = A::Error;
    fn unit_variant(self) -> Result<(), A::Error> {
        self.a.unit_variant()
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.a.newtype_variant_seed(Seed {
            seed,
            ctx: self.ctx,
            pos: Pos::Value,
        })
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.a.tuple_variant(
            len,
            Wrap {
                v: visitor,
                ctx: self.ctx,
                pos: Pos::Value,
            },
        )
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.a.struct_variant(
            fields,
            Wrap {
                v: visitor,
                ctx: self.ctx,
                pos: Pos::Value,
            },
        )
    }
}
