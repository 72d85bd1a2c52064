//! Names of enumerations written once: [`named_enum!`] gives an enum its
//! `ALL`, `NAMES`, `as_str` and `parse` from one table, so JSON, SQL and the
//! CLI's choices cannot drift apart.

/// `named_enum!(Type { Variant => "name", ... })`: one table of a public
/// enum's variants and their names.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// Every value's name, in the order of `ALL` (the CLI's choices).
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The name used in JSON, SQL and the CLI.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// Reads a name; `None` for anything else.
            pub fn parse(text: &str) -> Option<$ty> {
                match text {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

pub(crate) use named_enum;
