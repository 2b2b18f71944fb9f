//! Closed sets of named settings (a protocol, a preset, SMCP's guidance, ...): each variant
//! declared once with its name and a one-line description, so that the command lines
//! (`fss-cli`), configs and reports parse and print them the same way without the libraries
//! knowing about any argument parser.

/// A setting with a fixed set of named values.
pub trait Choice: Copy + PartialEq + Send + Sync + 'static {
    /// Every value with its name and a one-line description ("" when the name says it all),
    /// in the order help texts list them.
    const VARIANTS: &'static [(Self, &'static str, &'static str)];

    /// The value's name (as command lines and reports spell it).
    fn name(self) -> &'static str {
        Self::VARIANTS
            .iter()
            .find(|(v, _, _)| *v == self)
            .map_or("?", |(_, name, _)| name)
    }

    /// The value called `name`, if any.
    fn from_name(name: &str) -> Option<Self> {
        Self::VARIANTS
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(v, _, _)| *v)
    }

    /// The names, comma-separated (for error messages).
    fn names() -> String {
        Self::VARIANTS
            .iter()
            .map(|(_, n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Implements [`Choice`] for an enum: `choices!(Enum { Variant => "name", "help"; ... })`. The
/// list must name every variant (a missing one is a compile error), so a new variant cannot be
/// left without a name.
#[macro_export]
macro_rules! choices {
    ($ty:ident { $($variant:ident => $name:literal, $help:literal;)+ }) => {
        impl $crate::choice::Choice for $ty {
            const VARIANTS: &'static [(Self, &'static str, &'static str)] =
                &[$(($ty::$variant, $name, $help)),+];
        }
        const _: () = {
            #[allow(dead_code)]
            fn every_variant_is_named(v: $ty) {
                match v {
                    $($ty::$variant => {})+
                }
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Shade {
        Light,
        Dark,
    }

    choices!(Shade {
        Light => "light", "";
        Dark => "dark", "Low key.";
    });

    #[test]
    fn names_round_trip_and_unknown_names_are_none() {
        for &(v, name, _) in Shade::VARIANTS {
            assert_eq!(v.name(), name);
            assert_eq!(Shade::from_name(name), Some(v));
        }
        assert_eq!(Shade::from_name("Dark"), None);
        assert_eq!(Shade::names(), "light, dark");
    }
}
