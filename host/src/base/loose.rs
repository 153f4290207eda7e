//! Tolerant typed readers for answers whose shape the gateway does not control.
//!
//! Reading an upstream answer into a `serde_json::Value` tree allocates every string, number
//! and object of it, which costs more than the rest of a shadow pair's work. These wrappers
//! let a derived struct read only the members it names (the rest is skipped, not copied)
//! while staying as forgiving as indexing a `Value`: a member of another type than expected
//! reads as absent instead of failing the whole answer.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Visitor methods that read a scalar as `$none`.
macro_rules! scalars_are {
    ($none:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// Visitor methods that read past a compound value and give `$none`.
macro_rules! compounds_are {
    ($none:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($none)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
}

pub(crate) use scalars_are;

/// Visitor methods that read a string as `$none`.
macro_rules! strings_are {
    ($none:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// A string member, borrowed from the input where it has no escapes; anything else is `None`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LooseStr<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LooseStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(LooseStr(Some(Cow::Owned(s))))
            }
            scalars_are!(LooseStr(None));
            compounds_are!(LooseStr(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl LooseStr<'_> {
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A non-negative integer member (as `Value::as_u64` reads it); anything else is `None`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LooseU64(pub Option<u64>);

impl<'de> Deserialize<'de> for LooseU64 {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseU64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(LooseU64(Some(n)))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(LooseU64(u64::try_from(n).ok()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LooseU64(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LooseU64(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LooseU64(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LooseU64(None))
            }
            strings_are!(LooseU64(None));
            compounds_are!(LooseU64(None));
        }
        d.deserialize_any(V)
    }
}

/// An object member read as `T` (a struct of loose members); anything else is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Loose<T>(pub Option<T>);

impl<T> Default for Loose<T> {
    fn default() -> Self {
        Loose(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loose<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Loose<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Loose(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose(None))
            }
            scalars_are!(Loose(None));
            strings_are!(Loose(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An array member whose elements are read as `T`; anything else is `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct LooseSeq<T>(pub Option<Vec<T>>);

impl<T> Default for LooseSeq<T> {
    fn default() -> Self {
        LooseSeq(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LooseSeq<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LooseSeq<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(t) = seq.next_element::<T>()? {
                    out.push(t);
                }
                Ok(LooseSeq(Some(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LooseSeq(None))
            }
            scalars_are!(LooseSeq(None));
            strings_are!(LooseSeq(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

impl<T> LooseSeq<T> {
    /// The elements, none when the member was absent or not an array.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.as_deref().unwrap_or_default().iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        s: LooseStr<'a>,
        #[serde(default)]
        n: LooseU64,
        #[serde(borrow, default)]
        o: Loose<Inner<'a>>,
        #[serde(borrow, default)]
        a: LooseSeq<Loose<Inner<'a>>>,
    }

    #[derive(Debug, Default, Deserialize)]
    struct Inner<'a> {
        #[serde(borrow, default)]
        s: LooseStr<'a>,
    }

    fn read(json: &str) -> Probe<'_> {
        serde_json::from_str(json).expect(json)
    }

    #[test]
    fn members_of_another_type_read_as_absent_like_value_indexing() {
        for odd in [
            r#"{"s":1,"n":"x","o":[1,{"s":"y"}],"a":{"s":"z"},"extra":[{"deep":[1,2]}]}"#,
            r#"{"s":null,"n":-3,"o":null,"a":null}"#,
            r#"{"s":{"k":"v"},"n":1.5,"o":"text","a":"text"}"#,
        ] {
            let p = read(odd);
            assert_eq!(p.s.0, None, "{odd}");
            assert_eq!(p.n.0, None, "{odd}");
            assert!(p.o.0.is_none(), "{odd}");
            assert!(p.a.0.is_none(), "{odd}");
        }
        let p = read(r#"{"s":"plain","n":7,"o":{"s":"esc\"aped"},"a":[{"s":"one"},2,{"t":1}]}"#);
        assert!(matches!(p.s.0, Some(Cow::Borrowed("plain"))));
        assert_eq!(p.n.0, Some(7));
        assert_eq!(p.o.0.unwrap().s.as_deref(), Some("esc\"aped"));
        let a = p.a.0.unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].0.as_ref().unwrap().s.as_deref(), Some("one"));
        assert!(a[1].0.is_none());
        assert_eq!(a[2].0.as_ref().unwrap().s.0, None);
    }

    #[test]
    fn broken_json_is_still_an_error() {
        assert!(serde_json::from_str::<Probe<'_>>(r#"{"s":"open"#).is_err());
        assert!(serde_json::from_str::<Probe<'_>>(r#"{"o":{"s":1,}}"#).is_err());
    }
}
